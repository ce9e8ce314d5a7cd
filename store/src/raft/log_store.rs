//! The Raft log and vote, stored in the backend's `RaftLog` and `RaftState` column families.
//!
//! Durability (openraft's contract, and where RocksDB users have lost data before):
//! - `save_vote`, `truncate_after` and `purge` are synced writes: durable before they return;
//! - `append` writes without syncing, so entries are readable when it returns, then hands the IO
//!   callback to the flusher thread, which calls `FlushWAL(sync = true)` and only then reports the
//!   entries durable. The flusher drains every queued callback before one flush (group commit) and
//!   completes them in order, so a later append is never reported durable before an earlier one.
//!
//! Recent entries: the store keeps the entries it appended last in memory ([`RecentEntries`]),
//! so the reads that follow every append — the state machine applying them, and on a leader each
//! follower's replication — are answered without a RocksDB iterator and decoding. Invariant: a
//! cached entry is the entry the log holds at its index. Entries enter the cache only after the
//! backend holds them and leave it before a truncation or purge removes them from the backend (all
//! three run on openraft's core, one at a time), and a read is served from the cache only when
//! every index it asks for is cached; anything else reads the backend.
//!
//! The flusher thread holds a clone of the backend, so it is joined when the last clone of the
//! store is dropped: a process that drops its member and then exits never exits while that thread
//! is still closing the database (RocksDB aborts the process when its statics are destroyed under
//! a database being closed).
//!
//! Keys: log entries by index (u64 big-endian); in `RaftState`, `vote`, `last_purged` and `committed`.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::{Entry, LogId, TypeConfig, Vote, decode, encode};
use crate::backend::{Backend, Cf, Durability, WriteBatch};

const VOTE_KEY: &[u8] = b"vote";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
const COMMITTED_KEY: &[u8] = b"committed";

/// Pending flush callbacks; bounds how far appends may run ahead of the disk.
const FLUSH_QUEUE: usize = 1024;

/// Most entries, and most encoded bytes, the recent-entries cache holds; the oldest go first.
const RECENT_ENTRIES: usize = 16_384;
const RECENT_BYTES: usize = 8 << 20;

/// The entries appended last, contiguous by index, with their encoded sizes (for the byte bound).
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.index())
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.index())
    }

    /// Adds an entry just written to the log; an entry that does not follow the last cached one
    /// (the first append after a restart or a snapshot) starts the cache afresh.
    fn push(&mut self, entry: Entry, bytes: usize) {
        if self.last_index().is_some_and(|last| last + 1 != entry.index()) {
            self.clear();
        }
        self.bytes += bytes;
        self.entries.push_back((entry, bytes));
        while self.entries.len() > RECENT_ENTRIES || (self.bytes > RECENT_BYTES && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes -= bytes;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops the cached entries after `index` (the log was truncated there).
    fn truncate_after(&mut self, index: Option<u64>) {
        while let Some(last) = self.last_index() {
            if index.is_some_and(|index| last <= index) {
                break;
            }
            if let Some((_, bytes)) = self.entries.pop_back() {
                self.bytes -= bytes;
            }
        }
    }

    /// Drops the cached entries up to and including `index` (the log was purged there).
    fn purge_through(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The entries `start..end`, when every one of them is cached.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || end > last + 1 {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let take = usize::try_from(end.saturating_sub(start)).ok()?;
        Some(self.entries.iter().skip(skip).take(take).map(|(entry, _)| entry.clone()).collect())
    }
}

/// The Raft log store; cheap to clone (clones share the backend and the flusher).
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn Backend>,
    /// The flusher queue and thread, shared by every clone; the last clone's drop joins the thread.
    flusher: Arc<Flusher>,
    /// Entries appended last, shared by every clone (the core appends, truncates and purges; the
    /// state machine worker and the replication tasks read). The mutex guards short in-memory
    /// sections only: never a backend write, never an await, and no other lock is taken under it.
    recent: Arc<Mutex<RecentEntries>>,
}

/// Sender side of the flusher queue plus the thread's handle. Dropping it closes the queue (the
/// thread ends once it has completed what was queued) and joins the thread, so the thread's
/// clone of the backend is gone when the drop returns.
struct Flusher {
    queue: Option<SyncSender<IOFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the log flusher thread panicked");
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn io_err(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(err.to_string())
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl LogStore {
    /// A log store over `backend`, starting its flusher thread.
    pub fn new(backend: Arc<dyn Backend>) -> io::Result<Self> {
        let (tx, rx) = sync_channel(FLUSH_QUEUE);
        let flush_backend = backend.clone();
        let thread =
            std::thread::Builder::new().name("keel-log-flush".into()).spawn(move || flush_loop(flush_backend, rx))?;
        Ok(Self {
            backend,
            flusher: Arc::new(Flusher { queue: Some(tx), thread: Some(thread) }),
            recent: Arc::default(),
        })
    }

    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.backend.get(Cf::RaftState, key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    /// True when the store holds no vote and no log: a member that never ran.
    pub fn is_pristine(&self) -> io::Result<bool> {
        let mut cursor = self.backend.cursor(Cf::RaftLog);
        cursor.seek_to_first();
        let empty_log = cursor.entry().is_none();
        cursor.status().map_err(io_err)?;
        drop(cursor);
        Ok(empty_log
            && self.get_meta::<Vote>(VOTE_KEY)?.is_none()
            && self.get_meta::<LogId>(LAST_PURGED_KEY)?.is_none())
    }
}

/// A WAL sync slower than this is logged, as etcd logs a "slow fdatasync": a disk this slow delays
/// every write by as much, and requests that wait for it start timing out.
const SLOW_SYNC: Duration = Duration::from_secs(1);

fn flush_loop(backend: Arc<dyn Backend>, rx: Receiver<IOFlushed<TypeConfig>>) {
    // Looked up once: a lookup per flush would hash the name and take the registry's lock on the
    // write path. The binary installs its recorder before it opens the store.
    let fsync_duration = metrics::histogram!("keel_disk_wal_fsync_duration_seconds");
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let started = Instant::now();
        let result = backend.flush_wal().map_err(|err| err.to_string());
        let took = started.elapsed();
        fsync_duration.record(took.as_secs_f64());
        if took > SLOW_SYNC {
            tracing::warn!(took = ?took, expected = ?SLOW_SYNC, appends = pending.len(), "slow fdatasync");
        }
        for callback in pending {
            callback.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(end) = end
            && let Some(entries) = self.recent().get(start, end.max(start))
        {
            return Ok(entries);
        }
        let mut entries = Vec::new();
        let mut cursor = self.backend.cursor(Cf::RaftLog);
        cursor.seek(&index_key(start));
        while let Some((key, value)) = cursor.entry() {
            let index = u64::from_be_bytes(key.try_into().map_err(|_| io_err("malformed log key"))?);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode(value)?;
            if entry.index() != index {
                return Err(io_err(format!("log entry at key {index} claims index {}", entry.index())));
            }
            entries.push(entry);
            cursor.next();
        }
        cursor.status().map_err(io_err)?;
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED_KEY)?;
        let mut cursor = self.backend.cursor(Cf::RaftLog);
        cursor.seek_to_last();
        let last = match cursor.entry() {
            Some((_, value)) => Some(decode::<Entry>(value)?.log_id()),
            None => None,
        };
        cursor.status().map_err(io_err)?;
        Ok(LogState { last_log_id: last.or(last_purged), last_purged_log_id: last_purged })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::RaftState, VOTE_KEY, encode(vote)?);
        self.backend.write(batch, Durability::Synced).map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::RaftState, COMMITTED_KEY, encode(&committed)?);
        // Not synced: it only speeds recovery, and the WAL keeps it ordered after the entries it names.
        self.backend.write(batch, Durability::Buffered).map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let mut appended = Vec::new();
        for entry in entries {
            let encoded = encode(&entry)?;
            let bytes = encoded.len();
            batch.put(Cf::RaftLog, index_key(entry.index()), encoded);
            appended.push((entry, bytes));
        }
        self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
        let mut recent = self.recent();
        for (entry, bytes) in appended {
            recent.push(entry, bytes);
        }
        drop(recent);
        let queue = self.flusher.queue.as_ref().ok_or_else(|| io_err("the log flusher has been closed"))?;
        queue.send(callback).map_err(|_| io_err("the log flusher thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::new();
        batch.delete_range(Cf::RaftLog, index_key(from), [0xffu8; 9]);
        self.recent().truncate_after(last_log_id.map(|id| id.index()));
        self.backend.write(batch, Durability::Synced).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        // Record the purge point in the same batch, so the log never appears to have a hole.
        batch.put(Cf::RaftState, LAST_PURGED_KEY, encode(&log_id)?);
        batch.delete_range(Cf::RaftLog, index_key(0), index_key(log_id.index() + 1));
        self.recent().purge_through(log_id.index());
        self.backend.write(batch, Durability::Synced).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::IOFlushed;
    use openraft::testing::blank_ent;

    use super::*;
    use crate::backend::MemBackend;

    /// A small deterministic generator; the seed is printed when a check fails.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound.max(1)
        }
    }

    async fn read(store: &mut LogStore, start: u64, end: u64) -> Vec<LogId> {
        store.try_get_log_entries(start..end).await.unwrap().iter().map(|entry| entry.log_id()).collect()
    }

    #[tokio::test]
    async fn reads_served_from_recent_entries_match_the_log_after_appends_truncations_and_purges() {
        for seed in 1..=20u64 {
            let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
            let mut store = LogStore::new(backend.clone()).unwrap();
            // A second store over the same backend whose cache is never filled: it reads the log.
            let mut uncached = LogStore::new(backend).unwrap();
            let mut rng = Lcg(seed);
            // The log id written at each index (index 0 is unused).
            let mut ids: Vec<LogId> = vec![blank_ent::<TypeConfig>(0, 1, 0).log_id()];
            let (mut purged, mut term) = (0u64, 1u64);
            for step in 0..400 {
                let last = ids.len() as u64 - 1;
                match rng.below(10) {
                    0 if last > purged => {
                        purged += 1 + rng.below(last - purged);
                        store.purge(ids[purged as usize]).await.unwrap();
                    }
                    1 if last > purged => {
                        let keep = purged + rng.below(last - purged);
                        store.truncate_after((keep > 0).then(|| ids[keep as usize])).await.unwrap();
                        ids.truncate(keep as usize + 1);
                        term += 1;
                    }
                    _ => {
                        let count = 1 + rng.below(5);
                        let entries: Vec<_> =
                            (last + 1..=last + count).map(|i| blank_ent::<TypeConfig>(term, 1, i)).collect();
                        ids.extend(entries.iter().map(|entry| entry.log_id()));
                        store.append(entries, IOFlushed::noop()).await.unwrap();
                    }
                }
                let last = ids.len() as u64 - 1;
                let start = purged.saturating_sub(2) + rng.below(last + 4 - purged.saturating_sub(2));
                let end = start + rng.below(8);
                assert_eq!(
                    read(&mut store, start, end).await,
                    read(&mut uncached, start, end).await,
                    "seed {seed}, step {step}: entries {start}..{end}"
                );
            }
            assert!(store.recent().entries.len() <= RECENT_ENTRIES);
        }
    }
}
