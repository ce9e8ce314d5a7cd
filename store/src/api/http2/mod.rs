//! Keel's HTTP/2 server for the client and peer APIs: gRPC calls over HTTP/2 (RFC 9113), one task
//! per connection.
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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body as GrpcBody;
use tower::Service as _;

use self::connection::Connection;
use super::hpack;

mod body;
mod connection;
#[cfg(test)]
mod tests;

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

/// Serves one connection until the client closes it, it fails, or `shutdown` resolves and
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
                            tracing::debug!(error = %e, "connection ended");
                        }
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "accepting a connection failed"),
                None => break,
            },
            // Reaps finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    stop_tx.send_replace(true);
    while connections.join_next().await.is_some() {}
}

/// A connection-level failure: GOAWAY with `code`, then close.
struct Failure {
    code: u32,
    reason: &'static str,
}

fn failure(code: u32, reason: &'static str) -> Failure {
    Failure { code, reason }
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
