//! Multi-version concurrency control over the backend, with etcd's semantics: one store-wide revision
//! that increments once per mutating request, per-key create/mod revisions and versions, history kept
//! until compaction, and reads at any retained revision.
//!
//! Concurrency: writes happen only on the apply path (one [`WriteTxn`] at a time, the Raft state
//! machine task); reads happen anywhere, concurrently. A reader picks a revision `R ≤ current` and
//! sees exactly the data at `R`, because every revision ≤ `current` is fully written before `current`
//! is advanced (Release/Acquire on the atomic) and revisions above `R` are filtered out.
//!
//! Invariants:
//! - `current` only grows (snapshot install may move it, under the maintenance lock);
//! - compaction at `C` never removes anything at revision `C`, nor the newest version ≤ `C` of a key
//!   unless it is a tombstone below `C`, so reads at any revision ≥ `C` and watches from `C` are
//!   unaffected;
//! - every error leaves the backend unchanged: a [`WriteTxn`] writes nothing until committed.

mod compact;
mod encoding;
mod exec;
mod latest;
mod read;
mod txn;
mod types;

pub mod hash;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

pub use compact::CompactionProgress;
pub use encoding::{lease_attachment_key, lease_attachment_prefix, unescape_key};
pub use exec::LeaseCheck;
pub use txn::{Committed, StagedPuts, WriteTxn};
pub use types::*;

use crate::backend::{Backend, BackendError, Cf, WriteBatch};
use crate::format::{self, FormatError};
use compact::Compactor;
use latest::LiveKeys;

/// The revision of an empty store, as in etcd: the first write creates revision 2.
pub const INITIAL_REVISION: i64 = 1;

/// MVCC errors. Their `Display` texts are etcd's, without the `etcdserver: ` prefix that the gRPC
/// layer adds.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    /// The requested revision was compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The current compaction revision.
        compact_revision: i64,
    },
    /// The requested revision is in the future.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A put named a lease that does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// Stored data failed to decode.
    #[error("corrupt MVCC data: {0}")]
    Corrupt(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The format marker or metadata is wrong.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// The MVCC store.
pub struct Mvcc {
    backend: Arc<dyn Backend>,
    /// Latest fully written revision. Advanced only by [`WriteTxn::commit`] after its batch is written.
    current: AtomicI64,
    /// Logical compaction revision: reads below it fail. Advanced by the apply path.
    compacted: AtomicI64,
    /// Held shared by each physical-compaction batch and exclusively while a snapshot replaces the
    /// data, so compaction never deletes from a data set it did not inspect. Lock order: this lock
    /// before any other store lock. Shared with the compactor thread.
    maintenance: Arc<RwLock<()>>,
    compactor: Compactor,
    /// Every live key and its newest revision, for the apply path and single-key reads
    /// (`latest.rs`).
    latest: LiveKeys,
}

impl std::fmt::Debug for Mvcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mvcc")
            .field("current", &self.current_revision())
            .field("compacted", &self.compacted_revision())
            .finish_non_exhaustive()
    }
}

impl Mvcc {
    /// Opens the MVCC store on a backend whose format marker has been checked, resuming any
    /// unfinished physical compaction.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Arc<Self>, MvccError> {
        let (current, compacted, compact_done) = Self::load_revisions(&*backend)?;
        let latest = LiveKeys::load(&*backend)?;
        let maintenance = Arc::new(RwLock::new(()));
        let mvcc = Arc::new(Mvcc {
            backend: backend.clone(),
            current: AtomicI64::new(current),
            compacted: AtomicI64::new(compacted),
            maintenance: maintenance.clone(),
            compactor: Compactor::start(backend, maintenance, compact_done),
            latest,
        });
        if compacted > compact_done {
            mvcc.compactor.schedule(compacted);
        }
        Ok(mvcc)
    }

    fn load_revisions(backend: &dyn Backend) -> Result<(i64, i64, i64), MvccError> {
        let current = format::read_i64(backend, format::CURRENT_REVISION_KEY)?.unwrap_or(INITIAL_REVISION);
        let compacted = format::read_i64(backend, format::COMPACT_REVISION_KEY)?.unwrap_or(0);
        let compact_done = format::read_i64(backend, format::COMPACT_DONE_KEY)?.unwrap_or(0);
        Ok((current, compacted, compact_done))
    }

    /// Re-reads revisions after the backend's contents were replaced (snapshot install). The caller
    /// holds [`Mvcc::lock_exclusive`].
    pub fn reload(&self) -> Result<(), MvccError> {
        let (current, compacted, compact_done) = Self::load_revisions(&*self.backend)?;
        self.latest.reload(&*self.backend)?;
        self.current.store(current, Ordering::Release);
        self.compacted.store(compacted, Ordering::Release);
        self.compactor.reset(compact_done);
        if compacted > compact_done {
            self.compactor.schedule(compacted);
        }
        Ok(())
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Latest committed revision.
    pub fn current_revision(&self) -> i64 {
        self.current.load(Ordering::Acquire)
    }

    /// Logical compaction revision (0 when nothing was compacted).
    pub fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Progress of physical compaction, for callers that wait for it.
    pub fn compaction_progress(&self) -> CompactionProgress {
        self.compactor.progress()
    }

    /// Blocks physical compaction while held; taken by snapshot installation.
    pub fn lock_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.maintenance.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Validates a compaction to `revision` and returns the metadata write that records it; call
    /// [`Mvcc::compaction_committed`] once that write is durable in the backend.
    pub fn prepare_compaction(&self, revision: i64) -> Result<WriteBatch, MvccError> {
        let compacted = self.compacted_revision();
        if revision <= compacted {
            return Err(MvccError::Compacted { compact_revision: compacted });
        }
        if revision > self.current_revision() {
            return Err(MvccError::FutureRevision);
        }
        let mut batch = WriteBatch::new();
        batch.put(Cf::Meta, format::COMPACT_REVISION_KEY, revision.to_be_bytes());
        Ok(batch)
    }

    /// Makes a recorded compaction visible to readers and starts removing history in the background.
    pub fn compaction_committed(&self, revision: i64) {
        self.compacted.fetch_max(revision, Ordering::AcqRel);
        self.compactor.schedule(revision);
    }

    /// Checks that `revision` (> 0) can be read.
    fn check_readable(&self, revision: i64, current: i64) -> Result<(), MvccError> {
        if revision > current {
            return Err(MvccError::FutureRevision);
        }
        let compacted = self.compacted_revision();
        if revision < compacted {
            return Err(MvccError::Compacted { compact_revision: compacted });
        }
        Ok(())
    }
}
