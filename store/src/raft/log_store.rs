//! The Raft log and vote, stored in the backend's `RaftLog` and `RaftState` column families.
//!
//! Durability (openraft's contract, and where RocksDB users have lost data before):
//! - `save_vote`, `truncate_after` and `purge` are synced writes: durable before they return;
//! - `append` writes without syncing, so entries are readable when it returns, then hands the IO
//!   callback to the flusher thread, which calls `FlushWAL(sync = true)` and only then reports the
//!   entries durable. The flusher drains every queued callback before one flush (group commit) and
//!   completes them in order, so a later append is never reported durable before an earlier one.
//!
//! The flusher thread holds a clone of the backend, so it is joined when the last clone of the
//! store is dropped: a process that drops its member and then exits never exits while that thread
//! is still closing the database (RocksDB aborts the process when its statics are destroyed under
//! a database being closed).
//!
//! Keys: log entries by index (u64 big-endian); in `RaftState`, `vote`, `last_purged` and `committed`.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

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

/// The Raft log store; cheap to clone (clones share the backend and the flusher).
#[derive(Clone)]
pub struct LogStore {
    backend: Arc<dyn Backend>,
    /// The flusher queue and thread, shared by every clone; the last clone's drop joins the thread.
    flusher: Arc<Flusher>,
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
        Ok(Self { backend, flusher: Arc::new(Flusher { queue: Some(tx), thread: Some(thread) }) })
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

fn flush_loop(backend: Arc<dyn Backend>, rx: Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let result = backend.flush_wal().map_err(|err| err.to_string());
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
        for entry in entries {
            batch.put(Cf::RaftLog, index_key(entry.index()), encode(&entry)?);
        }
        self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
        let queue = self.flusher.queue.as_ref().ok_or_else(|| io_err("the log flusher has been closed"))?;
        queue.send(callback).map_err(|_| io_err("the log flusher thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::new();
        batch.delete_range(Cf::RaftLog, index_key(from), [0xffu8; 9]);
        self.backend.write(batch, Durability::Synced).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::new();
        // Record the purge point in the same batch, so the log never appears to have a hole.
        batch.put(Cf::RaftState, LAST_PURGED_KEY, encode(&log_id)?);
        batch.delete_range(Cf::RaftLog, index_key(0), index_key(log_id.index() + 1));
        self.backend.write(batch, Durability::Synced).map_err(io_err)
    }
}
