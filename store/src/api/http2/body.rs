//! A stream's request body and the wake-ups between a connection and the handlers it serves:
//! [`Ready`] (the streams the connection task must look at), [`StreamWaker`] (one stream's waker)
//! and [`RequestBody`] (what a handler reads, fed by the connection).
//!
//! Invariants: an id is queued at most once per list until the connection takes it (so the lists
//! are bounded by the number of streams); a waker never wakes the connection task while it is
//! polling (it only queues, and the task looks again before it returns); read bytes are counted
//! in `Ready::unreported` under the body's lock, so the total never goes below what is taken.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures::task::AtomicWaker;
use http_body::Frame;

use super::CREDIT_WAKE_BYTES;

/// Streams the connection task must look at, filled by wakers that may run on any thread.
#[derive(Default)]
pub(super) struct Ready {
    /// Streams whose call or response body was woken. Each id is queued at most once until taken
    /// (`StreamWaker::queued`), so the list is bounded by the number of streams.
    pub(super) polls: Mutex<Vec<u32>>,
    /// Streams whose handler read request bytes since the connection last credited them; each id
    /// at most once until taken (`BodyState::read_queued`).
    pub(super) reads: Mutex<Vec<u32>>,
    /// Bytes read by handlers across the connection's streams and not yet taken for credit. A read
    /// wakes the connection only when this reaches `CREDIT_WAKE_BYTES`: otherwise the next round
    /// (any frame or response wakes one) takes it, which saves a cross-thread wake-up per
    /// message on streaming calls. The bound keeps what waits far below the connection window, so
    /// a client never stalls on credit nobody reported.
    pub(super) unreported: AtomicUsize,
    /// The connection task.
    pub(super) task: AtomicWaker,
    /// Whether the connection task is inside its poll, where it takes both lists again before it
    /// returns; a waker then only queues the stream. Waking the running task would make tokio
    /// queue it again as a yield, and wake an idle worker to steal it.
    pub(super) polling: AtomicBool,
}

impl Ready {
    /// Wakes the connection task unless it is polling (see `polling`).
    pub(super) fn notify(&self) {
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }

    /// Whether either list has anything.
    pub(super) fn has_work(&self) -> bool {
        !self.polls.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
            || !self.reads.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    pub(super) fn take_polls(&self) -> Vec<u32> {
        std::mem::take(&mut *self.polls.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub(super) fn take_reads(&self) -> Vec<u32> {
        std::mem::take(&mut *self.reads.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The waker of one stream's call and response body.
pub(super) struct StreamWaker {
    pub(super) id: u32,
    /// Whether `id` is in `ready.polls`; cleared by the connection before it polls the stream.
    pub(super) queued: AtomicBool,
    pub(super) ready: Arc<Ready>,
}

impl StreamWaker {
    /// The waker state of stream `id`, not yet queued.
    pub(super) fn new(id: u32, ready: &Arc<Ready>) -> Arc<Self> {
        Arc::new(Self { id, queued: AtomicBool::new(false), ready: ready.clone() })
    }
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.polls.lock().unwrap_or_else(PoisonError::into_inner).push(self.id);
        }
        self.ready.notify();
    }
}

/// How a request body ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyEnd {
    /// More DATA may come.
    Open,
    /// The client sent END_STREAM.
    Complete,
    /// The stream was reset; the handler sees an error.
    Reset,
}

/// A request body shared between the connection (which appends) and the handler (which reads).
pub(super) struct BodyShared {
    pub(super) id: u32,
    pub(super) ready: Arc<Ready>,
    pub(super) state: Mutex<BodyState>,
}

pub(super) struct BodyState {
    /// DATA payloads received and not yet read.
    pub(super) chunks: VecDeque<Bytes>,
    pub(super) end: BodyEnd,
    /// The reader waiting for more.
    pub(super) waker: Option<Waker>,
    /// Bytes read and not yet credited back to the client.
    pub(super) read_uncredited: usize,
    /// Whether the stream is in `Ready::reads`.
    pub(super) read_queued: bool,
}

impl BodyShared {
    /// The body of stream `id`; complete from the start when the request's headers ended it.
    pub(super) fn new(id: u32, ready: &Arc<Ready>, end_stream: bool) -> Arc<Self> {
        Arc::new(Self {
            id,
            ready: ready.clone(),
            state: Mutex::new(BodyState {
                chunks: VecDeque::new(),
                end: if end_stream { BodyEnd::Complete } else { BodyEnd::Open },
                waker: None,
                read_uncredited: 0,
                read_queued: false,
            }),
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a DATA payload (`end`: the client finished its request).
    pub(super) fn push(&self, chunk: Bytes, end: bool) {
        let waker = {
            let mut state = self.lock();
            if !chunk.is_empty() {
                state.chunks.push_back(chunk);
            }
            if end {
                state.end = BodyEnd::Complete;
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Ends the body with an error (the stream was reset) and returns the bytes the client sent
    /// that were never credited back: unread chunks and reads not yet reported.
    pub(super) fn reset(&self) -> usize {
        let (unread, waker) = {
            let mut state = self.lock();
            let read = std::mem::take(&mut state.read_uncredited);
            self.ready.unreported.fetch_sub(read, Ordering::SeqCst);
            let unread = state.chunks.drain(..).map(|chunk| chunk.len()).sum::<usize>() + read;
            if state.end == BodyEnd::Open {
                state.end = BodyEnd::Reset;
            }
            (unread, state.waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        unread
    }

    /// Bytes read since the last call, to credit back.
    pub(super) fn take_read(&self) -> usize {
        let mut state = self.lock();
        state.read_queued = false;
        let read = std::mem::take(&mut state.read_uncredited);
        self.ready.unreported.fetch_sub(read, Ordering::SeqCst);
        read
    }
}

/// A request body as the service reads it.
pub(super) struct RequestBody {
    pub(super) shared: Arc<BodyShared>,
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the client reset the stream")]
pub(super) struct StreamReset;

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if let Some(chunk) = state.chunks.pop_front() {
            state.read_uncredited += chunk.len();
            // Counted under the body's lock, which `take_read` and `reset` hold when they
            // subtract, so the total never goes below what they take.
            let before = shared.ready.unreported.fetch_add(chunk.len(), Ordering::SeqCst);
            let queue = !std::mem::replace(&mut state.read_queued, true);
            drop(state);
            if queue {
                shared.ready.reads.lock().unwrap_or_else(PoisonError::into_inner).push(shared.id);
            }
            if before + chunk.len() >= CREDIT_WAKE_BYTES {
                shared.ready.notify();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match state.end {
            BodyEnd::Complete => Poll::Ready(None),
            BodyEnd::Reset => Poll::Ready(Some(Err(StreamReset))),
            BodyEnd::Open => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.chunks.is_empty() && state.end == BodyEnd::Complete
    }
}
