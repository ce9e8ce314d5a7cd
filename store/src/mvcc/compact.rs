//! Physical compaction: removing history that a logical compaction made unreadable.
//!
//! A compaction to `C` is first recorded through the Raft log (`prepare_compaction`), which makes reads
//! below `C` fail at once on every member. The history itself is removed here, on a background
//! thread, in bounded batches, so a large compaction never stalls the apply path. Progress is recorded
//! (`compact_done`) only when a pass completes; a pass interrupted by a crash simply runs again.
//!
//! What a pass at `C` removes, per key: every version below revision `C` other than the newest version
//! ≤ `C`, and that newest version too when it is a tombstone below `C`. Nothing at revision `C` itself
//! is removed, so a watch starting at `C` still sees every event of `C` (etcd once lost a delete that
//! way).
//!
//! After a completed pass the backend is asked to reclaim the deleted records' space
//! ([`Backend::reclaim_deleted`]), so unlike etcd's, a compaction alone shrinks the data on disk
//! (shortly after, on RocksDB's own threads); a defragmentation is needed only for what is left.

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use tokio::sync::watch;

use super::MvccError;
use super::encoding::{IndexEntry, RecordKind, index_seek_at, revision_key, split_index_key};
use crate::backend::{Backend, Cf, Durability, WriteBatch};
use crate::format;

/// Index entries removed per batch; bounds the memory and lock hold time of one step.
const ENTRIES_PER_BATCH: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    /// Newest requested compaction revision.
    target: i64,
    /// Revision up to which history has been removed.
    done: i64,
    /// Bumped when the data set is replaced, aborting a pass that inspected the old one.
    generation: u64,
    shutdown: bool,
}

/// Observes physical compaction progress.
#[derive(Clone, Debug)]
pub struct CompactionProgress {
    done: watch::Receiver<i64>,
}

impl CompactionProgress {
    /// Revision up to which history has been physically removed.
    pub fn done(&self) -> i64 {
        *self.done.borrow()
    }

    /// Waits until history up to `revision` is removed; returns false if the compactor stopped first.
    pub async fn wait_for(&mut self, revision: i64) -> bool {
        self.done.wait_for(|done| *done >= revision).await.is_ok()
    }
}

/// Owner of the background compaction thread. The thread holds only the backend and the
/// maintenance lock, never the store, so dropping the store always stops and joins it.
pub(crate) struct Compactor {
    /// Shared with the thread. The mutex guards `State`; the condvar wakes the thread when `target`
    /// moves or on shutdown. Never held while touching the backend.
    shared: Arc<(Mutex<State>, Condvar)>,
    done_tx: Arc<watch::Sender<i64>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Compactor {
    pub(crate) fn start(backend: Arc<dyn Backend>, maintenance: Arc<RwLock<()>>, done: i64) -> Self {
        let shared = Arc::new((Mutex::new(State { target: done, done, ..State::default() }), Condvar::new()));
        let (done_tx, _) = watch::channel(done);
        let done_tx = Arc::new(done_tx);
        let thread = {
            let shared = shared.clone();
            let done_tx = done_tx.clone();
            std::thread::Builder::new()
                .name("keel-compactor".into())
                .spawn(move || run(backend, maintenance, shared, done_tx))
                .ok()
        };
        if thread.is_none() {
            tracing::error!("could not start the compaction thread; history will not be removed");
        }
        Self { shared, done_tx, thread: Mutex::new(thread) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn schedule(&self, revision: i64) {
        let mut state = self.lock();
        if revision > state.target {
            state.target = revision;
            self.shared.1.notify_all();
        }
    }

    pub(crate) fn reset(&self, done: i64) {
        let mut state = self.lock();
        state.generation += 1;
        state.done = done;
        state.target = done;
        self.done_tx.send_replace(done);
        self.shared.1.notify_all();
    }

    pub(crate) fn progress(&self) -> CompactionProgress {
        CompactionProgress { done: self.done_tx.subscribe() }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.lock().shutdown = true;
        self.shared.1.notify_all();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            // The thread checks for shutdown between bounded batches, so this wait is short.
            let _ = handle.join();
        }
    }
}

fn run(
    backend: Arc<dyn Backend>,
    maintenance: Arc<RwLock<()>>,
    shared: Arc<(Mutex<State>, Condvar)>,
    done_tx: Arc<watch::Sender<i64>>,
) {
    let (lock, wake) = &*shared;
    loop {
        let (target, generation) = {
            let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !state.shutdown && state.target <= state.done {
                state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.shutdown {
                return;
            }
            (state.target, state.generation)
        };
        let still_current = || {
            let state = lock.lock().unwrap_or_else(|p| p.into_inner());
            !state.shutdown && state.generation == generation
        };
        match compact_to(&*backend, &maintenance, target, &still_current) {
            Ok(true) => {
                let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
                if state.generation == generation && target > state.done {
                    state.done = target;
                    done_tx.send_replace(target);
                }
            }
            Ok(false) => {}
            Err(err) => {
                tracing::error!(%err, target, "physical compaction failed; will retry on the next compaction");
                let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
                // Forget this target so the loop does not spin; the next compaction retries it.
                state.target = state.done;
            }
        }
    }
}

/// Removes history up to `target`. Returns false when aborted by `still_current`.
fn compact_to(
    backend: &dyn Backend,
    maintenance: &RwLock<()>,
    target: i64,
    still_current: &dyn Fn() -> bool,
) -> Result<bool, MvccError> {
    // Resume point between batches: the next index entry to look at, and the key whose newest
    // version ≤ target has been seen (its older versions are all removable).
    let mut resume: Option<Vec<u8>> = None;
    let mut kept_key: Option<Vec<u8>> = None;
    loop {
        let _shared = maintenance.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !still_current() {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        let mut removed = 0usize;
        let mut cursor = backend.cursor(Cf::Index);
        match &resume {
            None => cursor.seek_to_first(),
            Some(key) => cursor.seek(key),
        }
        let mut finished = true;
        while let Some((raw_key, raw_value)) = cursor.entry() {
            if removed >= ENTRIES_PER_BATCH {
                resume = Some(raw_key.to_vec());
                finished = false;
                break;
            }
            let (escaped, rev) = split_index_key(raw_key)?;
            if kept_key.as_deref() == Some(escaped) {
                // An older version of a key whose newest version ≤ target was seen.
                if rev.main < target {
                    batch.delete(Cf::Index, raw_key.to_vec());
                    batch.delete(Cf::Revs, revision_key(rev).to_vec());
                    removed += 1;
                }
                cursor.next();
                continue;
            }
            if rev.main > target {
                let seek = index_seek_at(escaped, target);
                cursor.seek(&seek);
                continue;
            }
            // The newest version of this key at or below the target.
            let entry = IndexEntry::decode(raw_value)?;
            if entry.kind == RecordKind::Tombstone && rev.main < target {
                batch.delete(Cf::Index, raw_key.to_vec());
                batch.delete(Cf::Revs, revision_key(rev).to_vec());
                removed += 1;
            }
            kept_key = Some(escaped.to_vec());
            cursor.next();
        }
        cursor.status()?;
        drop(cursor);
        if finished {
            batch.put(Cf::Meta, format::COMPACT_DONE_KEY, target.to_be_bytes());
        }
        backend.write(batch, Durability::Buffered)?;
        if finished {
            // The history is unreadable already; freeing its disk space is best effort, and a
            // defragmentation reclaims whatever this leaves.
            if let Err(err) = backend.reclaim_deleted(&[Cf::Index, Cf::Revs]) {
                tracing::warn!(%err, target, "could not start reclaiming the space of compacted history");
            }
            return Ok(true);
        }
    }
}
