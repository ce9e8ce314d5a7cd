//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! The receive side turns create/cancel/progress requests into hub calls and ticks progress
//! notifications; the send side converts the hub's stream messages into `WatchResponse`s, splitting
//! large event batches into fragments for watchers that accept them. When the client goes away the
//! response stream is dropped, which closes the hub stream and stops the receive task. As in etcd,
//! a client that only half-closes its side keeps receiving events.
//!
//! Encoding once: the hub hands every watcher that receives the same events the same
//! [`EventBatch`], and this module's codec writes a response's events from the batch's shared
//! encoding (made by the first stream that sends it), so a revision delivered to a thousand
//! watchers is converted and encoded once. That is why the service is served by [`WatchServer`]
//! here rather than tonic's generated server, whose codec can only encode whole messages.
//!
//! Invariant: a response written from a shared encoding is byte for byte what encoding the whole
//! `WatchResponse` would give (fields in field-number order: header, watch_id, events), so clients
//! cannot tell the two paths apart (`shared_encoding_matches_the_message_encoding`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use keel_proto::etcdserverpb as pb;
use prost::Message;
use prost::bytes::BufMut;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::{Request, Response, Status, Streaming};

use super::{Api, convert, to_status};
use crate::auth::Access;
use crate::error::StoreError;
use crate::watch::{EventBatch, StreamId, WatchHub, WatchMessage, WatchSpec};

/// The Watch service.
#[derive(Clone, Debug)]
pub struct WatchService {
    api: Arc<Api>,
}

impl WatchService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<WatchFrame, Status>> + Send>>;

/// One response on a Watch stream, as the codec writes it.
#[derive(Debug)]
pub enum WatchFrame {
    /// A response encoded as a whole message.
    Message(pb::WatchResponse),
    /// A watcher's events, written from the batch's shared encoding.
    Events {
        /// The response header.
        header: Option<pb::ResponseHeader>,
        /// The watcher.
        watch_id: i64,
        /// The events, shared with the other watchers receiving them.
        batch: Arc<EventBatch>,
    },
}

/// The `events` field (number 11) of a `WatchResponse` holding `events`: the bytes every response
/// carrying this batch shares.
fn encode_events(events: &[crate::mvcc::Event]) -> Vec<u8> {
    let converted: Vec<_> = events.iter().cloned().map(convert::event).collect();
    let mut wire = Vec::with_capacity(converted.iter().map(|e| e.encoded_len() + 4).sum());
    for event in &converted {
        prost::encoding::message::encode(EVENTS_FIELD, event, &mut wire);
    }
    wire
}

/// `WatchResponse` field numbers the shared encoding writes around.
const HEADER_FIELD: u32 = 1;
const WATCH_ID_FIELD: u32 = 2;
const EVENTS_FIELD: u32 = 11;

impl WatchFrame {
    /// The length of the encoded `WatchResponse`.
    fn encoded_len(&self) -> usize {
        match self {
            Self::Message(message) => message.encoded_len(),
            Self::Events { header, watch_id, batch } => {
                header.as_ref().map_or(0, |header| prost::encoding::message::encoded_len(HEADER_FIELD, header))
                    + if *watch_id == 0 { 0 } else { prost::encoding::int64::encoded_len(WATCH_ID_FIELD, watch_id) }
                    + batch.wire_form(encode_events).len()
            }
        }
    }

    /// Writes the frame as an encoded `WatchResponse`.
    fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Self::Message(message) => {
                // Encoding into a growable buffer cannot run out of room.
                let _ = message.encode(buf);
            }
            Self::Events { header, watch_id, batch } => {
                if let Some(header) = header {
                    prost::encoding::message::encode(HEADER_FIELD, header, buf);
                }
                if *watch_id != 0 {
                    prost::encoding::int64::encode(WATCH_ID_FIELD, watch_id, buf);
                }
                buf.put_slice(batch.wire_form(encode_events));
            }
        }
    }
}

/// The Watch stream's codec: decodes `WatchRequest`s, writes [`WatchFrame`]s.
#[derive(Clone, Copy, Debug, Default)]
struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchFrame;
    type Decode = pb::WatchRequest;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for WatchCodec {
    type Item = WatchFrame;
    type Error = Status;

    fn encode(&mut self, frame: WatchFrame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        frame.encode(buf);
        Ok(())
    }
}

impl Decoder for WatchCodec {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        pb::WatchRequest::decode(buf).map(Some).map_err(|err| Status::internal(err.to_string()))
    }
}

/// The gRPC server of `etcdserverpb.Watch`, in place of tonic's generated one (see the module
/// comment): same path, same limits, [`WatchCodec`] for the messages.
#[derive(Clone, Debug)]
pub struct WatchServer {
    service: WatchService,
    /// Largest request message accepted.
    max_decoding_message_size: usize,
}

impl WatchServer {
    /// A server for `service` refusing request messages over `max_decoding_message_size` bytes.
    pub(super) fn new(service: WatchService, max_decoding_message_size: usize) -> Self {
        Self { service, max_decoding_message_size }
    }
}

/// The one streaming method, as tonic's server machinery calls it.
struct WatchMethod(WatchService);

impl tonic::server::StreamingService<pb::WatchRequest> for WatchMethod {
    type Response = WatchFrame;
    type ResponseStream = WatchResponseStream;
    type Future = BoxFuture<Response<WatchResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::WatchRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for WatchServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let method = WatchMethod(self.service.clone());
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(WatchCodec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.streaming(method, request).await)
        })
    }
}

impl tonic::server::NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// Closes the hub stream and stops the receive task when the response stream is dropped.
struct StreamGuard {
    hub: Arc<WatchHub>,
    stream: StreamId,
    receiver: JoinHandle<()>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.receiver.abort();
        self.hub.close_stream(self.stream);
    }
}

struct Guarded<S> {
    inner: S,
    _guard: StreamGuard,
}

impl<S: Stream + Unpin> Stream for Guarded<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

fn spec(req: pb::WatchCreateRequest) -> WatchSpec {
    use pb::watch_create_request::FilterType;
    WatchSpec {
        key: req.key,
        range_end: req.range_end,
        start_revision: req.start_revision,
        progress_notify: req.progress_notify,
        no_put: req.filters.contains(&(FilterType::Noput as i32)),
        no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
        prev_kv: req.prev_kv,
        watch_id: req.watch_id,
        fragment: req.fragment,
    }
}

async fn receive(
    api: Arc<Api>,
    hub: Arc<WatchHub>,
    stream: StreamId,
    mut inbound: Streaming<pb::WatchRequest>,
    caller: Result<Option<String>, StoreError>,
) {
    use pb::watch_request::RequestUnion;
    let period = api.member.config().watch_progress_notify_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut reading = true;
    loop {
        tokio::select! {
            message = inbound.message(), if reading => match message {
                Ok(Some(req)) => {
                    let outcome = match req.request_union {
                        Some(RequestUnion::CreateRequest(create)) => {
                            let permitted = caller.clone().and_then(|caller| {
                                api.auth().check(caller.as_deref(), &create.key, &create.range_end, Access::Read)
                            });
                            match permitted {
                                Ok(()) => hub.create(stream, spec(create)).await.map(|_| ()),
                                Err(refused) => hub.refuse(stream, to_status(&refused).message().to_string()).await,
                            }
                        }
                        Some(RequestUnion::CancelRequest(cancel)) => hub.cancel(stream, cancel.watch_id).await.map(|_| ()),
                        Some(RequestUnion::ProgressRequest(_)) => {
                            hub.request_progress(stream);
                            Ok(())
                        }
                        None => Ok(()),
                    };
                    if let Err(crate::watch::WatchError::StreamClosed) = outcome {
                        return;
                    }
                }
                // The client closed its sending side: keep delivering events until it goes away.
                Ok(None) => reading = false,
                Err(_) => {
                    hub.close_stream(stream);
                    return;
                }
            },
            _ = tick.tick() => hub.progress_tick(stream),
        }
    }
}

/// Converts one hub message into responses (several when fragmented).
fn responses(api: &Api, message: WatchMessage, max_bytes: usize) -> Vec<WatchFrame> {
    tracing::trace!(?message, "sending to watch stream");
    let message = match message {
        WatchMessage::Created { watch_id, revision } => {
            pb::WatchResponse { header: api.header(revision), watch_id, created: true, ..Default::default() }
        }
        WatchMessage::CreateFailed { revision, reason } => pb::WatchResponse {
            header: api.header(revision),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        },
        WatchMessage::Canceled { watch_id, revision, compact_revision, reason } => pb::WatchResponse {
            header: api.header(revision),
            watch_id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        },
        WatchMessage::Progress { watch_id, revision } => {
            pb::WatchResponse { header: api.header(revision), watch_id, ..Default::default() }
        }
        WatchMessage::Events { watch_id, revision, events, fragment } => {
            // Only a watcher that accepts fragments gets a large batch split; everyone else gets
            // the shared encoding whole.
            let header = api.header(revision);
            let frame = WatchFrame::Events { header, watch_id, batch: events.clone() };
            if !fragment || events.len() < 2 || frame.encoded_len() < max_bytes {
                return vec![frame];
            }
            let whole = pb::WatchResponse {
                header,
                watch_id,
                events: events.iter().cloned().map(convert::event).collect(),
                ..Default::default()
            };
            return fragments(whole, max_bytes).into_iter().map(WatchFrame::Message).collect();
        }
    };
    vec![WatchFrame::Message(message)]
}

/// Splits a response as etcd does: each fragment holds as many events as fit under `max_bytes`
/// (at least one), and all but the last are marked `fragment`.
fn fragments(whole: pb::WatchResponse, max_bytes: usize) -> Vec<pb::WatchResponse> {
    let mut out = Vec::new();
    let mut current = pb::WatchResponse { events: Vec::new(), fragment: true, ..whole.clone() };
    for event in whole.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= max_bytes {
            let overflow = current.events.pop();
            let next = pb::WatchResponse { events: overflow.into_iter().collect(), ..current.clone() };
            out.push(std::mem::replace(&mut current, next));
        }
    }
    current.fragment = false;
    out.push(current);
    out
}

impl WatchService {
    /// Opens a Watch stream: the hub stream, its receive task, and the response stream.
    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        metrics::counter!("keel_grpc_requests_total", "method" => "Watch", "code" => "OK").increment(1);
        // Credentials are read once, when the stream opens; each create is checked against the
        // auth state at that moment (etcd does the same).
        let caller = self.api.caller(&request);
        let inbound = request.into_inner();
        let hub = self.api.member.core().hub().clone();
        let (stream, rx) = hub.open_stream();
        let receiver = tokio::spawn(receive(self.api.clone(), hub.clone(), stream, inbound, caller));
        let guard = StreamGuard { hub, stream, receiver };
        let api = self.api.clone();
        let max_bytes = api.member.config().max_request_bytes;
        let shutting_down = api.shutting_down();
        let output = ReceiverStream::new(rx)
            .flat_map(move |message| futures::stream::iter(responses(&api, message, max_bytes).into_iter().map(Ok)))
            .take_until(shutting_down);
        Ok(Response::new(Box::pin(Guarded { inner: Box::pin(output), _guard: guard })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::mvccpb;

    fn domain_event(key: &str, revision: i64, prev: bool) -> crate::mvcc::Event {
        let kv = |mod_revision: i64| crate::mvcc::KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: 2,
            mod_revision,
            version: mod_revision - 1,
            value: vec![b'v'; 300],
            lease: 7,
        };
        crate::mvcc::Event {
            kind: crate::mvcc::EventKind::Put,
            kv: kv(revision),
            prev_kv: prev.then(|| kv(revision - 1)),
        }
    }

    #[test]
    fn shared_encoding_matches_the_message_encoding() {
        let header = Some(pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 9, raft_term: 3 });
        let events = vec![domain_event("a", 8, true), domain_event("b", 9, false)];
        let batch = EventBatch::new(events.clone());
        for watch_id in [0, 5, -1] {
            let whole = pb::WatchResponse {
                header,
                watch_id,
                events: events.iter().cloned().map(convert::event).collect(),
                ..Default::default()
            };
            let mut shared = Vec::new();
            let frame = WatchFrame::Events { header, watch_id, batch: batch.clone() };
            frame.encode(&mut shared);
            assert_eq!(shared, whole.encode_to_vec(), "watch id {watch_id}");
            assert_eq!(frame.encoded_len(), whole.encoded_len());
            assert_eq!(pb::WatchResponse::decode(shared.as_slice()).unwrap(), whole);
        }
    }

    #[test]
    fn fragments_cover_every_event_in_order_and_only_the_last_is_final() {
        let events: Vec<mvccpb::Event> = (0..10)
            .map(|i| mvccpb::Event {
                kv: Some(mvccpb::KeyValue {
                    key: format!("k{i}").into_bytes(),
                    value: vec![b'x'; 100],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let whole = pb::WatchResponse { watch_id: 7, events: events.clone(), ..Default::default() };
        let parts = fragments(whole, 350);
        assert!(parts.len() > 1);
        let rejoined: Vec<_> = parts.iter().flat_map(|p| p.events.clone()).collect();
        assert_eq!(rejoined, events);
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.fragment, i + 1 < parts.len());
            assert_eq!(part.watch_id, 7);
            assert!(!part.events.is_empty());
        }
    }
}
