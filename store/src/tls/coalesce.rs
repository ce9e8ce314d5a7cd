//! Write coalescing for HTTP/2 connections: a transparent wrapper around a connection's stream
//! that lets every frame queued "at the same moment" leave in one write.
//!
//! Why: the HTTP/2 connection task (h2, under hyper and tonic) writes and flushes whatever frames
//! are queued each time it runs. Concurrent requests finish in bursts (one Raft apply answers a
//! run of puts at once), but each finished request wakes the connection task, which tokio runs
//! right after the waker (its LIFO slot), so each response left in a `writev` of its own: 34,551
//! writes for 40,000 puts with 100 clients on 10 connections. Even one response took two writes:
//! h2 keeps a DATA payload of 256 bytes or more aside (to write it without a copy) and must flush
//! it before it can encode the next frame, so a gRPC response's trailers always left in a write,
//! and reached the client as a wake-up, of their own. Each loopback write costs a system call and
//! the receiver's wake-up and read.
//!
//! What it does: writes are copied into a buffer of this wrapper and reach the stream at a flush.
//! The first flush of a write cycle (the writes up to the next completed flush) returns `Pending`
//! after handing the task's waker to tokio's deferred list, so tokio runs it again once the
//! worker has run the tasks already waiting (or at its periodic maintenance, every few dozen
//! tasks); frames the codec encodes meanwhile (the trailers behind a response's payload, the
//! responses other tasks finish) join the same write.
//!
//! Invariants: a write cycle yields at most once, and always arranges its own wake-up before
//! returning `Pending`, so no write waits for anything but the tasks that were already runnable; every byte
//! accepted is written before the next flush (or shutdown) reports completion, in the order
//! accepted; the buffer holds at most `MAX_BUFFERED` bytes (a write finding it full first writes
//! it out), and a buffer grown past `KEPT_CAPACITY` is released once empty, so an idle connection
//! holds little; reads pass straight through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held before a write must go out (h2's own buffer plus one frame is well under it).
const MAX_BUFFERED: usize = 256 * 1024;
/// Capacity an empty buffer may keep; a larger one (after a large response) is released.
const KEPT_CAPACITY: usize = 64 * 1024;

/// A stream whose writes are gathered until a flush, which yields once per write cycle (see the
/// module documentation).
#[derive(Debug)]
pub struct CoalescedWrites<S> {
    io: S,
    /// Accepted bytes; `buffer[written..]` are not yet on the stream.
    buffer: Vec<u8>,
    /// How much of `buffer` the stream has taken.
    written: usize,
    /// Whether this write cycle has already yielded; reset when a flush completes.
    yielded_this_cycle: bool,
}

impl<S> CoalescedWrites<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        Self { io, buffer: Vec::new(), written: 0, yielded_this_cycle: false }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Room left in the buffer.
    fn room(&self) -> usize {
        MAX_BUFFERED.saturating_sub(self.buffer.len())
    }
}

impl<S: AsyncWrite + Unpin> CoalescedWrites<S> {
    /// Writes the whole buffer to the stream, then empties it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buffer[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        if self.buffer.capacity() > KEPT_CAPACITY {
            self.buffer = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for at least one byte, writing the buffer out when it is full.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.room() == 0 {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Wakes the task once the worker has run the tasks already runnable: tokio's `yield_now` hands
/// the waker to the scheduler's deferred list (or wakes it at once outside a runtime). Waking the
/// task directly would queue it as a yield, and on the multi-threaded runtime a yield also wakes an
/// idle worker to steal it: a futex wake-up and a cross-CPU hand-off of the connection per response.
fn wake_after_runnable_tasks(cx: &mut Context<'_>) {
    let yield_now = std::pin::pin!(tokio::task::yield_now());
    // The first poll defers the waker and is always pending; dropping the future keeps the wake-up.
    let _pending = yield_now.poll(cx);
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        let n = buf.len().min(self.room());
        self.buffer.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx))?;
        let mut taken = 0;
        for slice in bufs {
            let n = slice.len().min(self.room());
            self.buffer.extend_from_slice(&slice[..n]);
            taken += n;
            if n < slice.len() {
                break;
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        // Gathering slices is a copy into the buffer either way; accepting them all in one call
        // saves the codec a call per slice.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written < self.buffer.len() && !self.yielded_this_cycle {
            self.yielded_this_cycle = true;
            wake_after_runnable_tasks(cx);
            return Poll::Pending;
        }
        ready!(self.poll_write_out(cx))?;
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.yielded_this_cycle = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use tokio::io::AsyncWriteExt;

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_flush_of_a_cycle_yields_once_and_wakes_its_task() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = counter.clone().into();
        let mut cx = Context::from_waker(&waker);
        let mut io = CoalescedWrites::new(Vec::<u8>::new());

        assert!(matches!(Pin::new(&mut io).poll_write(&mut cx, b"one"), Poll::Ready(Ok(3))));
        assert!(io.get_ref().is_empty(), "a write is held until a flush");
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "a yielding flush must wake its task");
        assert!(io.get_ref().is_empty(), "nothing is written by the yielding flush");

        assert!(matches!(Pin::new(&mut io).poll_write(&mut cx, b"two"), Poll::Ready(Ok(3))));
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(io.get_ref().as_slice(), b"onetwo", "what was queued meanwhile leaves in the same write");

        // A new cycle after the flush yields again, exactly once; a flush with nothing held does not.
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert!(matches!(Pin::new(&mut io).poll_write(&mut cx, b"three"), Poll::Ready(Ok(5))));
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(io.get_ref().as_slice(), b"onetwothree");
    }

    #[test]
    fn the_buffer_never_holds_more_than_its_bound() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = counter.into();
        let mut cx = Context::from_waker(&waker);
        let mut io = CoalescedWrites::new(Vec::<u8>::new());
        let big = vec![7u8; MAX_BUFFERED + 100];

        let Poll::Ready(Ok(first)) = Pin::new(&mut io).poll_write(&mut cx, &big) else {
            panic!("a write into room is accepted")
        };
        assert_eq!(first, MAX_BUFFERED, "a write takes only the room left");
        assert!(io.get_ref().is_empty());
        let Poll::Ready(Ok(second)) = Pin::new(&mut io).poll_write(&mut cx, &big[first..]) else {
            panic!("a full buffer is written out to make room")
        };
        assert_eq!(second, 100);
        assert_eq!(io.get_ref().len(), MAX_BUFFERED, "the full buffer went out before the rest was taken");
        assert!(matches!(Pin::new(&mut io).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(io.get_ref().as_slice(), big.as_slice(), "shutdown writes out what is held");
    }

    #[tokio::test]
    async fn writes_through_the_wrapper_arrive_whole_and_in_order() -> io::Result<()> {
        // A pipe far smaller than the writes, so the stream takes them in pieces.
        let (near, mut far) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far, &mut received).await.map(|_| received)
        });
        let mut io = CoalescedWrites::new(near);
        let mut sent = Vec::new();
        for round in 0..20u8 {
            let chunk = vec![round; 100 + usize::from(round) * 37];
            io.write_all(&chunk).await?;
            io.write_all(b"|").await?;
            sent.extend_from_slice(&chunk);
            sent.push(b'|');
            if round % 3 == 0 {
                io.flush().await?;
            }
        }
        io.shutdown().await?;
        drop(io);
        let received = reader.await.map_err(io::Error::other)??;
        assert_eq!(received, sent);
        Ok(())
    }
}
