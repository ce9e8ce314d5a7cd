//! The Raft log and vote. The vote, the purge point and the commit index live in the backend's
//! `RaftState` column family; the entries live either in segment files of their own
//! ([`super::segments`], what a member on RocksDB uses) or in the backend's `RaftLog` column family
//! (the in-memory backend, and data directories written before the segment files existed, whose
//! entries move into segment files when the store opens).
//!
//! Durability (openraft's contract, and where RocksDB users have lost data before):
//! - `save_vote`, `truncate_after` and `purge` are durable before they return;
//! - `append` writes without syncing, so entries are readable when it returns, then hands the IO
//!   callback to the flusher thread, which syncs the log (the active segment file, or RocksDB's
//!   WAL with `FlushWAL(sync = true)`) and only then reports the entries durable. The flusher
//!   drains every queued callback before one sync (group commit) and completes them in order, so
//!   a later append is never reported durable before an earlier one.
//! - With segment files, applied entries reach RocksDB as buffered writes that nothing syncs on
//!   the write path: a crash can lose applied state, which is replayed from the log. A purge
//!   therefore syncs RocksDB's WAL before it removes entries, so the log always keeps what the
//!   durable state machine has not got. openraft applies only entries this member holds durably,
//!   so the durable state machine is never ahead of the durable log.
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
//! Keys: log entries by index (u64 big-endian) in `RaftLog`; in `RaftState`, `vote`, `last_purged`
//! and `committed`.

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

use super::segments::{SEGMENT_BYTES, SegmentLog};
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

/// The Raft log store; cheap to clone (clones share the backend, the segment files and the flusher).
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn Backend>,
    /// The entries' segment files; `None` keeps the entries in the backend's `RaftLog` family.
    files: Option<Arc<SegmentLog>>,
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
    /// A log store keeping its entries in `backend`'s `RaftLog` column family, starting its flusher
    /// thread.
    pub fn new(backend: Arc<dyn Backend>) -> io::Result<Self> {
        Self::start(backend, None)
    }

    /// A log store keeping its entries in segment files in `dir` (created when missing), starting
    /// its flusher thread. Entries an older data directory kept in `backend`'s `RaftLog` family
    /// move into the files first.
    pub fn with_segment_files(backend: Arc<dyn Backend>, dir: &std::path::Path) -> io::Result<Self> {
        Self::with_segment_size(backend, dir, SEGMENT_BYTES)
    }

    /// [`LogStore::with_segment_files`] with segments of `segment_bytes` (tests roll over often).
    #[doc(hidden)]
    pub fn with_segment_size(backend: Arc<dyn Backend>, dir: &std::path::Path, segment_bytes: u64) -> io::Result<Self> {
        let last_purged = get_meta::<LogId>(&*backend, LAST_PURGED_KEY)?.map(|id| id.index());
        let files = SegmentLog::open(dir, segment_bytes, last_purged)
            .map_err(|err| io::Error::new(err.kind(), format!("opening the Raft log in {}: {err}", dir.display())))?;
        move_entries_into_files(&*backend, &files)?;
        Self::start(backend, Some(Arc::new(files)))
    }

    fn start(backend: Arc<dyn Backend>, files: Option<Arc<SegmentLog>>) -> io::Result<Self> {
        let (tx, rx) = sync_channel(FLUSH_QUEUE);
        let flush_backend = backend.clone();
        let flush_files = files.clone();
        let thread = std::thread::Builder::new()
            .name("keel-log-flush".into())
            .spawn(move || flush_loop(flush_backend, flush_files, rx))?;
        Ok(Self {
            backend,
            files,
            flusher: Arc::new(Flusher { queue: Some(tx), thread: Some(thread) }),
            recent: Arc::default(),
        })
    }

    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        get_meta(&*self.backend, key)
    }

    /// True when the store holds no vote and no log: a member that never ran.
    pub fn is_pristine(&self) -> io::Result<bool> {
        let empty_log = match &self.files {
            Some(files) => files.has_no_records(),
            None => {
                let mut cursor = self.backend.cursor(Cf::RaftLog);
                cursor.seek_to_first();
                let empty = cursor.entry().is_none();
                cursor.status().map_err(io_err)?;
                empty
            }
        };
        Ok(empty_log
            && self.get_meta::<Vote>(VOTE_KEY)?.is_none()
            && self.get_meta::<LogId>(LAST_PURGED_KEY)?.is_none())
    }

    /// The encoded entries from `from` through `last` that the log holds, consecutive from the
    /// first one held at or after `from`, stopping once about `max_bytes` are gathered (at least
    /// one entry when any is held). For journal followers, which ship entries as stored.
    pub fn read_encoded(&self, from: u64, last: u64, max_bytes: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        self.read_records(from, last.saturating_add(1), max_bytes)
    }

    /// The encoded entries from `start` up to `end` (exclusive) that the log holds, bounded as in
    /// [`LogStore::read_encoded`]; from the segment files or the `RaftLog` family, never the cache.
    fn read_records(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        if let Some(files) = &self.files {
            return files.read(start, end, max_bytes);
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut cursor = self.backend.cursor(Cf::RaftLog);
        cursor.seek(&index_key(start));
        while let Some((key, value)) = cursor.entry() {
            let index = u64::from_be_bytes(key.try_into().map_err(|_| io_err("malformed log key"))?);
            if index >= end || bytes >= max_bytes {
                break;
            }
            bytes += value.len();
            records.push((index, value.to_vec()));
            cursor.next();
        }
        cursor.status().map_err(io_err)?;
        Ok(records)
    }

    /// Decodes entries read back from the log, checking each is the entry its index says.
    fn decode_entries(records: Vec<(u64, Vec<u8>)>) -> io::Result<Vec<Entry>> {
        records
            .into_iter()
            .map(|(index, bytes)| {
                let entry: Entry = decode(&bytes)?;
                if entry.index() != index {
                    return Err(io_err(format!("log entry recorded at {index} claims index {}", entry.index())));
                }
                Ok(entry)
            })
            .collect()
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(backend: &dyn Backend, key: &[u8]) -> io::Result<Option<T>> {
    match backend.get(Cf::RaftState, key).map_err(io_err)? {
        None => Ok(None),
        Some(bytes) => decode(&bytes).map(Some),
    }
}

/// Moves the entries a data directory kept in the `RaftLog` column family (before the segment
/// files existed) into `files`: copied and synced first, then deleted from the family, so a crash
/// in between leaves them in both, and the next open (finding the files already written) only
/// deletes them.
fn move_entries_into_files(backend: &dyn Backend, files: &SegmentLog) -> io::Result<()> {
    let mut cursor = backend.cursor(Cf::RaftLog);
    cursor.seek_to_first();
    if cursor.entry().is_none() {
        return cursor.status().map_err(io_err);
    }
    let copy = files.has_no_records();
    let mut batch = Vec::new();
    let mut moved = 0u64;
    while let Some((key, value)) = cursor.entry() {
        if copy {
            let index = u64::from_be_bytes(key.try_into().map_err(|_| io_err("malformed log key"))?);
            batch.push((index, value.to_vec()));
            if batch.len() == 1024 {
                files.append(&std::mem::take(&mut batch))?;
            }
        }
        moved += 1;
        cursor.next();
    }
    cursor.status().map_err(io_err)?;
    drop(cursor);
    if copy {
        files.append(&batch)?;
        files.sync()?;
        tracing::info!(entries = moved, "moved the Raft log from the database into its segment files");
    }
    let mut delete = WriteBatch::new();
    delete.delete_range(Cf::RaftLog, index_key(0), [0xffu8; 9]);
    backend.write(delete, Durability::Synced).map_err(io_err)
}

/// A WAL sync slower than this is logged, as etcd logs a "slow fdatasync": a disk this slow delays
/// every write by as much, and requests that wait for it start timing out.
const SLOW_SYNC: Duration = Duration::from_secs(1);

fn flush_loop(backend: Arc<dyn Backend>, files: Option<Arc<SegmentLog>>, rx: Receiver<IOFlushed<TypeConfig>>) {
    // Looked up once: a lookup per flush would hash the name and take the registry's lock on the
    // write path. The binary installs its recorder before it opens the store.
    let fsync_duration = metrics::histogram!("keel_disk_wal_fsync_duration_seconds");
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let started = Instant::now();
        let result = match &files {
            Some(files) => files.sync().map_err(|err| err.to_string()),
            None => backend.flush_wal().map_err(|err| err.to_string()),
        };
        let took = started.elapsed();
        fsync_duration.record(took.as_secs_f64());
        if took > SLOW_SYNC {
            tracing::warn!(took = ?took, expected = ?SLOW_SYNC, appends = pending.len(), "slow fdatasync");
        }
        for callback in pending {
            callback.io_completed(result.clone().map_err(io::Error::other));
        }
        // Between flushes, so the zero-fill's own sync never delays an acknowledgement already due.
        if let Some(files) = &files
            && let Err(err) = files.zero_ahead()
        {
            tracing::warn!(%err, "could not zero-fill the Raft log ahead of its records");
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
        Self::decode_entries(self.read_records(start, end.unwrap_or(u64::MAX), usize::MAX)?)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED_KEY)?;
        let last = match &self.files {
            Some(files) => match files.last_index() {
                Some(index) => {
                    Self::decode_entries(files.read(index, index + 1, usize::MAX)?)?.pop().map(|e| e.log_id())
                }
                None => None,
            },
            None => {
                let mut cursor = self.backend.cursor(Cf::RaftLog);
                cursor.seek_to_last();
                let last = match cursor.entry() {
                    Some((_, value)) => Some(decode::<Entry>(value)?.log_id()),
                    None => None,
                };
                cursor.status().map_err(io_err)?;
                last
            }
        };
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
        let mut appended = Vec::new();
        let mut records = Vec::new();
        for entry in entries {
            let encoded = encode(&entry)?;
            let bytes = encoded.len();
            records.push((entry.index(), encoded));
            appended.push((entry, bytes));
        }
        if let Some(files) = &self.files {
            files.append(&records)?;
        } else {
            let mut batch = WriteBatch::new();
            for (index, encoded) in records {
                batch.put(Cf::RaftLog, index_key(index), encoded);
            }
            self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
        }
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
        if let Some(files) = &self.files {
            self.recent().truncate_after(last_log_id.map(|id| id.index()));
            return files.truncate_from(from);
        }
        let mut batch = WriteBatch::new();
        batch.delete_range(Cf::RaftLog, index_key(from), [0xffu8; 9]);
        self.recent().truncate_after(last_log_id.map(|id| id.index()));
        self.backend.write(batch, Durability::Synced).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        if let Some(files) = &self.files {
            // The purge point's synced write also makes every buffered write before it durable
            // (RocksDB's WAL is one sequence), the applied entries through the purged ones
            // included, so a crash cannot leave a hole between the state machine and the log.
            let mut batch = WriteBatch::new();
            batch.put(Cf::RaftState, LAST_PURGED_KEY, encode(&log_id)?);
            self.backend.write(batch, Durability::Synced).map_err(io_err)?;
            self.recent().purge_through(log_id.index());
            return files.purge_through(log_id.index());
        }
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
    use crate::raft::Lcg;

    async fn read(store: &mut LogStore, start: u64, end: u64) -> Vec<LogId> {
        store.try_get_log_entries(start..end).await.unwrap().iter().map(|entry| entry.log_id()).collect()
    }

    #[tokio::test]
    async fn reads_served_from_recent_entries_match_the_log_after_appends_truncations_and_purges() {
        for (seed, in_files) in (1..=20u64).flat_map(|seed| [(seed, false), (seed, true)]) {
            let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
            let dir = tempfile::tempdir().unwrap();
            let mut store = match in_files {
                true => LogStore::with_segment_size(backend, dir.path(), 2048).unwrap(),
                false => LogStore::new(backend).unwrap(),
            };
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
                // `read_encoded` reads the log itself, never the cache.
                let uncached: Vec<LogId> = match end.checked_sub(1).filter(|&last| last >= start) {
                    Some(last) => LogStore::decode_entries(store.read_encoded(start, last, usize::MAX).unwrap())
                        .unwrap()
                        .iter()
                        .map(|entry| entry.log_id())
                        .collect(),
                    None => Vec::new(),
                };
                assert_eq!(
                    read(&mut store, start, end).await,
                    uncached,
                    "seed {seed}, segment files {in_files}, step {step}: entries {start}..{end}"
                );
            }
            assert!(store.recent().entries.len() <= RECENT_ENTRIES);
        }
    }

    #[tokio::test]
    async fn entries_kept_in_the_database_move_into_segment_files_once_and_survive_reopening() {
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
        let dir = tempfile::tempdir().unwrap();
        let entries: Vec<Entry> = (1..=50).map(|i| blank_ent::<TypeConfig>(1 + i / 20, 1, i)).collect();
        let ids: Vec<LogId> = entries.iter().map(|entry| entry.log_id()).collect();
        let mut old = LogStore::new(backend.clone()).unwrap();
        old.append(entries, IOFlushed::noop()).await.unwrap();
        old.purge(ids[9]).await.unwrap();
        drop(old);

        let mut moved = LogStore::with_segment_files(backend.clone(), dir.path()).unwrap();
        assert_eq!(read(&mut moved, 0, 100).await, ids[10..]);
        let state = moved.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(ids[9]), Some(ids[49])));
        let mut cursor = backend.cursor(Cf::RaftLog);
        cursor.seek_to_first();
        assert!(cursor.entry().is_none(), "the database still holds log entries");
        drop(cursor);
        drop(moved);

        // A crash after the copy but before the delete leaves the entries in both places: the
        // files are already written, so the next open only deletes the database's copy.
        let mut stale = WriteBatch::new();
        stale.put(Cf::RaftLog, index_key(7), encode(&blank_ent::<TypeConfig>(9, 1, 7)).unwrap());
        backend.write(stale, Durability::Synced).unwrap();
        let mut reopened = LogStore::with_segment_files(backend.clone(), dir.path()).unwrap();
        assert_eq!(read(&mut reopened, 0, 100).await, ids[10..]);
        assert!(backend.get(Cf::RaftLog, &index_key(7)).unwrap().is_none());
    }
}
