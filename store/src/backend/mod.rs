//! The storage backend: an ordered key-value engine with column families, atomic write batches,
//! cursors and consistent exports. Everything the store persists — MVCC data, leases, the Raft log
//! and vote — goes through this trait.
//!
//! Two implementations share one conformance suite (`conformance`): [`RocksBackend`] for real data
//! directories and [`MemBackend`] for tests.
//!
//! Invariants every implementation keeps:
//! - keys within a column family are ordered bytewise, and cursors see them in that order;
//! - a [`WriteBatch`] is applied atomically: after a crash either all of it or none of it is visible;
//! - a write with [`Durability::Synced`], or a successful [`Backend::flush_wal`], makes that write and
//!   every write before it durable;
//! - writes become visible to reads in the order they were issued (the WAL is a single sequence), so a
//!   recovered state is always a prefix of the writes issued;
//! - [`Backend::defragment`] changes no data, only the space it takes.

mod memory;
mod rocks;

#[cfg(test)]
mod conformance;

pub use memory::MemBackend;
pub use rocks::{RocksBackend, RocksOptions};

/// A column family: one independent ordered key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// State-machine metadata: format version, applied log id, membership, revisions.
    Meta,
    /// MVCC revisions: `revision` → key-value record (also serves watch replay).
    Revs,
    /// MVCC key index: `escaped key ‖ inverted revision` → small record without the value.
    Index,
    /// Leases and their attached keys.
    Leases,
    /// Raft log entries by index.
    RaftLog,
    /// Raft vote, last purged log id and committed log id.
    RaftState,
    /// Users, roles and the auth switch (see `crate::auth`).
    Auth,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 7] = [Cf::Meta, Cf::Revs, Cf::Index, Cf::Leases, Cf::RaftLog, Cf::RaftState, Cf::Auth];

    /// The column families that make up the state machine (what a snapshot carries), metadata first.
    pub const STATE_MACHINE: [Cf; 5] = [Cf::Meta, Cf::Revs, Cf::Index, Cf::Leases, Cf::Auth];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Revs => "revs",
            Cf::Index => "index",
            Cf::Leases => "leases",
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::Auth => "auth",
        }
    }

    /// A stable one-byte tag, used in snapshot files.
    pub fn tag(self) -> u8 {
        match self {
            Cf::Meta => 1,
            Cf::Revs => 2,
            Cf::Index => 3,
            Cf::Leases => 4,
            Cf::RaftLog => 5,
            Cf::RaftState => 6,
            Cf::Auth => 7,
        }
    }

    /// The column family with the given [`Cf::tag`].
    pub fn from_tag(tag: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.tag() == tag)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine reported an error (I/O failure, corruption detected by checksums, ...).
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A file-system operation around the engine failed.
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// How durable a write must be before [`Backend::write`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Visible to reads at once; durable only after a later synced write or [`Backend::flush_wal`].
    Buffered,
    /// On stable storage before returning.
    Synced,
}

/// One operation in a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// Column family.
        cf: Cf,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// Column family.
        cf: Cf,
        /// Key.
        key: Vec<u8>,
    },
    /// Remove every key in `[from, to)`.
    DeleteRange {
        /// Column family.
        cf: Cf,
        /// Inclusive start.
        from: Vec<u8>,
        /// Exclusive end.
        to: Vec<u8>,
    },
}

/// An ordered list of writes applied atomically by [`Backend::write`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    bytes: usize,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.ops.push(BatchOp::Put { cf, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.bytes += key.len();
        self.ops.push(BatchOp::Delete { cf, key });
    }

    /// Adds a range delete of `[from, to)`.
    pub fn delete_range(&mut self, cf: Cf, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        let (from, to) = (from.into(), to.into());
        self.bytes += from.len() + to.len();
        self.ops.push(BatchOp::DeleteRange { cf, from, to });
    }

    /// Appends every operation of `other` after this batch's operations.
    pub fn extend(&mut self, other: WriteBatch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate payload size in bytes (keys plus values).
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// A positioned iterator over one column family.
///
/// A fresh cursor is unpositioned; `entry()` is `None` until a seek lands on an entry. Reads through a
/// cursor observe writes that completed before the cursor moved; callers needing a stable view over
/// several steps rely on MVCC revisions rather than on the cursor.
pub trait Cursor {
    /// Positions at the first entry with key ≥ `key`.
    fn seek(&mut self, key: &[u8]);
    /// Positions at the last entry with key ≤ `key`.
    fn seek_for_prev(&mut self, key: &[u8]);
    /// Positions at the first entry.
    fn seek_to_first(&mut self);
    /// Positions at the last entry.
    fn seek_to_last(&mut self);
    /// Moves to the following entry (a no-op when unpositioned).
    fn next(&mut self);
    /// Moves to the preceding entry (a no-op when unpositioned).
    fn prev(&mut self);
    /// The current entry, or `None` when the cursor ran off either end.
    fn entry(&self) -> Option<(&[u8], &[u8])>;
    /// The first error the cursor met; an exhausted cursor must be checked with this.
    fn status(&self) -> Result<(), BackendError>;
}

/// Receives the entries of a consistent export, column family by column family.
pub type ExportVisitor<'a> = dyn FnMut(Cf, &[u8], &[u8]) -> Result<(), BackendError> + 'a;

/// An ordered, durable key-value engine with column families.
pub trait Backend: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;

    /// Reads many keys of one column family; the result is in the order of `keys`.
    fn multi_get(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|key| self.get(cf, key)).collect()
    }

    /// Opens a cursor over one column family.
    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_>;

    /// Applies a batch atomically.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), BackendError>;

    /// Makes every write issued so far durable.
    fn flush_wal(&self) -> Result<(), BackendError>;

    /// Visits every entry of `cfs`, in the given order, from one point-in-time view: writes that
    /// happen during the export are not seen.
    fn export(&self, cfs: &[Cf], visit: &mut ExportVisitor<'_>) -> Result<(), BackendError>;

    /// Like [`Backend::export`], but from a durable point-in-time copy taken in a new directory
    /// under `scratch` (a RocksDB checkpoint: hard-linked files, nothing copied into memory), which
    /// is removed afterwards. `scratch` must be on the same file system as the data. Backends
    /// without such copies export from their live view.
    fn export_checkpoint(
        &self,
        scratch: &std::path::Path,
        cfs: &[Cf],
        visit: &mut ExportVisitor<'_>,
    ) -> Result<(), BackendError> {
        let _ = scratch;
        self.export(cfs, visit)
    }

    /// Approximate space the data takes (on disk for RocksDB).
    fn size_bytes(&self) -> u64;

    /// Approximate space taken by live data (excluding obsolete files awaiting removal).
    fn size_in_use_bytes(&self) -> u64 {
        self.size_bytes()
    }

    /// Lets the space held by records just deleted from `cfs` be reclaimed soon, in the background,
    /// without a full [`Backend::defragment`]: called after an MVCC compaction removed history.
    ///
    /// It changes no key or value and blocks no read or write. RocksDB flushes the column
    /// families' memtables, so the deletes reach files that its deletion-triggered compaction
    /// rewrites (dropping the deleted data) on its own threads; backends that drop deleted data at
    /// once have nothing to do.
    fn reclaim_deleted(&self, cfs: &[Cf]) -> Result<(), BackendError> {
        let _ = cfs;
        Ok(())
    }

    /// Reclaims the space held by deleted and overwritten data (etcd's defragmentation), so
    /// [`Backend::size_bytes`] shrinks after an MVCC compaction removed history.
    ///
    /// Online: reads and writes go on while it runs and are never blocked by it, and it changes
    /// no key or value (what cursors, gets and exports return is the same before and after). It
    /// may take long on a large store and uses disk bandwidth, so callers run it on a blocking
    /// thread and one at a time.
    fn defragment(&self) -> Result<(), BackendError>;
}

/// Prefix of the directories [`Backend::export_checkpoint`] creates; leftovers from a crash can be
/// recognised and removed at start-up.
pub const CHECKPOINT_DIR_PREFIX: &str = "checkpoint-";

/// The smallest key greater than every key starting with `prefix`, or `None` when no such key exists
/// (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
