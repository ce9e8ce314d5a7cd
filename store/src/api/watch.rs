//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! The receive side turns create/cancel/progress requests into hub calls and ticks progress
//! notifications; the send side converts the hub's stream messages into `WatchResponse`s, splitting
//! large event batches into fragments for watchers that accept them. When the client goes away the
//! response stream is dropped, which closes the hub stream and stops the receive task. As in etcd,
//! a client that only half-closes its side keeps receiving events.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use keel_proto::etcdserverpb as pb;
use prost::Message;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, convert, to_status};
use crate::auth::Access;
use crate::error::StoreError;
use crate::watch::{StreamId, WatchHub, WatchMessage, WatchSpec};

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

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

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
fn responses(api: &Api, message: WatchMessage, max_bytes: usize) -> Vec<pb::WatchResponse> {
    tracing::trace!(?message, "sending to watch stream");
    match message {
        WatchMessage::Created { watch_id, revision } => {
            vec![pb::WatchResponse { header: api.header(revision), watch_id, created: true, ..Default::default() }]
        }
        WatchMessage::CreateFailed { revision, reason } => vec![pb::WatchResponse {
            header: api.header(revision),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        }],
        WatchMessage::Canceled { watch_id, revision, compact_revision, reason } => vec![pb::WatchResponse {
            header: api.header(revision),
            watch_id,
            canceled: true,
            compact_revision,
            cancel_reason: reason,
            ..Default::default()
        }],
        WatchMessage::Progress { watch_id, revision } => {
            vec![pb::WatchResponse { header: api.header(revision), watch_id, ..Default::default() }]
        }
        WatchMessage::Events { watch_id, revision, events, fragment } => {
            let whole = pb::WatchResponse {
                header: api.header(revision),
                watch_id,
                events: events.into_iter().map(convert::event).collect(),
                ..Default::default()
            };
            if !fragment || whole.events.len() < 2 || whole.encoded_len() < max_bytes {
                vec![whole]
            } else {
                fragments(whole, max_bytes)
            }
        }
    }
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

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
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
