//! The watch workload: writers put and delete a small set of keys while watchers follow
//! overlapping key ranges with every combination of options, reconnecting to another member
//! whenever a stream ends and resuming from the revision after the last one they received. After
//! the cluster recovers, one reference watch reads every change from revision 1; the checker holds
//! every watcher (and every acknowledged write) against it.
//!
//! Invariants: every watch stream is one operation in the history, invoked when its create
//! request is sent and completed `ok` with every response received (however the stream ended) or
//! `fail` when the server never confirmed the watch (a watch has no effect to be unsure about); a watcher's next stream starts at the
//! revision after the last event or progress notification it received, so together its streams
//! must cover the changes without gap or repeat; every stream lives at most `SESSION_MAX`, every
//! wait is bounded by the operation timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::{Outcome, WorkerContext};
use crate::history::{EventType, Op, Process, Recorder, WatchEvent, WatchResponse, WatchSpec};
use crate::rng::Rng;

/// Number of keys written and watched.
pub const KEYS: u64 = 16;
/// Longest a watch stream is kept before the watcher hangs up and resumes elsewhere.
const SESSION_MAX: Duration = Duration::from_secs(6);
/// How often a watcher that asked for progress notifications requests one.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Shared by every writer: the value counter.
#[derive(Debug)]
pub struct Watch {
    values: AtomicU64,
}

impl Watch {
    /// A fresh workload.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { values: AtomicU64::new(1) })
    }

    /// The etcd key of `key`.
    pub fn etcd_key(key: u64) -> Vec<u8> {
        format!("jepsen/watch/{key:08}").into_bytes()
    }

    /// True when worker `worker` watches rather than writes: every third worker.
    pub fn is_watcher(worker: u64) -> bool {
        worker % 3 == 2
    }

    /// A writer's next operation: a put of a fresh value (four in five) or a delete.
    pub fn next_op(&self, rng: &mut Rng) -> Op {
        let key = rng.below(KEYS);
        if rng.chance(0.8) {
            Op::Put { key, value: self.values.fetch_add(1, Ordering::Relaxed), revision: None }
        } else {
            Op::Delete { key, revision: None, deleted: None }
        }
    }
}

fn parse_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key).ok()?.strip_prefix("jepsen/watch/")?.parse().ok()
}

fn parse_value(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Runs one writer operation against `channel`.
pub async fn invoke(ctx: &WorkerContext, channel: Channel, op: &Op) -> Outcome {
    let mut kv = pb::kv_client::KvClient::new(channel);
    match op {
        Op::Put { key, value, .. } => {
            let request = pb::PutRequest {
                key: Watch::etcd_key(*key),
                value: value.to_string().into_bytes(),
                ..Default::default()
            };
            match ctx.timed(kv.put(request)).await {
                Ok(resp) => Outcome::Ok(Op::Put {
                    key: *key,
                    value: *value,
                    revision: resp.into_inner().header.map(|h| h.revision),
                }),
                Err(err) => err.outcome(),
            }
        }
        Op::Delete { key, .. } => {
            let request = pb::DeleteRangeRequest { key: Watch::etcd_key(*key), ..Default::default() };
            match ctx.timed(kv.delete_range(request)).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    Outcome::Ok(Op::Delete {
                        key: *key,
                        revision: resp.header.map(|h| h.revision),
                        deleted: Some(resp.deleted > 0),
                    })
                }
                Err(err) => err.outcome(),
            }
        }
        other => Outcome::Fail(format!("not a watch-workload write: {other:?}")),
    }
}

/// A random watch over a random range with random options, starting at `start_revision`.
fn random_spec(rng: &mut Rng, start_revision: i64) -> WatchSpec {
    let from_key = rng.below(KEYS);
    let to_key = from_key + 1 + rng.below(KEYS - from_key);
    WatchSpec {
        from_key,
        to_key,
        start_revision,
        prev_kv: rng.chance(0.5),
        no_put: rng.chance(0.1),
        no_delete: rng.chance(0.1),
        progress_notify: rng.chance(0.5),
        reference: false,
    }
}

/// Runs a watcher until `stop`: streams one after another, each on the next member, each resuming
/// where the previous left off.
pub async fn run_watcher(
    ctx: Arc<WorkerContext>,
    members: Vec<(String, Channel)>,
    first_member: usize,
    process: u64,
    recorder: Arc<Recorder>,
    mut rng: Rng,
    stop: watch::Receiver<bool>,
) -> u64 {
    let mut member = first_member;
    let mut streams = 0;
    // The first stream starts from the next revision, or (one time in four) replays history.
    let mut next_start = if rng.chance(0.25) { 1 } else { 0 };
    let mut spec = random_spec(&mut rng, next_start);
    while !*stop.borrow() {
        let (name, channel) = &members[member % members.len()];
        spec.start_revision = next_start;
        let session = Duration::from_millis(1000 + rng.below(SESSION_MAX.as_millis() as u64 - 1000));
        let last = stream(&ctx, channel.clone(), &spec, session, &recorder, process, name, &stop).await;
        streams += 1;
        if let Some(last) = last {
            next_start = last + 1;
        }
        member += 1;
        // Now and then a watcher changes what it watches; it then starts from the next revision.
        if rng.chance(0.2) {
            spec = random_spec(&mut rng, 0);
            next_start = 0;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
    }
    streams
}

fn create_request(spec: &WatchSpec) -> pb::WatchRequest {
    let mut filters = Vec::new();
    if spec.no_put {
        filters.push(pb::watch_create_request::FilterType::Noput as i32);
    }
    if spec.no_delete {
        filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
    }
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: Watch::etcd_key(spec.from_key),
            range_end: Watch::etcd_key(spec.to_key),
            start_revision: spec.start_revision,
            progress_notify: spec.progress_notify,
            filters,
            prev_kv: spec.prev_kv,
            ..Default::default()
        })),
    }
}

fn convert_event(event: &mvccpb::Event) -> Option<WatchEvent> {
    let kv = event.kv.as_ref()?;
    let delete = event.r#type == mvccpb::event::EventType::Delete as i32;
    Some(WatchEvent {
        delete,
        key: parse_key(&kv.key)?,
        value: if delete { None } else { parse_value(&kv.value) },
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        prev_value: event.prev_kv.as_ref().and_then(|p| parse_value(&p.value)),
        prev_mod_revision: event.prev_kv.as_ref().map(|p| p.mod_revision),
    })
}

/// One watch stream for at most `session`. A watch the server never confirmed is recorded as
/// `fail`: a watch changes nothing, and it certainly observed nothing, so no watch outcome is
/// ambiguous and a watcher keeps its process number. Returns the last revision known delivered
/// (of an event or a progress notification).
#[allow(clippy::too_many_arguments)]
async fn stream(
    ctx: &WorkerContext,
    channel: Channel,
    spec: &WatchSpec,
    session: Duration,
    recorder: &Recorder,
    process: u64,
    node: &str,
    stop: &watch::Receiver<bool>,
) -> Option<i64> {
    let op = Op::Watch { spec: spec.clone(), responses: None };
    let node = Some(node.to_string());
    recorder.record(Process::Client(process), EventType::Invoke, op.clone(), node.clone(), None);
    let (requests, request_stream) = mpsc::channel(4);
    let _ = requests.try_send(create_request(spec));
    let mut client = pb::watch_client::WatchClient::new(channel);
    let opened = ctx.timed(client.watch(tokio_stream::wrappers::ReceiverStream::new(request_stream))).await;
    let mut inbound = match opened {
        Ok(resp) => resp.into_inner(),
        Err(err) => {
            recorder.record(Process::Client(process), EventType::Fail, op, node, Some(err.to_string()));
            return None;
        }
    };
    let created = tokio::time::timeout(ctx.op_timeout, inbound.message()).await;
    match created {
        Ok(Ok(Some(resp))) if resp.created && !resp.canceled => {}
        other => {
            let error = match other {
                Ok(Ok(Some(resp))) => format!("not created: {}", resp.cancel_reason),
                Ok(Ok(None)) => "the stream ended before the watch was created".into(),
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Err(_) => "timed out waiting for the watch to be created".into(),
            };
            recorder.record(Process::Client(process), EventType::Fail, op, node, Some(error));
            return None;
        }
    }

    let mut responses = Vec::new();
    let mut last = None;
    let mut error = None;
    let deadline = tokio::time::Instant::now() + session;
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = progress.tick(), if spec.progress_notify => {
                let request = pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
                };
                let _ = requests.try_send(request);
            }
            message = inbound.message() => match message {
                Ok(Some(resp)) => {
                    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
                    let events: Vec<WatchEvent> = resp.events.iter().filter_map(convert_event).collect();
                    last = Some(match events.last() {
                        Some(event) => event.mod_revision,
                        None if !resp.canceled => revision,
                        None => last.unwrap_or(0),
                    });
                    let canceled = resp.canceled;
                    responses.push(WatchResponse { revision, events, canceled, compact_revision: resp.compact_revision });
                    if canceled {
                        error = Some(format!("canceled: {}", resp.cancel_reason));
                        break;
                    }
                }
                Ok(None) => {
                    error = Some("the stream ended".into());
                    break;
                }
                Err(status) => {
                    error = Some(format!("{:?}: {}", status.code(), status.message()));
                    break;
                }
            },
        }
    }
    let done = Op::Watch { spec: spec.clone(), responses: Some(responses) };
    recorder.record(Process::Client(process), EventType::Ok, done, node, error);
    last.filter(|l| *l > 0)
}

/// The reference watch: after recovery, every key from revision 1 until the revision current when
/// it started, through member `channel`. Recorded like any watch, with `reference` set.
pub async fn reference(ctx: &WorkerContext, channel: Channel, recorder: &Recorder, process: u64) -> Result<(), String> {
    let mut kv = pb::kv_client::KvClient::new(channel.clone());
    let current = ctx
        .timed(kv.range(pb::RangeRequest { key: Watch::etcd_key(0), ..Default::default() }))
        .await
        .map_err(|err| format!("reading the current revision: {err}"))?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let spec = WatchSpec {
        from_key: 0,
        to_key: KEYS,
        start_revision: 1,
        prev_kv: true,
        no_put: false,
        no_delete: false,
        progress_notify: true,
        reference: true,
    };
    let op = Op::Watch { spec: spec.clone(), responses: None };
    recorder.record(Process::Client(process), EventType::Invoke, op.clone(), None, None);
    let (requests, request_stream) = mpsc::channel(4);
    let _ = requests.try_send(create_request(&spec));
    let mut client = pb::watch_client::WatchClient::new(channel);
    let mut inbound = match ctx.timed(client.watch(tokio_stream::wrappers::ReceiverStream::new(request_stream))).await {
        Ok(resp) => resp.into_inner(),
        Err(err) => {
            recorder.record(Process::Client(process), EventType::Info, op, None, Some(err.to_string()));
            return Err(format!("opening the reference watch: {err}"));
        }
    };
    let mut responses = Vec::new();
    let mut reached = 0;
    // Asks for progress so that the end is known even when the last change is not watched.
    let _ = requests.try_send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
    });
    while reached < current {
        let message = tokio::time::timeout(ctx.op_timeout * 4, inbound.message()).await;
        let resp = match message {
            Ok(Ok(Some(resp))) => resp,
            other => {
                let error = format!("the reference watch ended at revision {reached} of {current}: {other:?}");
                recorder.record(
                    Process::Client(process),
                    EventType::Info,
                    Op::Watch { spec, responses: Some(responses) },
                    None,
                    Some(error.clone()),
                );
                return Err(error);
            }
        };
        if resp.created {
            continue;
        }
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let events: Vec<WatchEvent> = resp.events.iter().filter_map(convert_event).collect();
        reached = reached.max(events.last().map_or(revision, |e| e.mod_revision));
        responses.push(WatchResponse {
            revision,
            events,
            canceled: resp.canceled,
            compact_revision: resp.compact_revision,
        });
        if resp.canceled {
            break;
        }
        if reached < current {
            let _ = requests.try_send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
            });
        }
    }
    recorder.record(
        Process::Client(process),
        EventType::Ok,
        Op::Watch { spec, responses: Some(responses) },
        None,
        None,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_round_trip_and_ranges_stay_inside_the_key_set() {
        assert_eq!(parse_key(&Watch::etcd_key(7)), Some(7));
        assert_eq!(parse_value(b"42"), Some(42));
        let mut rng = Rng::new(5);
        for _ in 0..1000 {
            let spec = random_spec(&mut rng, 0);
            assert!(spec.from_key < spec.to_key && spec.to_key <= KEYS, "{spec:?}");
        }
    }
}
