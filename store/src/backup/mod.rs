//! Backups as files: what a snapshot file holds ([`inspect`]) and turning one into a new member's
//! data directory ([`restore`]). Snapshot files are the Raft snapshot format
//! (`raft::snapshot`), as streamed by Maintenance Snapshot.
//!
//! Invariants:
//! - nothing is written to the target before the whole file has verified (record count and
//!   checksum), so a truncated or corrupted file leaves the target untouched;
//! - the target directory must be absent or empty, except for a volume root's `lost+found`; an
//!   existing data directory is never overwritten;
//! - the database is built as `db.restoring` and renamed to `db` only once complete and synced, so
//!   an interrupted restore never leaves a directory a member would start from;
//! - the restored state machine keeps the revision, the compaction point, every key with its
//!   history, leases and auth, but not the old cluster's Raft position, membership or member
//!   attributes: the member bootstraps a new cluster from its own flags.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::AuthStore;
use crate::backend::{Backend, BackendError, Cf, Durability, RocksBackend, RocksOptions, WriteBatch};
use crate::format;
use crate::lease::Lessor;
use crate::mvcc::{Mvcc, RangeRequest};
use crate::raft::snapshot;

pub mod journal;
mod pitr;

pub use pitr::restore_to_revision;

/// Records written per batch while restoring.
const RESTORE_BATCH: usize = 10_000;
/// Name of the database directory inside a data directory (what `Member::start` opens).
const DB_DIR: &str = "db";
/// Name of the database while a restore builds it.
const RESTORING_DIR: &str = "db.restoring";
/// Entries a volume root may hold besides the data.
const VOLUME_ENTRIES: [&str; 1] = ["lost+found"];

/// Why a snapshot could not be inspected or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file ends early.
    #[error("snapshot file {path} is truncated: it ends before its checksum (was the copy interrupted?)")]
    Truncated {
        /// The file.
        path: PathBuf,
    },
    /// The file is damaged or not a Keel snapshot.
    #[error("snapshot file {path} is corrupted: {reason}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The target directory holds something.
    #[error("{path} is not empty (it holds {entry:?}); restore needs an empty or new directory")]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
        /// One of its entries.
        entry: String,
    },
    /// Reading or writing files failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// The restored data does not open.
    #[error("the restored data does not open: {0}")]
    Store(String),
    /// A point-in-time backup directory cannot give the state asked for.
    #[error("{0}")]
    Journal(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

fn store_error(err: impl std::fmt::Display) -> BackupError {
    BackupError::Store(err.to_string())
}

/// What a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The store revision it was taken at.
    pub revision: i64,
    /// The compaction revision (history below it is gone).
    pub compact_revision: i64,
    /// Keys that exist at `revision`.
    pub keys: i64,
    /// Leases.
    pub leases: usize,
    /// Users and roles, and whether auth is on.
    pub users: usize,
    /// Roles.
    pub roles: usize,
    /// Whether authentication is enabled.
    pub auth_enabled: bool,
    /// HashKV at `revision`: equal to what `HashKV` answers on a member at that revision.
    pub hash: u32,
    /// File size in bytes.
    pub size: u64,
}

/// Reads a snapshot file end to end (checking it) and summarizes it. Loads the data into memory.
pub fn inspect(path: &Path) -> Result<SnapshotSummary, BackupError> {
    let size = std::fs::metadata(path).map_err(io_error(format!("reading {}", path.display())))?.len();
    let backend = Arc::new(crate::backend::MemBackend::new());
    let mut batch = WriteBatch::new();
    snapshot::for_each_record(path, |cf, key, value| {
        batch.put(cf, key, value);
        Ok(())
    })
    .map_err(|err| file_error(path, err))?;
    backend.write(batch, Durability::Buffered).map_err(store_error)?;
    summarize(backend, size)
}

/// The log index and store revision a snapshot file's state is at, reading the file end to end
/// (checked) without holding its data.
pub fn position(path: &Path) -> Result<(u64, i64), BackupError> {
    let mut revision = None;
    let meta = snapshot::for_each_record(path, |cf, key, value| {
        if cf == Cf::Meta && key == format::CURRENT_REVISION_KEY {
            revision = value.try_into().ok().map(i64::from_be_bytes);
        }
        Ok(())
    })
    .map_err(|err| file_error(path, err))?;
    let index = meta.last_log_id.map_or(0, |id| id.index());
    Ok((index, revision.unwrap_or(crate::mvcc::INITIAL_REVISION)))
}

/// Builds a member data directory at `data_dir` from the snapshot at `path`. The member started
/// on it with `--initial-cluster-state new` founds a new cluster holding the snapshot's data.
pub fn restore(path: &Path, data_dir: &Path) -> Result<SnapshotSummary, BackupError> {
    check_target(data_dir)?;
    let size = verify_file(path)?;

    std::fs::create_dir_all(data_dir).map_err(io_error(format!("creating {}", data_dir.display())))?;
    let building = data_dir.join(RESTORING_DIR);
    let summary = (|| {
        let backend = Arc::new(RocksBackend::open(&building, &RocksOptions::default()).map_err(store_error)?);
        load_snapshot(path, &*backend, |cf, key| !(cf == Cf::Meta && CLUSTER_SPECIFIC_KEYS.contains(&key)))?;
        backend.flush_wal().map_err(store_error)?;
        summarize(backend, size)
    })();
    let summary = match summary {
        Ok(summary) => summary,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(err);
        }
    };
    std::fs::rename(&building, data_dir.join(DB_DIR)).map_err(io_error("moving the restored database in place"))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(format!("syncing {}", data_dir.display())))?;
    Ok(summary)
}

/// Metadata that belongs to the old cluster's Raft group, not to the data.
const CLUSTER_SPECIFIC_KEYS: [&[u8]; 5] = [
    format::APPLIED_KEY,
    format::MEMBERSHIP_KEY,
    format::MEMBER_ATTRIBUTES_KEY,
    format::INSTALLING_SNAPSHOT_KEY,
    // Alarms name the old cluster's member ids; the new members raise their own.
    format::ALARMS_KEY,
];

/// Checks a snapshot file end to end; its size.
fn verify_file(path: &Path) -> Result<u64, BackupError> {
    let size = std::fs::metadata(path).map_err(io_error(format!("reading {}", path.display())))?.len();
    snapshot::verify(path).map_err(|err| file_error(path, err))?;
    Ok(size)
}

/// Writes the records of a (verified) snapshot file that `keep` accepts into `backend`, synced,
/// and marks the data with the format version.
fn load_snapshot(path: &Path, backend: &dyn Backend, keep: impl Fn(Cf, &[u8]) -> bool) -> Result<(), BackupError> {
    let mut batch = WriteBatch::new();
    let mut pending = 0;
    let mut failed: Option<BackendError> = None;
    snapshot::for_each_record(path, |cf, key, value| {
        if !keep(cf, &key) {
            return Ok(());
        }
        batch.put(cf, key, value);
        pending += 1;
        if pending == RESTORE_BATCH {
            pending = 0;
            if let Err(err) = backend.write(std::mem::take(&mut batch), Durability::Buffered) {
                failed = Some(err);
                return Err(io::Error::other("writing the restored data failed"));
            }
        }
        Ok(())
    })
    .map_err(|err| match failed.take() {
        Some(backend_err) => store_error(backend_err),
        None => file_error(path, err),
    })?;
    backend.write(batch, Durability::Synced).map_err(store_error)?;
    format::check_or_init(backend).map_err(store_error)
}

/// Refuses a target that holds anything but a volume root's `lost+found`.
fn check_target(data_dir: &Path) -> Result<(), BackupError> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_error(format!("reading {}", data_dir.display()))(err)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(format!("reading {}", data_dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !VOLUME_ENTRIES.contains(&name.as_str()) {
            return Err(BackupError::TargetNotEmpty { path: data_dir.to_path_buf(), entry: name });
        }
    }
    Ok(())
}

fn file_error(path: &Path, err: io::Error) -> BackupError {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => BackupError::Truncated { path: path.to_path_buf() },
        io::ErrorKind::InvalidData => BackupError::Corrupted { path: path.to_path_buf(), reason: err.to_string() },
        _ => BackupError::Io { what: format!("reading {}", path.display()), source: err },
    }
}

fn summarize(backend: Arc<dyn Backend>, size: u64) -> Result<SnapshotSummary, BackupError> {
    let mvcc = Mvcc::open(backend.clone()).map_err(store_error)?;
    let revision = mvcc.current_revision();
    let all = RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() };
    let keys = mvcc.range(&all).map_err(store_error)?.count;
    let hash = mvcc.hash_kv(revision).map_err(store_error)?;
    let leases = Lessor::open(backend.clone(), 1).map_err(store_error)?.ids().len();
    let auth = AuthStore::open(backend).map_err(store_error)?.state();
    Ok(SnapshotSummary {
        revision,
        compact_revision: mvcc.compacted_revision(),
        keys,
        leases,
        users: auth.users.len(),
        roles: auth.roles.len(),
        auth_enabled: auth.enabled,
        hash: hash.hash,
        size,
    })
}

#[cfg(test)]
mod tests;
