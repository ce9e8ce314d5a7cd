//! The syncer: catches lagging watchers up from stored history, then hands them to live publishing.
//!
//! One task per hub. Each round it takes a bounded set of unsynced watchers, reads each one's next
//! batch of revisions from storage without holding the hub lock, and then, under the lock, delivers
//! the batch only if the watcher has not changed meanwhile. A watcher becomes synced exactly when it
//! has delivered every revision up to the hub's published revision.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{EventBatch, State, StreamId, Sync, WatchHub, WatchMessage};
use crate::mvcc::MvccError;

/// How often the syncer looks for work even when nobody woke it (retries after full channels).
const IDLE_INTERVAL: Duration = Duration::from_millis(100);

/// Stops the syncer when dropped.
#[derive(Debug)]
pub struct SyncerHandle {
    task: JoinHandle<()>,
}

impl Drop for SyncerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Job {
    stream: StreamId,
    watch_id: i64,
    next: i64,
}

enum Outcome {
    /// Events read (possibly none) up to `resume - 1`.
    Read { events: Vec<crate::mvcc::Event>, resume: i64 },
    /// History at `next` was compacted away.
    Compacted(i64),
}

impl WatchHub {
    /// Starts the syncer task on the current Tokio runtime.
    pub fn start_syncer(self: &Arc<Self>) -> SyncerHandle {
        let hub = Arc::downgrade(self);
        SyncerHandle { task: tokio::spawn(run(hub)) }
    }

    /// Runs one catch-up round; returns true when some watcher advanced (so another round may too).
    pub fn sync_round(&self) -> bool {
        let (published, jobs) = {
            let state = self.lock();
            let jobs: Vec<Job> = state
                .watchers
                .iter()
                .filter_map(|(&(stream, watch_id), w)| match w.sync {
                    Sync::Unsynced { next } => Some(Job { stream, watch_id, next }),
                    _ => None,
                })
                .take(self.config.sync_watchers_per_round)
                .collect();
            (state.published, jobs)
        };
        let mut progressed = false;
        for job in jobs {
            let outcome = match self.mvcc.read_events(job.next, published, self.config.sync_batch_events) {
                Ok((events, resume)) => Outcome::Read { events, resume },
                Err(MvccError::Compacted { compact_revision }) => Outcome::Compacted(compact_revision),
                Err(err) => {
                    tracing::error!(%err, "reading watch history failed; will retry");
                    continue;
                }
            };
            progressed |= self.deliver(job, published, outcome);
        }
        let mut state = self.lock();
        let waiting: Vec<StreamId> = state.progress_waiting.iter().copied().collect();
        for stream in waiting {
            self.answer_progress(&mut state, stream);
        }
        progressed
    }

    /// Delivers one watcher's batch; returns true when the watcher advanced.
    fn deliver(&self, job: Job, read_up_to: i64, outcome: Outcome) -> bool {
        // Filtering and previous values need the watcher's spec; read it, then re-validate below.
        let (events, resume) = match outcome {
            Outcome::Compacted(compact_revision) => return self.cancel_compacted(&job, compact_revision),
            Outcome::Read { events, resume } => (events, resume),
        };
        let (matched, prev_kv, fragment) = {
            let state = self.lock();
            let Some(w) = state.watchers.get(&(job.stream, job.watch_id)) else { return false };
            let matched: Vec<_> = events.into_iter().filter(|e| w.wants(e)).collect();
            (matched, w.prev_kv, w.fragment)
        };
        let matched = self.with_prev_values(matched, prev_kv);

        let mut state = self.lock();
        let State { streams, watchers, published, .. } = &mut *state;
        let Some(w) = watchers.get_mut(&(job.stream, job.watch_id)) else { return false };
        if w.sync != (Sync::Unsynced { next: job.next }) {
            return false;
        }
        let Some(s) = streams.get(&job.stream) else { return false };
        if !matched.is_empty() {
            let events = EventBatch::new(matched);
            let msg = WatchMessage::Events { watch_id: job.watch_id, revision: read_up_to, events, fragment };
            if s.tx.try_send(msg).is_err() {
                // Full (retry next round) or closed (the stream is being removed).
                return false;
            }
            w.sent_since_tick = true;
        }
        w.sync = if resume == *published + 1 { Sync::Synced } else { Sync::Unsynced { next: resume } };
        true
    }

    fn cancel_compacted(&self, job: &Job, compact_revision: i64) -> bool {
        let mut state = self.lock();
        let published = state.published;
        let Some(w) = state.watchers.get(&(job.stream, job.watch_id)) else { return false };
        if w.sync != (Sync::Unsynced { next: job.next }) {
            return false;
        }
        let Some(s) = state.streams.get(&job.stream) else { return false };
        let msg = WatchMessage::Canceled {
            watch_id: job.watch_id,
            revision: published,
            compact_revision,
            reason: format!("etcdserver: {}", MvccError::Compacted { compact_revision }),
        };
        match s.tx.try_send(msg) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                if let Some(w) = state.watchers.remove(&(job.stream, job.watch_id)) {
                    self.forget(&w);
                }
                if let Some(s) = state.streams.get_mut(&job.stream) {
                    s.watch_ids.remove(&job.watch_id);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
        }
    }
}

async fn run(weak: Weak<WatchHub>) {
    loop {
        let Some(hub) = weak.upgrade() else { return };
        // Storage reads block; keep them off the async workers.
        let worker = hub.clone();
        let progressed = tokio::task::spawn_blocking(move || worker.sync_round()).await.unwrap_or(false);
        if progressed {
            tokio::task::yield_now().await;
        } else {
            // Nothing moved: wait for new work, or retry later (a full channel frees up silently).
            let _ = tokio::time::timeout(IDLE_INTERVAL, hub.sync_needed.notified()).await;
        }
    }
}
