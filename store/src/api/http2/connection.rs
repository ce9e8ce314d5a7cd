//! One client connection's state and its poll loop: frames read and handled, streams polled,
//! frames written (see the parent module for the protocol's invariants).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::body::Body as GrpcBody;

use super::body::{BodyShared, Ready, RequestBody, StreamWaker};
use super::hpack::Decoder;
use super::*;

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

pub(super) struct Connection<S> {
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
    /// Whether GOAWAY was sent (at shutdown): streams opened after it are refused.
    goaway_sent: bool,
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
    /// Streams waiting for the connection send window (a set: a stream blocked again is listed once).
    starved: HashSet<u32>,
    /// Streams paused because the write buffer was full.
    paused: Vec<u32>,
    /// Set when the connection must close after writing what is buffered.
    failed: Option<Failure>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn new(
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
            goaway_sent: false,
            goaway_received: false,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            conn_send_window: DEFAULT_WINDOW,
            conn_recv_window: i64::from(CONNECTION_WINDOW),
            conn_credit: 0,
            starved: HashSet::new(),
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
    pub(super) fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
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
                if self.streams.is_empty() && (self.read_closed || self.goaway_sent || self.goaway_received) {
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
        self.goaway_sent = true;
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

    fn on_data(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), Failure> {
        if id == 0 {
            return Err(failure(PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let counted = payload.len();
        self.conn_recv_window -= counted as i64;
        if self.conn_recv_window < 0 {
            return Err(failure(FLOW_CONTROL_ERROR, "DATA beyond the connection window"));
        }
        let data = unpad(flags, payload, false)?;
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
        let fragment = unpad(flags, payload, true)?;
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
        if self.goaway_sent || self.streams.len() >= MAX_STREAMS as usize {
            self.reset_frame(id, REFUSED_STREAM);
            return Ok(());
        }
        let Some(request_head) = request_head(&fields) else {
            self.reset_frame(id, PROTOCOL_ERROR);
            return Ok(());
        };
        let waker_state = StreamWaker::new(id, &self.ready);
        let body = BodyShared::new(id, &self.ready, end_stream);
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
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > MAX_WINDOW {
                            return Err(failure(FLOW_CONTROL_ERROR, "stream window above 2^31-1"));
                        }
                        if delta > 0 {
                            stream.waker_state.wake_by_ref();
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
            for id in std::mem::take(&mut self.starved) {
                if let Some(stream) = self.streams.get(&id) {
                    stream.waker_state.wake_by_ref();
                }
            }
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
                        self.starved.insert(id);
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
