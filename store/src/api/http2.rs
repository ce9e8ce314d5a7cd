//! The client API's HTTP/2 server: gRPC calls over HTTP/2 (RFC 9113), one task per connection.
//!
//! Why our own: under hyper and h2 a call crossed three tasks (the connection's, one spawned per
//! stream, and the connection's again for flow-control capacity and the write), with the stream
//! table behind a mutex shared by them. A single-client read cost the member two hand-overs
//! between tasks, usually between its two worker threads, and HTTP/2 was the largest share of a
//! member's CPU under 100 concurrent puts. Here one task owns a connection: it reads frames, calls
//! the gRPC service, polls every call's future and response body itself (each stream has a waker of
//! its own, so a wake-up costs the streams that are ready, not all of them), and sends everything a
//! round produced in one write.
//!
//! What it serves: the generated tonic services ([`Services`]), chosen by the service name in
//! `:path`, with the client's [`PeerIdentity`] in each request's extensions. An `:authority` that is
//! a URL (etcdctl 3.4 sends `http://host:port`) is accepted as its `host:port`. Deliberately
//! absent: server push, HTTP/1.1 (a connection that does not open with the HTTP/2 preface is
//! closed), stream priorities (ignored, as RFC 9113 allows), and `grpc-timeout` enforcement (a
//! client whose deadline passes resets the stream, which cancels the call; handlers have the
//! member's own request timeout).
//!
//! Invariants:
//! - Flow control both ways. A call's request bytes are credited back to the client (stream and
//!   connection windows) only as its handler reads them, so what one connection buffers is bounded
//!   by the connection window granted (`CONNECTION_WINDOW`). Response DATA never exceeds the
//!   client's stream and connection windows, and a response body is polled only when nothing of it
//!   is held back, so at most one message per stream waits for window.
//! - The write buffer is bounded: past `WRITE_HIGH_WATER` the task stops reading frames and polling
//!   response bodies until the socket has taken it.
//! - Every header block is decoded in order (a refused or closed stream's too), so the HPACK dynamic
//!   table stays in step with the client's encoder; responses never use the dynamic table.
//! - A stream ends exactly once: END_STREAM sent (plus RST_STREAM(NO_ERROR) when the client had not
//!   finished its request), RST_STREAM received, or RST_STREAM sent. Its call future and response
//!   body are dropped then, which cancels the call, and its unread request bytes are credited back
//!   to the connection.
//! - Shutdown sends GOAWAY naming the last stream accepted, refuses newer streams, lets open calls
//!   finish for at most `SHUTDOWN_GRACE`, then closes.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::task::AtomicWaker;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::body::Body as GrpcBody;
use tower::Service as _;

use super::hpack::{self, Decoder};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const INTERNAL_ERROR: u32 = 0x2;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// Largest frame payload accepted: HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which we keep.
const MAX_FRAME: usize = 16_384;
/// HPACK dynamic table size for the client's blocks: the default, which we keep.
const HEADER_TABLE_SIZE: usize = 4096;
/// Largest request header block (all fragments), advertised as SETTINGS_MAX_HEADER_LIST_SIZE.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Streams open at once per connection. etcd's clients multiplex every call and watch of a
/// process over one connection, so the bound is generous; memory is bounded by flow control.
const MAX_STREAMS: u32 = 65_536;
/// Request bytes a stream may have unread (its receive window): one large put fits.
const STREAM_WINDOW: u32 = 1 << 21;
/// Request bytes a connection may have unread across its streams.
const CONNECTION_WINDOW: u32 = 8 << 20;
/// Read request bytes not yet credited back that make a handler's read wake the connection.
const CREDIT_WAKE_BYTES: usize = 256 * 1024;
/// HTTP/2's initial windows, before SETTINGS and WINDOW_UPDATE change them.
const DEFAULT_WINDOW: i64 = 65_535;
/// Largest window RFC 9113 allows.
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Past this many unsent bytes the connection stops reading and producing until the socket drains.
const WRITE_HIGH_WATER: usize = 1 << 20;
/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 64 * 1024;
/// Rounds (read, poll streams, write) one poll of the connection runs before it yields.
const ROUNDS_PER_POLL: usize = 32;
/// How long open calls may run after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A boxed gRPC service, as the dispatch table holds them.
type GrpcService = tower::util::BoxCloneSyncService<Request<GrpcBody>, Response<GrpcBody>, Infallible>;
/// A call in progress.
type CallFuture = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

/// The gRPC services a connection dispatches to, by service name (`/<name>/<method>`).
#[derive(Clone, Default)]
pub struct Services {
    by_name: HashMap<&'static str, GrpcService>,
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated (or hand-written) tonic service under its name.
    pub fn add<S>(mut self, service: S) -> Self
    where
        S: tower::Service<Request<GrpcBody>, Response = Response<GrpcBody>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.by_name.insert(S::NAME, GrpcService::new(service));
        self
    }

    /// Starts the call `request` names, or answers UNIMPLEMENTED for an unknown service.
    fn call(&self, request: Request<GrpcBody>) -> CallFuture {
        let path = request.uri().path();
        let name = path.strip_prefix('/').and_then(|rest| rest.split_once('/')).map(|(name, _)| name);
        match name.and_then(|name| self.by_name.get(name)) {
            Some(service) => service.clone().call(request),
            None => {
                let status = tonic::Status::unimplemented(format!("unknown service in {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Why a connection ended other than by the client closing it or the server shutting down.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol; a GOAWAY with this code was sent.
    #[error("HTTP/2 protocol error (code {code:#x}): {reason}")]
    Protocol {
        /// The HTTP/2 error code sent in GOAWAY.
        code: u32,
        /// What the client did.
        reason: &'static str,
    },
    /// The connection did not start with the HTTP/2 preface.
    #[error("not an HTTP/2 connection (no client preface)")]
    NoPreface,
}

/// Serves one client connection until the client closes it, it fails, or `shutdown` resolves and
/// the open calls have finished (or `SHUTDOWN_GRACE` has passed).
pub async fn serve_connection<S>(
    io: S,
    identity: PeerIdentity,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = Connection::new(io, identity, services, Box::pin(shutdown));
    std::future::poll_fn(|cx| connection.poll_run(cx)).await
}

/// Accepts connections on `listeners` and serves each on a task of its own until `shutdown`
/// completes; then every connection says GOAWAY, and this returns when they have all closed (each
/// within `SHUTDOWN_GRACE`). Serves the client API and the peer API.
pub(crate) async fn serve(
    listeners: Vec<crate::tls::Listener>,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use futures::StreamExt;
    let incoming = crate::tls::accept_all(listeners);
    let mut incoming = std::pin::pin!(incoming);
    let mut shutdown = std::pin::pin!(shutdown);
    // Every connection task holds a receiver; the server's end of shutdown is the sender.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = incoming.next() => match accepted {
                Some(Ok(io)) => {
                    let identity = PeerIdentity { remote_addr: io.remote_addr(), certificate: io.client_identity() };
                    let mut stop = stop_rx.clone();
                    let stopped = async move {
                        // An error means the sender is gone, which also means stop.
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    let services = services.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve_connection(io, identity, services, stopped).await {
                            tracing::debug!(error = %e, "client connection ended");
                        }
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "accepting a client connection failed"),
                None => break,
            },
            // Reaps finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    stop_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
}

/// Streams the connection task must look at, filled by wakers that may run on any thread.
#[derive(Default)]
struct Ready {
    /// Streams whose call or response body was woken. Each id is queued at most once until taken
    /// (`StreamWaker::queued`), so the list is bounded by the number of streams.
    polls: Mutex<Vec<u32>>,
    /// Streams whose handler read request bytes since the connection last credited them; each id
    /// at most once until taken (`BodyState::read_queued`).
    reads: Mutex<Vec<u32>>,
    /// Bytes read by handlers across the connection's streams and not yet taken for credit. A read
    /// wakes the connection only when this reaches `CREDIT_WAKE_BYTES`: otherwise the next round
    /// (any frame or response wakes one) takes it, which saves a cross-thread wake-up per
    /// message on streaming calls. The bound keeps what waits far below the connection window, so
    /// a client never stalls on credit nobody reported.
    unreported: AtomicUsize,
    /// The connection task.
    task: AtomicWaker,
    /// Whether the connection task is inside its poll, where it takes both lists again before it
    /// returns; a waker then only queues the stream. Waking the running task would make tokio
    /// queue it again as a yield, and wake an idle worker to steal it.
    polling: AtomicBool,
}

impl Ready {
    /// Wakes the connection task unless it is polling (see `polling`).
    fn notify(&self) {
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }

    /// Whether either list has anything.
    fn has_work(&self) -> bool {
        !self.polls.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
            || !self.reads.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    fn take_polls(&self) -> Vec<u32> {
        std::mem::take(&mut *self.polls.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn take_reads(&self) -> Vec<u32> {
        std::mem::take(&mut *self.reads.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The waker of one stream's call and response body.
struct StreamWaker {
    id: u32,
    /// Whether `id` is in `ready.polls`; cleared by the connection before it polls the stream.
    queued: AtomicBool,
    ready: Arc<Ready>,
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
enum BodyEnd {
    /// More DATA may come.
    Open,
    /// The client sent END_STREAM.
    Complete,
    /// The stream was reset; the handler sees an error.
    Reset,
}

/// A request body shared between the connection (which appends) and the handler (which reads).
struct BodyShared {
    id: u32,
    ready: Arc<Ready>,
    state: Mutex<BodyState>,
}

struct BodyState {
    /// DATA payloads received and not yet read.
    chunks: VecDeque<Bytes>,
    end: BodyEnd,
    /// The reader waiting for more.
    waker: Option<Waker>,
    /// Bytes read and not yet credited back to the client.
    read_uncredited: usize,
    /// Whether the stream is in `Ready::reads`.
    read_queued: bool,
}

impl BodyShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BodyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a DATA payload (`end`: the client finished its request).
    fn push(&self, chunk: Bytes, end: bool) {
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
    fn reset(&self) -> usize {
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
    fn take_read(&self) -> usize {
        let mut state = self.lock();
        state.read_queued = false;
        let read = std::mem::take(&mut state.read_uncredited);
        self.ready.unreported.fetch_sub(read, Ordering::SeqCst);
        read
    }
}

/// A request body as the service reads it.
struct RequestBody {
    shared: Arc<BodyShared>,
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the client reset the stream")]
struct StreamReset;

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

/// Where a stream's response is.
enum Phase {
    /// The handler is running.
    Calling(CallFuture),
    /// Headers sent; the body is being relayed.
    Sending(GrpcBody),
}

/// What ends a response after its held-back data.
enum Ending {
    Trailers(HeaderMap),
    EndStream,
}

struct Stream {
    waker_state: Arc<StreamWaker>,
    waker: Waker,
    /// The request body as the handler reads it.
    body: Arc<BodyShared>,
    /// Whether the client may still send DATA (it has not sent END_STREAM).
    receiving: bool,
    /// Request bytes the client may still send on this stream.
    recv_window: i64,
    /// Request bytes read by the handler and not yet credited back by a WINDOW_UPDATE.
    credit: usize,
    /// Response bytes the client still accepts on this stream.
    send_window: i64,
    phase: Phase,
    /// Response bytes held back for want of window (at most one message).
    held: Bytes,
    /// What follows `held`, once the body has ended.
    ending: Option<Ending>,
}

/// What to do with a stream after polling it.
enum Outcome {
    /// Still running (waiting for its handler, its body, window or the socket).
    Open,
    /// The response is complete (END_STREAM sent).
    Finished,
    /// Reset it with this code.
    Reset(u32),
}

/// A connection-level failure: GOAWAY with `code`, then close.
struct Failure {
    code: u32,
    reason: &'static str,
}

fn failure(code: u32, reason: &'static str) -> Failure {
    Failure { code, reason }
}

/// Why reading stopped.
enum ReadStop {
    /// The connection is not HTTP/2: closed without a word.
    NoPreface,
    /// The client broke the protocol.
    Failed(Failure),
}

impl From<Failure> for ReadStop {
    fn from(failure: Failure) -> Self {
        ReadStop::Failed(failure)
    }
}

struct Connection<S> {
    io: S,
    identity: PeerIdentity,
    services: Services,
    ready: Arc<Ready>,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Set once shutdown began: the remaining time open calls get.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Reads land here (allocated and zeroed once per connection).
    chunk: Box<[u8]>,
    /// Bytes read and not yet parsed (at most one frame plus one read).
    read_buf: BytesMut,
    preface_seen: bool,
    read_closed: bool,
    /// Frames to send; `write_buf[written..]` are not yet on the socket.
    write_buf: Vec<u8>,
    written: usize,
    needs_flush: bool,
    decoder: Decoder,
    /// A header block awaiting CONTINUATION: stream, END_STREAM, fragments so far.
    open_block: Option<(u32, bool, BytesMut)>,
    streams: HashMap<u32, Stream>,
    /// Highest stream id the client opened (accepted or not).
    last_stream_id: u32,
    /// Highest stream id accepted before GOAWAY; newer ones are refused.
    goaway_sent: Option<u32>,
    /// Whether the client sent GOAWAY (no new streams will come).
    goaway_received: bool,
    /// The client's settings.
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// Response bytes the client accepts across streams.
    conn_send_window: i64,
    /// Request bytes the client may still send across streams.
    conn_recv_window: i64,
    /// Request bytes read (or discarded) and not yet credited back at connection level.
    conn_credit: usize,
    /// Streams waiting for the connection send window.
    starved: Vec<u32>,
    /// Streams paused because the write buffer was full.
    paused: Vec<u32>,
    /// Set when the connection must close after writing what is buffered.
    failed: Option<Failure>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(
        io: S,
        identity: PeerIdentity,
        services: Services,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Self {
        let mut connection = Self {
            io,
            identity,
            services,
            ready: Arc::new(Ready::default()),
            shutdown: Some(shutdown),
            grace: None,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            read_buf: BytesMut::new(),
            preface_seen: false,
            read_closed: false,
            write_buf: Vec::new(),
            written: 0,
            needs_flush: false,
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            open_block: None,
            streams: HashMap::new(),
            last_stream_id: 0,
            goaway_sent: None,
            goaway_received: false,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            conn_send_window: DEFAULT_WINDOW,
            conn_recv_window: i64::from(CONNECTION_WINDOW),
            conn_credit: 0,
            starved: Vec::new(),
            paused: Vec::new(),
            failed: None,
        };
        let mut settings = Vec::with_capacity(30);
        for (id, value) in [
            (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK as u32),
        ] {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        connection.frame(SETTINGS, 0, 0, &settings);
        connection.frame(WINDOW_UPDATE, 0, 0, &(CONNECTION_WINDOW - DEFAULT_WINDOW as u32).to_be_bytes());
        connection
    }

    /// Appends one frame to the write buffer.
    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        self.write_buf.extend_from_slice(&len.to_be_bytes()[1..]);
        self.write_buf.push(kind);
        self.write_buf.push(flags);
        self.write_buf.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        self.write_buf.extend_from_slice(payload);
    }

    /// Appends a header block as HEADERS plus CONTINUATION frames of the client's frame size.
    fn header_block(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        let mut pieces = block.chunks(self.peer_max_frame).peekable();
        let first = pieces.next().unwrap_or(&[]);
        let mut flags = if end_stream { END_STREAM } else { 0 };
        if pieces.peek().is_none() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, stream, first);
        while let Some(piece) = pieces.next() {
            let flags = if pieces.peek().is_none() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, stream, piece);
        }
    }

    fn reset_frame(&mut self, stream: u32, code: u32) {
        self.frame(RST_STREAM, 0, stream, &code.to_be_bytes());
    }

    fn goaway_frame(&mut self, code: u32) {
        let mut payload = [0u8; 8];
        payload[..4].copy_from_slice(&self.last_stream_id.to_be_bytes());
        payload[4..].copy_from_slice(&code.to_be_bytes());
        self.frame(GOAWAY, 0, 0, &payload);
    }

    /// The whole connection, one round at a time: read and handle frames, poll ready streams,
    /// write what the round produced. Returns when the connection is over.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        self.ready.task.register(cx.waker());
        self.ready.polling.store(true, Ordering::SeqCst);
        for _ in 0..ROUNDS_PER_POLL {
            let mut progressed = false;
            if self.failed.is_none() {
                self.poll_shutdown_signal(cx);
                if !self.read_closed && self.write_buf.len() < WRITE_HIGH_WATER {
                    match self.poll_read_frames(cx) {
                        Poll::Ready(Ok(())) => progressed = true,
                        Poll::Ready(Err(ReadStop::NoPreface)) => return Poll::Ready(Err(ConnectionError::NoPreface)),
                        Poll::Ready(Err(ReadStop::Failed(failure))) => {
                            self.fail(failure);
                            progressed = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if self.failed.is_none() {
                progressed |= self.poll_streams();
            }
            match self.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => progressed |= wrote,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
            let drained = self.written == self.write_buf.len() && !self.needs_flush;
            if drained {
                if let Some(failure) = &self.failed {
                    return Poll::Ready(Err(ConnectionError::Protocol { code: failure.code, reason: failure.reason }));
                }
                if self.streams.is_empty() && (self.read_closed || self.goaway_sent.is_some() || self.goaway_received) {
                    return Poll::Ready(Ok(()));
                }
                if let Some(grace) = self.grace.as_mut()
                    && grace.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Ok(()));
                }
            }
            if !progressed {
                // A waker that saw `polling` set only queued its stream: look once more after
                // clearing it (a waker after this point wakes the task).
                self.ready.polling.store(false, Ordering::SeqCst);
                if !self.ready.has_work() {
                    return Poll::Pending;
                }
                self.ready.polling.store(true, Ordering::SeqCst);
            }
        }
        self.ready.polling.store(false, Ordering::SeqCst);
        // Still busy after a bounded number of rounds: let the worker's other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Starts a graceful shutdown once the server's signal arrives.
    fn poll_shutdown_signal(&mut self, cx: &mut Context<'_>) {
        let Some(signal) = self.shutdown.as_mut() else { return };
        if signal.as_mut().poll(cx).is_pending() {
            return;
        }
        self.shutdown = None;
        self.goaway_sent = Some(self.last_stream_id);
        self.goaway_frame(NO_ERROR);
        self.grace = Some(Box::pin(tokio::time::sleep(SHUTDOWN_GRACE)));
    }

    /// Ends the connection: every stream is dropped (cancelling its call), GOAWAY goes out, and
    /// `poll_run` returns once the write buffer has drained.
    fn fail(&mut self, failure: Failure) {
        tracing::debug!(code = failure.code, reason = failure.reason, "closing client connection");
        for (_, stream) in self.streams.drain() {
            stream.body.reset();
        }
        self.goaway_frame(failure.code);
        self.read_closed = true;
        self.failed = Some(failure);
    }

    /// Reads what the socket has and handles every complete frame. `Ready(Ok)` when anything was
    /// read (or the client closed), `Pending` when the socket has nothing.
    fn poll_read_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReadStop>> {
        let mut buf = ReadBuf::new(&mut self.chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "client connection read failed");
                self.close_read();
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Ok(())) => {}
        }
        let filled = buf.filled().len();
        if filled == 0 {
            self.close_read();
            return Poll::Ready(Ok(()));
        }
        self.read_buf.extend_from_slice(&self.chunk[..filled]);
        if !self.preface_seen {
            let n = self.read_buf.len().min(PREFACE.len());
            if self.read_buf[..n] != PREFACE[..n] {
                return Poll::Ready(Err(ReadStop::NoPreface));
            }
            if n < PREFACE.len() {
                return Poll::Ready(Ok(()));
            }
            self.read_buf.advance(PREFACE.len());
            self.preface_seen = true;
        }
        while self.read_buf.len() >= FRAME_HEADER && self.failed.is_none() {
            let len = u32::from_be_bytes([0, self.read_buf[0], self.read_buf[1], self.read_buf[2]]) as usize;
            if len > MAX_FRAME {
                return Poll::Ready(Err(failure(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE").into()));
            }
            if self.read_buf.len() < FRAME_HEADER + len {
                break;
            }
            let mut frame = self.read_buf.split_to(FRAME_HEADER + len).freeze();
            let kind = frame[3];
            let flags = frame[4];
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            frame.advance(FRAME_HEADER);
            self.handle_frame(kind, flags, stream, frame)?;
        }
        Poll::Ready(Ok(()))
    }

    /// The client closed its side (or the read failed): no more frames; open calls are cancelled,
    /// since their responses could not be asked for again.
    fn close_read(&mut self) {
        self.read_closed = true;
        for (_, stream) in self.streams.drain() {
            stream.body.reset();
        }
    }

    fn handle_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: Bytes) -> Result<(), Failure> {
        if let Some((open, _, _)) = &self.open_block
            && (kind != CONTINUATION || stream != *open)
        {
            return Err(failure(PROTOCOL_ERROR, "frame inside an unfinished header block"));
        }
        match kind {
            DATA => self.on_data(flags, stream, payload),
            HEADERS => self.on_headers(flags, stream, payload),
            CONTINUATION => self.on_continuation(flags, stream, payload),
            PRIORITY => {
                if stream == 0 || payload.len() != 5 {
                    return Err(failure(PROTOCOL_ERROR, "malformed PRIORITY"));
                }
                Ok(())
            }
            RST_STREAM => self.on_reset(stream, &payload),
            SETTINGS => self.on_settings(flags, stream, &payload),
            PUSH_PROMISE => Err(failure(PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            PING => {
                if stream != 0 || payload.len() != 8 {
                    return Err(failure(PROTOCOL_ERROR, "malformed PING"));
                }
                if flags & ACK == 0 {
                    self.frame(PING, ACK, 0, &payload);
                }
                Ok(())
            }
            GOAWAY => {
                if stream != 0 {
                    return Err(failure(PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                self.goaway_received = true;
                Ok(())
            }
            WINDOW_UPDATE => self.on_window_update(stream, &payload),
            // Unknown frame types are ignored (RFC 9113, section 4.1).
            _ => Ok(()),
        }
    }

    /// Strips padding (and, for HEADERS, the priority fields) from a payload.
    fn unpad(flags: u8, mut payload: Bytes, priority: bool) -> Result<Bytes, Failure> {
        let mut pad = 0;
        if flags & PADDED != 0 {
            if payload.is_empty() {
                return Err(failure(PROTOCOL_ERROR, "padded frame without a pad length"));
            }
            pad = usize::from(payload[0]);
            payload.advance(1);
        }
        if priority && flags & PRIORITY_FLAG != 0 {
            if payload.len() < 5 {
                return Err(failure(PROTOCOL_ERROR, "HEADERS too short for its priority"));
            }
            payload.advance(5);
        }
        if pad > payload.len() {
            return Err(failure(PROTOCOL_ERROR, "padding longer than the frame"));
        }
        payload.truncate(payload.len() - pad);
        Ok(payload)
    }

    fn on_data(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), Failure> {
        if id == 0 {
            return Err(failure(PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let counted = payload.len();
        self.conn_recv_window -= counted as i64;
        if self.conn_recv_window < 0 {
            return Err(failure(FLOW_CONTROL_ERROR, "DATA beyond the connection window"));
        }
        let data = Self::unpad(flags, payload, false)?;
        // Padding is never read by anyone: credit it back at once.
        self.conn_credit += counted - data.len();
        let end = flags & END_STREAM != 0;
        let Some(stream) = self.streams.get_mut(&id) else {
            self.conn_credit += data.len();
            if id > self.last_stream_id {
                return Err(failure(PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A stream we closed or reset: its data is discarded.
            return Ok(());
        };
        if !stream.receiving {
            self.conn_credit += data.len();
            self.reset_stream(id, STREAM_CLOSED);
            return Ok(());
        }
        stream.recv_window -= counted as i64;
        if stream.recv_window < 0 {
            self.conn_credit += data.len();
            self.reset_stream(id, FLOW_CONTROL_ERROR);
            return Ok(());
        }
        stream.body.push(data, end);
        stream.receiving = !end;
        Ok(())
    }

    fn on_headers(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), Failure> {
        if id == 0 {
            return Err(failure(PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let fragment = Self::unpad(flags, payload, true)?;
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            return self.on_header_block(id, end_stream, &fragment);
        }
        if fragment.len() > MAX_HEADER_BLOCK {
            return Err(failure(PROTOCOL_ERROR, "header block above SETTINGS_MAX_HEADER_LIST_SIZE"));
        }
        self.open_block = Some((id, end_stream, BytesMut::from(&fragment[..])));
        Ok(())
    }

    fn on_continuation(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), Failure> {
        let Some((open, end_stream, mut block)) = self.open_block.take() else {
            return Err(failure(PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
        };
        debug_assert_eq!(open, id, "checked by handle_frame");
        if block.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(failure(PROTOCOL_ERROR, "header block above SETTINGS_MAX_HEADER_LIST_SIZE"));
        }
        block.extend_from_slice(&payload);
        if flags & END_HEADERS != 0 {
            return self.on_header_block(id, end_stream, &block);
        }
        self.open_block = Some((id, end_stream, block));
        Ok(())
    }

    /// A complete header block: a new call, or a client's trailers on an open one.
    fn on_header_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), Failure> {
        // Decoded before anything else, so the dynamic table follows the client's encoder even
        // for a stream that is refused.
        let fields = self.decoder.decode(block).map_err(|_| failure(COMPRESSION_ERROR, "undecodable header block"))?;
        if let Some(stream) = self.streams.get_mut(&id) {
            // Trailers: they end the request; gRPC gives them no meaning.
            if end_stream && stream.receiving {
                stream.receiving = false;
                stream.body.push(Bytes::new(), true);
            } else {
                self.reset_stream(id, PROTOCOL_ERROR);
            }
            return Ok(());
        }
        if id.is_multiple_of(2) || id <= self.last_stream_id {
            if id <= self.last_stream_id {
                // Headers for a stream that already ended.
                return Err(failure(STREAM_CLOSED, "HEADERS on a closed stream"));
            }
            return Err(failure(PROTOCOL_ERROR, "even or decreasing client stream id"));
        }
        self.last_stream_id = id;
        if self.goaway_sent.is_some() || self.streams.len() >= MAX_STREAMS as usize {
            self.reset_frame(id, REFUSED_STREAM);
            return Ok(());
        }
        let Some(request_head) = request_head(&fields) else {
            self.reset_frame(id, PROTOCOL_ERROR);
            return Ok(());
        };
        let waker_state = Arc::new(StreamWaker { id, queued: AtomicBool::new(false), ready: self.ready.clone() });
        let body = Arc::new(BodyShared {
            id,
            ready: self.ready.clone(),
            state: Mutex::new(BodyState {
                chunks: VecDeque::new(),
                end: if end_stream { BodyEnd::Complete } else { BodyEnd::Open },
                waker: None,
                read_uncredited: 0,
                read_queued: false,
            }),
        });
        let mut request = Request::from_parts(request_head, GrpcBody::new(RequestBody { shared: body.clone() }));
        request.extensions_mut().insert(self.identity.clone());
        let call = self.services.call(request);
        let waker = Waker::from(waker_state.clone());
        self.streams.insert(
            id,
            Stream {
                waker_state: waker_state.clone(),
                waker,
                body,
                receiving: !end_stream,
                recv_window: i64::from(STREAM_WINDOW),
                credit: 0,
                send_window: self.peer_initial_window,
                phase: Phase::Calling(call),
                held: Bytes::new(),
                ending: None,
            },
        );
        // Polled in this round: a call that completes at once answers in the same write.
        waker_state.wake_by_ref();
        Ok(())
    }

    fn on_reset(&mut self, id: u32, payload: &[u8]) -> Result<(), Failure> {
        if id == 0 || payload.len() != 4 {
            return Err(failure(PROTOCOL_ERROR, "malformed RST_STREAM"));
        }
        if id > self.last_stream_id {
            return Err(failure(PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
        }
        if let Some(stream) = self.streams.remove(&id) {
            self.release(&stream);
        }
        Ok(())
    }

    fn on_settings(&mut self, flags: u8, stream: u32, payload: &[u8]) -> Result<(), Failure> {
        if stream != 0 {
            return Err(failure(PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !payload.is_empty() {
                return Err(failure(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(failure(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6"));
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(failure(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for (id, stream) in &mut self.streams {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(failure(FLOW_CONTROL_ERROR, "stream window above 2^31-1"));
                        }
                        if delta > 0 {
                            self.ready.polls.lock().unwrap_or_else(PoisonError::into_inner).push(*id);
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(failure(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                // SETTINGS_HEADER_TABLE_SIZE and ENABLE_PUSH ask nothing of us (responses use no
                // dynamic table, and we never push); the rest are advisory.
                _ => {}
            }
        }
        self.frame(SETTINGS, ACK, 0, &[]);
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), Failure> {
        if payload.len() != 4 {
            return Err(failure(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes"));
        }
        let increment = i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
        if id == 0 {
            if increment == 0 {
                return Err(failure(PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0"));
            }
            self.conn_send_window += increment;
            if self.conn_send_window > MAX_WINDOW {
                return Err(failure(FLOW_CONTROL_ERROR, "connection window above 2^31-1"));
            }
            let starved = std::mem::take(&mut self.starved);
            self.ready.polls.lock().unwrap_or_else(PoisonError::into_inner).extend(starved);
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id) else { return Ok(()) };
        if increment == 0 {
            self.reset_stream(id, PROTOCOL_ERROR);
            return Ok(());
        }
        stream.send_window += increment;
        if stream.send_window > MAX_WINDOW {
            self.reset_stream(id, FLOW_CONTROL_ERROR);
            return Ok(());
        }
        stream.waker_state.wake_by_ref();
        Ok(())
    }

    /// Sends RST_STREAM and drops the stream.
    fn reset_stream(&mut self, id: u32, code: u32) {
        self.reset_frame(id, code);
        if let Some(stream) = self.streams.remove(&id) {
            self.release(&stream);
        }
    }

    /// Ends a dropped stream's request body and returns its unread bytes to the connection
    /// window (bytes already read were credited to it when the read was reported).
    fn release(&mut self, stream: &Stream) {
        self.conn_credit += stream.body.reset();
    }

    /// Credits read request bytes, polls every ready stream, and sends window updates. True when
    /// anything happened.
    fn poll_streams(&mut self) -> bool {
        let mut progressed = false;
        for id in self.ready.take_reads() {
            let Some(stream) = self.streams.get_mut(&id) else { continue };
            let read = stream.body.take_read();
            stream.credit += read;
            self.conn_credit += read;
            if stream.receiving && stream.credit >= STREAM_WINDOW as usize / 2 {
                let increment = std::mem::take(&mut stream.credit);
                stream.recv_window += increment as i64;
                self.frame(WINDOW_UPDATE, 0, id, &(increment as u32).to_be_bytes());
            }
            progressed = true;
        }
        let mut polls = self.ready.take_polls();
        if self.write_buf.len() < WRITE_HIGH_WATER && !self.paused.is_empty() {
            polls.append(&mut self.paused);
        }
        for id in polls {
            progressed = true;
            if self.write_buf.len() >= WRITE_HIGH_WATER {
                self.paused.push(id);
                continue;
            }
            let Some(mut stream) = self.streams.remove(&id) else { continue };
            stream.waker_state.queued.store(false, Ordering::Release);
            match self.poll_stream(id, &mut stream) {
                Outcome::Open => {
                    self.streams.insert(id, stream);
                }
                Outcome::Finished => {
                    if stream.receiving {
                        // RFC 9113 section 8.1: the response is complete before the request;
                        // the client may stop sending it.
                        self.reset_frame(id, NO_ERROR);
                    }
                    self.release(&stream);
                }
                Outcome::Reset(code) => {
                    self.reset_frame(id, code);
                    self.release(&stream);
                }
            }
        }
        if self.conn_credit >= CONNECTION_WINDOW as usize / 2 {
            let increment = std::mem::take(&mut self.conn_credit);
            self.conn_recv_window += increment as i64;
            self.frame(WINDOW_UPDATE, 0, 0, &(increment as u32).to_be_bytes());
        }
        progressed
    }

    /// Moves one stream's response forward as far as its call, its body and the windows allow.
    fn poll_stream(&mut self, id: u32, stream: &mut Stream) -> Outcome {
        let waker = stream.waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            if !stream.held.is_empty() {
                if self.write_buf.len() >= WRITE_HIGH_WATER {
                    self.paused.push(id);
                    return Outcome::Open;
                }
                let window = stream.send_window.min(self.conn_send_window).min(WRITE_HIGH_WATER as i64);
                if window <= 0 {
                    if stream.send_window > 0 {
                        // The connection window is what is missing; its update wakes us.
                        self.starved.push(id);
                    }
                    return Outcome::Open;
                }
                let piece = stream.held.split_to(stream.held.len().min(window as usize));
                stream.send_window -= piece.len() as i64;
                self.conn_send_window -= piece.len() as i64;
                for chunk in piece.chunks(self.peer_max_frame) {
                    self.frame(DATA, 0, id, chunk);
                }
                continue;
            }
            match stream.ending.take() {
                Some(Ending::Trailers(trailers)) => {
                    let block = encode_fields(None, &trailers);
                    self.header_block(id, &block, true);
                    return Outcome::Finished;
                }
                Some(Ending::EndStream) => {
                    self.frame(DATA, END_STREAM, id, &[]);
                    return Outcome::Finished;
                }
                None => {}
            }
            match &mut stream.phase {
                Phase::Calling(call) => {
                    let Poll::Ready(Ok(response)) = call.as_mut().poll(&mut cx) else { return Outcome::Open };
                    let (parts, body) = response.into_parts();
                    let block = encode_fields(Some(parts.status.as_u16()), &parts.headers);
                    if body.is_end_stream() {
                        // Trailers-only: how gRPC answers an error before any message.
                        self.header_block(id, &block, true);
                        return Outcome::Finished;
                    }
                    self.header_block(id, &block, false);
                    stream.phase = Phase::Sending(body);
                }
                Phase::Sending(body) => {
                    // Nothing is held here, so pulling one more frame keeps at most one message
                    // waiting for window (and trailers need none).
                    match Pin::new(body).poll_frame(&mut cx) {
                        Poll::Pending => return Outcome::Open,
                        Poll::Ready(None) => stream.ending = Some(Ending::EndStream),
                        Poll::Ready(Some(Err(e))) => {
                            tracing::debug!(stream = id, error = %e, "response body failed");
                            return Outcome::Reset(INTERNAL_ERROR);
                        }
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => stream.held = data,
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    stream.ending = Some(Ending::Trailers(trailers));
                                }
                            }
                        },
                    }
                }
            }
        }
    }

    /// Writes buffered frames. `Ready(Ok(true))` when bytes went out or a flush completed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut wrote = false;
        while self.written < self.write_buf.len() {
            let n = match Pin::new(&mut self.io).poll_write(cx, &self.write_buf[self.written..]) {
                Poll::Ready(result) => result?,
                Poll::Pending => return if wrote { Poll::Ready(Ok(true)) } else { Poll::Pending },
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.needs_flush = true;
            wrote = true;
        }
        self.write_buf.clear();
        self.written = 0;
        if self.write_buf.capacity() > 4 * WRITE_HIGH_WATER {
            self.write_buf = Vec::new();
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(result) => {
                    result?;
                    self.needs_flush = false;
                    wrote = true;
                }
                Poll::Pending => return if wrote { Poll::Ready(Ok(true)) } else { Poll::Pending },
            }
        }
        Poll::Ready(Ok(wrote))
    }
}

/// Who is at the other end of a client connection, as handlers find it in request extensions.
#[derive(Clone, Debug, Default)]
pub struct PeerIdentity {
    /// The client's address.
    pub remote_addr: Option<std::net::SocketAddr>,
    /// The subject of the client's verified certificate (TLS with client-certificate auth only).
    pub certificate: Option<crate::tls::CertIdentity>,
}

/// `host:port` from an `:authority` that is really a URL (etcdctl 3.4 sends `http://host:port` on
/// the calls it makes to one endpoint, which grpc-go's server accepts); `None` when it needs no
/// repair.
fn repaired_authority(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let start = text.rfind("://")? + 3;
    let rest = &text[start..];
    let end = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..end];
    (!host.is_empty()).then(|| host.as_bytes().to_vec())
}

/// The request's method, URI and headers from a decoded header block; `None` when it is not a
/// well-formed request (missing or repeated pseudo-headers, invalid names or values).
fn request_head(fields: &[hpack::Header]) -> Option<http::request::Parts> {
    let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !headers.is_empty() {
                return None;
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                _ => return None,
            };
            if slot.replace(value.clone()).is_some() {
                return None;
            }
            continue;
        }
        let name = HeaderName::from_bytes(name).ok()?;
        let value = HeaderValue::from_maybe_shared(value.clone()).ok()?;
        headers.append(name, value);
    }
    let method = http::Method::from_bytes(&method?).ok()?;
    let path = path?;
    let mut uri = http::uri::Builder::new();
    if let (Some(scheme), Some(authority)) = (scheme, authority) {
        let authority = match repaired_authority(&authority) {
            Some(host_port) => Bytes::from(host_port),
            None => authority,
        };
        if let Ok(authority) = http::uri::Authority::from_maybe_shared(authority)
            && let Ok(scheme) = http::uri::Scheme::try_from(&scheme[..])
        {
            uri = uri.scheme(scheme).authority(authority);
        }
    }
    let uri = uri.path_and_query(http::uri::PathAndQuery::from_maybe_shared(path).ok()?).build().ok()?;
    let (mut parts, ()) =
        Request::builder().method(method).uri(uri).version(http::Version::HTTP_2).body(()).ok()?.into_parts();
    parts.headers = headers;
    Some(parts)
}

/// A response's header block (`:status` first when given), as literals the client needs no
/// dynamic table for.
fn encode_fields(status: Option<u16>, headers: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::with_capacity(64);
    if let Some(status) = status {
        hpack::encode_status(&mut block, status);
    }
    for (name, value) in headers {
        hpack::encode_field(&mut block, name.as_str().as_bytes(), value.as_bytes());
    }
    block
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A response body of fixed frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// Counts drops of what it guards (a call future, here).
    struct DropCounter(Arc<AtomicUsize>);

    impl Drop for DropCounter {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A transport-level test service (`test.Echo`), by method: `Echo` answers the whole request
    /// body back with the request's authority in `x-authority`; `Big` answers `x-size` bytes;
    /// `Hang` never answers; `Gate` answers once `gate` is notified.
    #[derive(Clone)]
    struct Echo {
        dropped: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
    }

    impl tonic::server::NamedService for Echo {
        const NAME: &'static str = "test.Echo";
    }

    fn grpc_response(headers: &[(&'static str, String)], data: Vec<Bytes>) -> Response<GrpcBody> {
        let mut frames: VecDeque<Frame<Bytes>> = data.into_iter().map(Frame::data).collect();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        frames.push_back(Frame::trailers(trailers));
        let mut response = Response::new(GrpcBody::new(Frames(frames)));
        response.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        for (name, value) in headers {
            response.headers_mut().insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        response
    }

    impl tower::Service<Request<GrpcBody>> for Echo {
        type Response = Response<GrpcBody>;
        type Error = Infallible;
        type Future = CallFuture;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<GrpcBody>) -> CallFuture {
            let this = self.clone();
            Box::pin(async move {
                let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_string();
                let authority = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
                let size: usize = request
                    .headers()
                    .get("x-size")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = request.into_body();
                match method.as_str() {
                    "Echo" => {
                        let mut received = Vec::new();
                        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                            if let Ok(data) = frame.expect("request body").into_data() {
                                received.extend_from_slice(&data);
                            }
                        }
                        Ok(grpc_response(&[("x-authority", authority)], vec![Bytes::from(received)]))
                    }
                    "Big" => Ok(grpc_response(&[], vec![Bytes::from(vec![7u8; size])])),
                    "Gate" => {
                        this.gate.notified().await;
                        Ok(grpc_response(&[], vec![Bytes::from_static(b"done")]))
                    }
                    _ => {
                        let _guard = DropCounter(this.dropped.clone());
                        std::future::pending::<()>().await;
                        unreachable!("a pending future never completes")
                    }
                }
            })
        }
    }

    struct Harness {
        client: DuplexStream,
        decoder: Decoder,
        dropped: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Notify>,
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<Result<(), ConnectionError>>,
    }

    /// One frame as the client reads it.
    #[derive(Debug)]
    struct Received {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn request_block(method: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut fields: Vec<hpack::Header> = vec![
            (Bytes::from_static(b":method"), Bytes::from_static(b"POST")),
            (Bytes::from_static(b":scheme"), Bytes::from_static(b"http")),
            (Bytes::from_static(b":path"), Bytes::from(format!("/test.Echo/{method}"))),
            (Bytes::from_static(b":authority"), Bytes::from(authority.to_string())),
            (Bytes::from_static(b"content-type"), Bytes::from_static(b"application/grpc")),
        ];
        for (name, value) in extra {
            fields.push((Bytes::from(name.to_string()), Bytes::from(value.to_string())));
        }
        hpack::encode(&fields)
    }

    impl Harness {
        /// A served connection whose client has sent the preface and `settings`, and read the
        /// server's SETTINGS and connection WINDOW_UPDATE.
        async fn start(settings: &[(u16, u32)]) -> Self {
            let (client, server_io) = tokio::io::duplex(1 << 16);
            let (dropped, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(tokio::sync::Notify::new()));
            let services = Services::new().add(Echo { dropped: dropped.clone(), gate: gate.clone() });
            let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
            let stopped = async move {
                let _ = shutdown_rx.await;
            };
            let server =
                tokio::spawn(
                    async move { serve_connection(server_io, PeerIdentity::default(), services, stopped).await },
                );
            let mut harness = Self {
                client,
                decoder: Decoder::new(HEADER_TABLE_SIZE),
                dropped,
                gate,
                shutdown: Some(shutdown_tx),
                server,
            };
            let mut payload = Vec::new();
            for (id, value) in settings {
                payload.extend_from_slice(&id.to_be_bytes());
                payload.extend_from_slice(&value.to_be_bytes());
            }
            let mut opening = PREFACE.to_vec();
            opening.extend(frame_bytes(SETTINGS, 0, 0, &payload));
            harness.send(&opening).await;
            let first = harness.next().await;
            assert_eq!((first.kind, first.flags), (SETTINGS, 0), "the server speaks first with its SETTINGS");
            let window = harness.next().await;
            assert_eq!((window.kind, window.stream), (WINDOW_UPDATE, 0), "then opens the connection window");
            let ack = harness.next().await;
            assert_eq!((ack.kind, ack.flags), (SETTINGS, ACK), "and acknowledges the client's SETTINGS");
            harness
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.client.write_all(bytes).await.expect("client write");
        }

        async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            self.send(&frame_bytes(kind, flags, stream, payload)).await;
        }

        /// The next frame from the server (paused time turns a hang into a quick failure).
        async fn next(&mut self) -> Received {
            tokio::time::timeout(Duration::from_secs(30), self.try_next())
                .await
                .expect("the server sent nothing")
                .expect("the server closed the connection")
        }

        async fn try_next(&mut self) -> Option<Received> {
            let mut head = [0u8; FRAME_HEADER];
            self.client.read_exact(&mut head).await.ok()?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            self.client.read_exact(&mut payload).await.ok()?;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
            Some(Received { kind: head[3], flags: head[4], stream, payload })
        }

        fn fields(&mut self, frame: &Received) -> Vec<(String, String)> {
            assert_eq!(frame.kind, HEADERS, "expected HEADERS, got {frame:?}");
            let decoded = self.decoder.decode(&frame.payload).expect("response headers decode");
            decoded
                .iter()
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        }
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_call_is_answered_with_headers_data_and_trailers_and_a_url_authority_is_repaired() {
        let mut h = Harness::start(&[]).await;
        h.frame(HEADERS, END_HEADERS, 1, &request_block("Echo", "http://127.0.0.1:2379", &[])).await;
        h.frame(DATA, END_STREAM, 1, b"hello").await;
        let headers = h.next().await;
        let fields = h.fields(&headers);
        assert_eq!(field(&fields, ":status"), Some("200"));
        assert_eq!(field(&fields, "x-authority"), Some("127.0.0.1:2379"), "the URL became host:port");
        assert_eq!(headers.flags & END_STREAM, 0);
        let data = h.next().await;
        assert_eq!((data.kind, data.stream, data.payload.as_slice()), (DATA, 1, &b"hello"[..]));
        let trailers = h.next().await;
        assert_eq!(trailers.flags & END_STREAM, END_STREAM, "trailers end the stream");
        assert_eq!(field(&h.fields(&trailers), "grpc-status"), Some("0"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_service_is_answered_trailers_only_with_unimplemented() {
        let mut h = Harness::start(&[]).await;
        let block = hpack::encode(&[
            (Bytes::from_static(b":method"), Bytes::from_static(b"POST")),
            (Bytes::from_static(b":scheme"), Bytes::from_static(b"http")),
            (Bytes::from_static(b":path"), Bytes::from_static(b"/nope.Service/Call")),
        ]);
        h.frame(HEADERS, END_HEADERS | END_STREAM, 1, &block).await;
        let response = h.next().await;
        assert_eq!(response.flags & END_STREAM, END_STREAM, "one HEADERS frame carries the status and ends the stream");
        assert_eq!(field(&h.fields(&response), "grpc-status"), Some("12"));
    }

    #[tokio::test(start_paused = true)]
    async fn response_data_never_exceeds_the_clients_stream_window() {
        let mut h = Harness::start(&[(SETTINGS_INITIAL_WINDOW_SIZE, 10)]).await;
        h.frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("Big", "x", &[("x-size", "100")])).await;
        let headers = h.next().await;
        assert_eq!(headers.kind, HEADERS);
        let first = h.next().await;
        assert_eq!((first.kind, first.payload.len()), (DATA, 10), "only the window's worth goes out");
        // Nothing more until the window opens: a PING is answered before any further DATA.
        h.frame(PING, 0, 0, b"12345678").await;
        let pong = h.next().await;
        assert_eq!((pong.kind, pong.flags, pong.payload.as_slice()), (PING, ACK, &b"12345678"[..]));
        h.frame(WINDOW_UPDATE, 0, 1, &90u32.to_be_bytes()).await;
        let rest = h.next().await;
        assert_eq!((rest.kind, rest.payload.len()), (DATA, 90));
        let trailers = h.next().await;
        assert_eq!((trailers.kind, trailers.flags & END_STREAM), (HEADERS, END_STREAM));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_past_its_window_unread_is_reset_and_the_connection_lives_on() {
        let mut h = Harness::start(&[]).await;
        h.frame(HEADERS, END_HEADERS, 1, &request_block("Hang", "x", &[])).await;
        let chunk = vec![1u8; MAX_FRAME];
        for _ in 0..(STREAM_WINDOW as usize / MAX_FRAME) {
            h.frame(DATA, 0, 1, &chunk).await;
        }
        h.frame(DATA, 0, 1, b"one byte too many").await;
        let reset = h.next().await;
        assert_eq!((reset.kind, reset.stream), (RST_STREAM, 1));
        assert_eq!(u32::from_be_bytes(reset.payload[..4].try_into().expect("4 bytes")), FLOW_CONTROL_ERROR);
        assert_eq!(h.dropped.load(Ordering::SeqCst), 1, "the reset dropped the call");
        h.frame(HEADERS, END_HEADERS, 3, &request_block("Echo", "x", &[])).await;
        h.frame(DATA, END_STREAM, 3, b"still here").await;
        let headers = h.next().await;
        assert_eq!((headers.kind, headers.stream), (HEADERS, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn request_bytes_are_credited_back_as_the_handler_reads_them() {
        let mut h = Harness::start(&[]).await;
        h.frame(HEADERS, END_HEADERS, 1, &request_block("Echo", "x", &[])).await;
        let chunk = vec![1u8; MAX_FRAME];
        // More than a stream window in all: possible only because reads are credited back.
        for _ in 0..(2 * STREAM_WINDOW as usize / MAX_FRAME) {
            h.frame(DATA, 0, 1, &chunk).await;
        }
        h.frame(DATA, END_STREAM, 1, b"end").await;
        let mut credited = 0u64;
        let headers = loop {
            let frame = h.next().await;
            if frame.kind == WINDOW_UPDATE {
                if frame.stream == 1 {
                    credited += u64::from(u32::from_be_bytes(frame.payload[..4].try_into().expect("4 bytes")));
                }
                continue;
            }
            break frame;
        };
        assert!(credited >= u64::from(STREAM_WINDOW), "credited {credited}");
        assert_eq!(headers.kind, HEADERS);
        let data = h.next().await;
        assert_eq!(data.kind, DATA);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_from_the_client_cancels_its_call() {
        let mut h = Harness::start(&[]).await;
        h.frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("Hang", "x", &[])).await;
        h.frame(PING, 0, 0, b"barrier!").await;
        assert_eq!(h.next().await.kind, PING);
        assert_eq!(h.dropped.load(Ordering::SeqCst), 0);
        h.frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
        h.frame(PING, 0, 0, b"barrier!").await;
        assert_eq!(h.next().await.kind, PING);
        assert_eq!(h.dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn header_blocks_split_over_continuation_frames_with_padding_and_priority_are_read_whole() {
        let mut h = Harness::start(&[]).await;
        let block = request_block("Echo", "127.0.0.1:2379", &[]);
        let (a, b) = block.split_at(block.len() / 2);
        let mut first = vec![3u8, 0, 0, 0, 0, 16];
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        h.frame(HEADERS, PADDED | PRIORITY_FLAG, 1, &first).await;
        h.frame(CONTINUATION, END_HEADERS, 1, b).await;
        h.frame(DATA, END_STREAM | PADDED, 1, &[2, b'h', b'i', 0, 0]).await;
        let headers = h.next().await;
        assert_eq!(field(&h.fields(&headers), "x-authority"), Some("127.0.0.1:2379"));
        let data = h.next().await;
        assert_eq!(data.payload, b"hi", "padding is not data");
    }

    #[tokio::test(start_paused = true)]
    async fn protocol_errors_close_the_connection_with_goaway() {
        for bad in [
            frame_bytes(DATA, 0, 0, b"stream zero"),
            frame_bytes(HEADERS, END_HEADERS, 2, &[0x82]),
            frame_bytes(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            frame_bytes(CONTINUATION, END_HEADERS, 1, &[0x82]),
            frame_bytes(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f]),
            {
                let mut too_big = (MAX_FRAME as u32 + 1).to_be_bytes()[1..].to_vec();
                too_big.extend_from_slice(&[DATA, 0, 0, 0, 0, 1]);
                too_big
            },
        ] {
            let mut h = Harness::start(&[]).await;
            h.send(&bad).await;
            let goaway = h.next().await;
            assert_eq!(goaway.kind, GOAWAY, "after {bad:?}");
            assert_ne!(u32::from_be_bytes(goaway.payload[4..8].try_into().expect("4 bytes")), NO_ERROR);
            assert!(h.try_next().await.is_none(), "the connection closes after GOAWAY");
            assert!(matches!(h.server.await.expect("server task"), Err(ConnectionError::Protocol { .. })));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_the_preface_is_closed() {
        let (mut client, server_io) = tokio::io::duplex(4096);
        let server =
            tokio::spawn(serve_connection(server_io, PeerIdentity::default(), Services::new(), std::future::pending()));
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        assert!(matches!(server.await.expect("server task"), Err(ConnectionError::NoPreface)));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_says_goaway_refuses_new_streams_and_lets_open_calls_finish() {
        let mut h = Harness::start(&[]).await;
        h.frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("Gate", "x", &[])).await;
        h.frame(PING, 0, 0, b"barrier!").await;
        assert_eq!(h.next().await.kind, PING);
        h.shutdown.take().expect("once").send(()).expect("server listening");
        let goaway = h.next().await;
        assert_eq!(goaway.kind, GOAWAY);
        assert_eq!(u32::from_be_bytes(goaway.payload[..4].try_into().expect("4 bytes")), 1, "last stream accepted");
        h.frame(HEADERS, END_HEADERS | END_STREAM, 3, &request_block("Echo", "x", &[])).await;
        let refused = h.next().await;
        assert_eq!((refused.kind, refused.stream), (RST_STREAM, 3));
        assert_eq!(u32::from_be_bytes(refused.payload[..4].try_into().expect("4 bytes")), REFUSED_STREAM);
        h.gate.notify_one();
        assert_eq!(h.next().await.kind, HEADERS);
        assert_eq!(h.next().await.payload, b"done");
        assert_eq!(h.next().await.flags & END_STREAM, END_STREAM);
        assert!(h.try_next().await.is_none(), "the connection closes once its calls are done");
        assert!(h.server.await.expect("server task").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn open_calls_get_a_bounded_grace_after_shutdown() {
        let mut h = Harness::start(&[]).await;
        h.frame(HEADERS, END_HEADERS | END_STREAM, 1, &request_block("Hang", "x", &[])).await;
        h.frame(PING, 0, 0, b"barrier!").await;
        assert_eq!(h.next().await.kind, PING);
        h.shutdown.take().expect("once").send(()).expect("server listening");
        assert_eq!(h.next().await.kind, GOAWAY);
        assert!(h.server.await.expect("server task").is_ok(), "the grace period ended the connection");
        assert_eq!(h.dropped.load(Ordering::SeqCst), 1, "and cancelled the call still open");
    }
}
