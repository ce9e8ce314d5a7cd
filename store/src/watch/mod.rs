//! The watch hub: delivers committed changes to watchers, multiplexed over streams.
//!
//! Each client stream has one bounded channel of [`WatchMessage`]s. A watcher is in one of three
//! states:
//! - `Pending`: just created; its `Created` message is being queued; it receives nothing yet.
//! - `Unsynced { next }`: behind. The syncer task replays history from storage (revisions `next..`)
//!   in bounded batches until it reaches the published revision.
//! - `Synced`: [`WatchHub::publish`] hands it each new revision's events directly.
//!
//! Publishing never blocks: when a stream's channel is full, the watcher falls back to `Unsynced` at
//! the revision it missed and catches up from storage later. A slow consumer therefore costs its own
//! stream at most one channel of messages, never blocks the apply path or other streams, and never
//! grows memory without bound.
//!
//! Invariants (etcd's watch guarantees):
//! - per watcher, events arrive in revision order, with no gap and no duplicate: a watcher moves from
//!   `Unsynced` to `Synced` only under the hub lock, when it has delivered exactly up to `published`,
//!   and `publish` takes the same lock;
//! - one revision's events for a watcher travel in one message (never split, except by the API
//!   layer's fragmentation, which the watcher asked for);
//! - a progress message at revision `R` is queued only for synced watchers, behind every event ≤ `R`;
//! - `Created` is queued before any event of its watcher, `Canceled` after the last one.
//!
//! Concurrency: `state` is one mutex held for short sections; storage reads happen outside it (the
//! syncer re-validates after reading). Lock order: the MVCC maintenance lock (if any) before `state`.
//! Who closes channels: a stream's sender lives in the hub until `close_stream`; the API layer owns
//! the receiver and closes the stream by calling `close_stream` when the client goes away.

mod syncer;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{Notify, mpsc};

use crate::mvcc::{Event, EventKind, Mvcc, RangeEnd};

pub use syncer::SyncerHandle;

/// A stream identifier, unique within a hub.
pub type StreamId = u64;

/// Tuning bounds of the hub.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Messages buffered per stream before its watchers fall back to catching up from storage.
    pub stream_buffer: usize,
    /// Most watchers on one stream.
    pub max_watchers_per_stream: usize,
    /// Events read from storage per catch-up step of one watcher (rounded up to a whole revision).
    pub sync_batch_events: usize,
    /// Watchers caught up per syncer round.
    pub sync_watchers_per_round: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            stream_buffer: 128,
            max_watchers_per_stream: 100_000,
            sync_batch_events: 1_000,
            sync_watchers_per_round: 512,
        }
    }
}

/// A request to create a watcher (etcd `WatchCreateRequest`, decoded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// Start key (an empty key means `"\0"`, the smallest key).
    pub key: Vec<u8>,
    /// etcd-style range end.
    pub range_end: Vec<u8>,
    /// First revision to report; 0 for "after the current revision".
    pub start_revision: i64,
    /// Send periodic progress notifications.
    pub progress_notify: bool,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
    /// Attach the previous version to events.
    pub prev_kv: bool,
    /// Requested id; 0 lets the hub choose.
    pub watch_id: i64,
    /// The client accepts responses split into fragments.
    pub fragment: bool,
}

/// Events for watchers, shared by every watcher that receives exactly these events: `publish` builds
/// one batch per revision for all the watchers that want every event of it (one for those that asked
/// for previous values, one for those that did not), so a revision reaching a thousand watchers is
/// copied once, not a thousand times.
///
/// Invariant: the events never change once the batch is built, so the API layer may encode them once
/// and reuse the encoding for every watcher ([`EventBatch::wire_form`]).
#[derive(Debug)]
pub struct EventBatch {
    events: Vec<Event>,
    /// The API layer's encoding of `events`, made by the first stream that sends the batch. Opaque to
    /// the hub.
    wire: OnceLock<Vec<u8>>,
}

impl EventBatch {
    /// A batch of `events`.
    pub fn new(events: Vec<Event>) -> Arc<Self> {
        Arc::new(Self { events, wire: OnceLock::new() })
    }

    /// The events' encoding: made by `encode` the first time it is asked for, then shared by every
    /// caller (concurrent first callers wait for one encoding).
    pub fn wire_form(&self, encode: impl FnOnce(&[Event]) -> Vec<u8>) -> &[u8] {
        self.wire.get_or_init(|| encode(&self.events))
    }
}

/// The events, in revision order.
impl std::ops::Deref for EventBatch {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.events
    }
}

impl PartialEq for EventBatch {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events
    }
}

impl Eq for EventBatch {}

/// A message for one stream, in delivery order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// A watcher was created.
    Created {
        /// Its id.
        watch_id: i64,
        /// The published revision at creation.
        revision: i64,
    },
    /// A create request was refused (etcd answers `created` and `canceled` with id -1).
    CreateFailed {
        /// The published revision.
        revision: i64,
        /// Why.
        reason: String,
    },
    /// Events for one watcher.
    Events {
        /// The watcher.
        watch_id: i64,
        /// A revision at or above every event's.
        revision: i64,
        /// The events, whole revisions only; shared with other watchers receiving the same ones.
        events: Arc<EventBatch>,
        /// The watcher accepts fragmented responses.
        fragment: bool,
    },
    /// A watcher ended (client cancel, or its history was compacted away).
    Canceled {
        /// The watcher.
        watch_id: i64,
        /// The published revision.
        revision: i64,
        /// Non-zero when canceled because history at its position was compacted.
        compact_revision: i64,
        /// Why, when not a client cancel.
        reason: String,
    },
    /// Every event up to `revision` has been delivered (`watch_id` -1: for the whole stream).
    Progress {
        /// The watcher, or -1.
        watch_id: i64,
        /// The revision.
        revision: i64,
    },
}

/// Why a watcher could not be created. `Display` texts are etcd's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `range_end` is not after `key`.
    #[error("mvcc: watcher range is empty")]
    EmptyRange,
    /// The requested id is in use on this stream.
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateId,
    /// The stream reached its watcher limit.
    #[error("mvcc: too many watchers on one stream")]
    TooManyWatchers,
    /// A negative start revision (etcd answers with its gRPC-level compaction error text).
    #[error("etcdserver: mvcc: required revision has been compacted")]
    NegativeStart,
    /// The stream is closed.
    #[error("watch stream closed")]
    StreamClosed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    Pending,
    Unsynced { next: i64 },
    Synced,
}

#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    end: RangeEnd,
    /// Events below this revision are never delivered (a start revision in the future).
    min_revision: i64,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Events were queued since the last progress tick (suppresses the next notification).
    sent_since_tick: bool,
    sync: Sync,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        event.kv.mod_revision >= self.min_revision
            && self.end.contains(&self.key, &event.kv.key)
            && match event.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            }
    }
}

#[derive(Debug)]
struct Stream {
    tx: mpsc::Sender<WatchMessage>,
    watch_ids: BTreeSet<i64>,
    next_id: i64,
    /// A progress request waits for every watcher of the stream to be synced.
    pending_progress: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The latest revision handed to `publish`; storage holds every revision up to it.
    published: i64,
    next_stream: StreamId,
    streams: HashMap<StreamId, Stream>,
    watchers: HashMap<(StreamId, i64), Watcher>,
    /// Streams with a deferred progress request.
    progress_waiting: BTreeSet<StreamId>,
}

/// Delivers committed changes to watchers.
pub struct WatchHub {
    mvcc: Arc<Mvcc>,
    config: WatchConfig,
    state: Mutex<State>,
    /// Watchers that asked for previous values; the apply path reads them only when non-zero.
    prev_kv_watchers: AtomicUsize,
    /// Wakes the syncer when a watcher needs catching up.
    sync_needed: Notify,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub").field("config", &self.config).finish_non_exhaustive()
    }
}

impl WatchHub {
    /// A hub whose published revision starts at the store's current revision.
    pub fn new(mvcc: Arc<Mvcc>, config: WatchConfig) -> Arc<Self> {
        let published = mvcc.current_revision();
        Arc::new(Self {
            mvcc,
            config,
            state: Mutex::new(State { published, ..State::default() }),
            prev_kv_watchers: AtomicUsize::new(0),
            sync_needed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True when some watcher wants previous values with its events.
    pub fn wants_prev_values(&self) -> bool {
        self.prev_kv_watchers.load(Ordering::Relaxed) > 0
    }

    /// The latest published revision.
    pub fn published_revision(&self) -> i64 {
        self.lock().published
    }

    /// Number of watchers.
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    /// Opens a stream; the caller owns the receiver and must call [`WatchHub::close_stream`].
    pub fn open_stream(&self) -> (StreamId, mpsc::Receiver<WatchMessage>) {
        let (tx, rx) = mpsc::channel(self.config.stream_buffer.max(1));
        let mut state = self.lock();
        state.next_stream += 1;
        let id = state.next_stream;
        state.streams.insert(id, Stream { tx, watch_ids: BTreeSet::new(), next_id: 0, pending_progress: false });
        (id, rx)
    }

    /// Removes a stream and all its watchers.
    pub fn close_stream(&self, stream: StreamId) {
        let mut state = self.lock();
        state.progress_waiting.remove(&stream);
        if let Some(s) = state.streams.remove(&stream) {
            for id in s.watch_ids {
                if let Some(w) = state.watchers.remove(&(stream, id)) {
                    self.forget(&w);
                }
            }
        }
    }

    fn forget(&self, watcher: &Watcher) {
        if watcher.prev_kv {
            self.prev_kv_watchers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Queues a `CreateFailed` for a create request refused before reaching the hub (permission
    /// denied, say).
    pub async fn refuse(&self, stream: StreamId, reason: String) -> Result<(), WatchError> {
        let tx = self.lock().streams.get(&stream).map(|s| s.tx.clone()).ok_or(WatchError::StreamClosed)?;
        let revision = self.published_revision();
        tx.send(WatchMessage::CreateFailed { revision, reason }).await.map_err(|_| WatchError::StreamClosed)
    }

    /// Creates a watcher and queues its `Created` (or `CreateFailed`) message. Waits while the
    /// stream's channel is full.
    pub async fn create(&self, stream: StreamId, spec: WatchSpec) -> Result<i64, WatchError> {
        let registered = self.register(stream, spec);
        let tx = self.lock().streams.get(&stream).map(|s| s.tx.clone()).ok_or(WatchError::StreamClosed)?;
        let (id, revision) = match registered {
            Ok(ok) => ok,
            Err(err) => {
                let revision = self.published_revision();
                let reason = err.to_string();
                tx.send(WatchMessage::CreateFailed { revision, reason }).await.map_err(|_| WatchError::StreamClosed)?;
                return Err(err);
            }
        };
        tracing::trace!(stream, watch_id = id, revision, "watcher created");
        tx.send(WatchMessage::Created { watch_id: id, revision }).await.map_err(|_| WatchError::StreamClosed)?;
        let mut state = self.lock();
        let published = state.published;
        if let Some(w) = state.watchers.get_mut(&(stream, id))
            && w.sync == Sync::Pending
        {
            // Pending watchers start at `published + 1` or earlier; storage holds the rest.
            let next = w.min_revision.min(published + 1);
            w.sync = if next > published { Sync::Synced } else { Sync::Unsynced { next } };
            if w.sync != Sync::Synced {
                self.sync_needed.notify_one();
            }
        }
        Ok(id)
    }

    fn register(&self, stream: StreamId, spec: WatchSpec) -> Result<(i64, i64), WatchError> {
        if spec.start_revision < 0 {
            return Err(WatchError::NegativeStart);
        }
        let key = if spec.key.is_empty() { vec![0] } else { spec.key };
        let end = RangeEnd::from_etcd(&spec.range_end);
        if let RangeEnd::Before(end) = &end
            && end.as_slice() <= key.as_slice()
        {
            return Err(WatchError::EmptyRange);
        }
        let mut state = self.lock();
        let published = state.published;
        let s = state.streams.get_mut(&stream).ok_or(WatchError::StreamClosed)?;
        if s.watch_ids.len() >= self.config.max_watchers_per_stream {
            return Err(WatchError::TooManyWatchers);
        }
        let id = if spec.watch_id == 0 {
            while s.watch_ids.contains(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        } else if s.watch_ids.contains(&spec.watch_id) {
            return Err(WatchError::DuplicateId);
        } else {
            spec.watch_id
        };
        s.watch_ids.insert(id);
        // Start 0 means "after now"; a start in the future is delivered from there on.
        let min_revision = if spec.start_revision == 0 { published + 1 } else { spec.start_revision };
        if spec.prev_kv {
            self.prev_kv_watchers.fetch_add(1, Ordering::Relaxed);
        }
        state.watchers.insert(
            (stream, id),
            Watcher {
                key,
                end,
                min_revision,
                no_put: spec.no_put,
                no_delete: spec.no_delete,
                prev_kv: spec.prev_kv,
                fragment: spec.fragment,
                progress_notify: spec.progress_notify,
                sent_since_tick: false,
                sync: Sync::Pending,
            },
        );
        Ok((id, published))
    }

    /// Cancels a watcher at the client's request; queues `Canceled` if it existed.
    pub async fn cancel(&self, stream: StreamId, watch_id: i64) -> Result<bool, WatchError> {
        let (tx, revision) = {
            let mut state = self.lock();
            let Some(w) = state.watchers.remove(&(stream, watch_id)) else {
                return Ok(false);
            };
            self.forget(&w);
            let published = state.published;
            let s = state.streams.get_mut(&stream).ok_or(WatchError::StreamClosed)?;
            s.watch_ids.remove(&watch_id);
            (s.tx.clone(), published)
        };
        tx.send(WatchMessage::Canceled { watch_id, revision, compact_revision: 0, reason: String::new() })
            .await
            .map_err(|_| WatchError::StreamClosed)?;
        Ok(true)
    }

    /// Handles a client progress request: answered at once when every watcher of the stream is
    /// synced, otherwise as soon as they are.
    pub fn request_progress(&self, stream: StreamId) {
        let mut state = self.lock();
        if let Some(s) = state.streams.get_mut(&stream) {
            s.pending_progress = true;
        }
        state.progress_waiting.insert(stream);
        self.answer_progress(&mut state, stream);
    }

    fn answer_progress(&self, state: &mut State, stream: StreamId) {
        let published = state.published;
        let Some(s) = state.streams.get(&stream) else {
            state.progress_waiting.remove(&stream);
            return;
        };
        if !s.pending_progress {
            return;
        }
        let all_synced =
            s.watch_ids.iter().all(|id| state.watchers.get(&(stream, *id)).is_some_and(|w| w.sync == Sync::Synced));
        if !all_synced {
            self.sync_needed.notify_one();
            return;
        }
        let msg = WatchMessage::Progress { watch_id: -1, revision: published };
        if s.tx.try_send(msg).is_ok() {
            if let Some(s) = state.streams.get_mut(&stream) {
                s.pending_progress = false;
            }
            state.progress_waiting.remove(&stream);
        }
    }

    /// Periodic progress for watchers that asked for it: each synced one that received no events
    /// since the previous tick gets a progress message.
    pub fn progress_tick(&self, stream: StreamId) {
        let mut state = self.lock();
        let published = state.published;
        let Some(tx) = state.streams.get(&stream).map(|s| s.tx.clone()) else { return };
        let ids: Vec<i64> =
            state.streams.get(&stream).map(|s| s.watch_ids.iter().copied().collect()).unwrap_or_default();
        for id in ids {
            let Some(w) = state.watchers.get_mut(&(stream, id)) else { continue };
            if !w.progress_notify {
                continue;
            }
            if w.sync == Sync::Synced && !w.sent_since_tick {
                let _ = tx.try_send(WatchMessage::Progress { watch_id: id, revision: published });
            }
            w.sent_since_tick = false;
        }
    }

    /// Delivers one committed revision's events to synced watchers. Called by the apply path after
    /// the revision is durable in storage, in revision order. Never blocks on a consumer.
    pub fn publish(&self, revision: i64, events: &[Event]) {
        let mut state = self.lock();
        if revision <= state.published {
            return;
        }
        state.published = revision;
        if events.is_empty() {
            return;
        }
        if revision % 13 == 0 && crate::planted::active(crate::planted::PlantedBug::SkipWatchEvent) {
            return;
        }
        let State { streams, watchers, .. } = &mut *state;
        tracing::trace!(revision, events = events.len(), watchers = watchers.len(), "publishing");
        let mut fell_behind = false;
        // The batches of every event, without and with previous values, built for the first watcher
        // that wants each and shared by the rest.
        let mut whole: [Option<Arc<EventBatch>>; 2] = [None, None];
        for ((stream, id), w) in watchers.iter_mut() {
            if w.sync != Sync::Synced {
                continue;
            }
            let Some(s) = streams.get(stream) else { continue };
            let wanted = events.iter().filter(|e| w.wants(e)).count();
            let batch = if wanted == 0 {
                continue;
            } else if wanted == events.len() {
                whole[usize::from(w.prev_kv)]
                    .get_or_insert_with(|| EventBatch::new(self.with_prev_values(events.to_vec(), w.prev_kv)))
                    .clone()
            } else {
                let matched = events.iter().filter(|e| w.wants(e)).cloned().collect();
                EventBatch::new(self.with_prev_values(matched, w.prev_kv))
            };
            let msg = WatchMessage::Events { watch_id: *id, revision, events: batch, fragment: w.fragment };
            match s.tx.try_send(msg) {
                Ok(()) => w.sent_since_tick = true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.sync = Sync::Unsynced { next: revision };
                    fell_behind = true;
                }
                // The stream is going away; `close_stream` will remove the watcher.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if fell_behind {
            self.sync_needed.notify_one();
        }
    }

    /// Fills or strips previous values according to what the watcher asked for.
    fn with_prev_values(&self, mut events: Vec<Event>, wanted: bool) -> Vec<Event> {
        for event in &mut events {
            if !wanted || event.is_create() {
                event.prev_kv = None;
            } else if event.prev_kv.is_none() {
                event.prev_kv = self.mvcc.prev_kv(&event.kv.key, event.kv.mod_revision).unwrap_or(None);
            }
        }
        events
    }

    /// After the store's data was replaced wholesale (snapshot install): every watcher catches up from
    /// storage again, from where it was.
    pub fn reset_after_install(&self) {
        let mut state = self.lock();
        let published = state.published;
        state.published = self.mvcc.current_revision();
        for w in state.watchers.values_mut() {
            if w.sync == Sync::Synced {
                w.sync = Sync::Unsynced { next: published + 1 };
            }
        }
        self.sync_needed.notify_one();
    }
}

#[cfg(test)]
mod tests;
