//! Frame-level tests of the HTTP/2 server: a client written by hand against a served connection
//! over an in-memory pipe, and a transport-level test service.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body as _, Frame};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::api::hpack::Decoder;

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
            let size: usize =
                request.headers().get("x-size").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
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
    /// A PING round trip: once its answer is read, the server has handled every frame sent before
    /// it (it reads frames in order) and written what they produced ahead of the answer.
    async fn barrier(&mut self) {
        self.frame(PING, 0, 0, b"barrier!").await;
        assert_eq!(self.next().await.kind, PING);
    }

    /// Signals the server to shut down; a harness shuts down once.
    fn shut_down(&mut self) {
        self.shutdown.take().expect("shut down once").send(()).expect("server listening");
    }

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
            tokio::spawn(async move { serve_connection(server_io, PeerIdentity::default(), services, stopped).await });
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
    h.barrier().await;
    assert_eq!(h.dropped.load(Ordering::SeqCst), 0);
    h.frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
    h.barrier().await;
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
    h.barrier().await;
    h.shut_down();
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
    h.barrier().await;
    h.shut_down();
    assert_eq!(h.next().await.kind, GOAWAY);
    assert!(h.server.await.expect("server task").is_ok(), "the grace period ended the connection");
    assert_eq!(h.dropped.load(Ordering::SeqCst), 1, "and cancelled the call still open");
}
