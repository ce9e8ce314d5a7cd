//! Point-in-time restore: a new member's data directory holding the state exactly as it was at a
//! chosen revision, built from a backup directory (`journal`): the newest base snapshot at or
//! before the revision, then the journal's log entries replayed through the state machine's own
//! apply until the next change would pass the revision.
//!
//! Invariants:
//! - replay is the members' deterministic apply (the same code, the same permission checks at each
//!   log position), so the result is what every member held at that revision: keys with their
//!   history, leases, users and roles;
//! - "at revision R" includes the entries after R's change that did not change the revision
//!   (lease grants, auth changes) up to the first one that would have made R+1, as a member
//!   answering a request at revision R would have held them;
//! - nothing reaches the target unless the revision was reached: the database is built as
//!   `db.restoring` and removed on any failure (a gap in the journal, a revision beyond its end).

use std::path::Path;
use std::sync::Arc;

use openraft::EntryPayload;
use openraft::entry::RaftEntry;

use super::journal::{self, Base, JournalError};
use super::{BackupError, DB_DIR, RESTORING_DIR, SnapshotSummary, check_target, io_error, store_error};
use crate::backend::{Backend, Cf, Durability, RocksBackend, RocksOptions, WriteBatch};
use crate::raft::{Entry, RevisionLimitReached, StoreCore, decode};
use crate::watch::WatchConfig;

/// Smallest lease TTL apply grants during replay: etcd's (and Keel's) default, 1.5 default
/// election timeouts rounded up to whole seconds.
const REPLAY_MIN_LEASE_TTL: i64 = 2;
/// Scratch directory (beside the database being built) the replaying store may use for snapshots.
const REPLAY_SCRATCH_DIR: &str = "snap.restoring";

fn journal_error(err: JournalError) -> BackupError {
    BackupError::Journal(err.to_string())
}

/// Builds a member data directory at `data_dir` holding the state at `revision`, from the backup
/// directory `dir`.
pub fn restore_to_revision(dir: &Path, revision: i64, data_dir: &Path) -> Result<SnapshotSummary, BackupError> {
    check_target(data_dir)?;
    let bases = journal::bases(dir).map_err(journal_error)?;
    let Some(base) = bases.iter().rev().find(|b| b.revision <= revision).cloned() else {
        return Err(match bases.first() {
            Some(first) => BackupError::Journal(format!(
                "revision {revision} is older than the oldest base snapshot in {} (revision {})",
                dir.display(),
                first.revision
            )),
            None => BackupError::Journal(format!("{} holds no base snapshot", dir.display())),
        });
    };
    super::verify_file(&base.path)?;
    let segments = journal::read_all(dir).map_err(journal_error)?;

    let created = !data_dir.exists();
    std::fs::create_dir_all(data_dir).map_err(io_error(format!("creating {}", data_dir.display())))?;
    let building = data_dir.join(RESTORING_DIR);
    let scratch = data_dir.join(REPLAY_SCRATCH_DIR);
    let next_base = bases.iter().find(|b| b.index > base.index).map(|b| b.revision);
    let built = build(&base, next_base, &segments, revision, &building, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let summary = match built {
        Ok(summary) => summary,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&building);
            if created {
                // Leave no trace: a directory that did not exist before does not exist after.
                let _ = std::fs::remove_dir(data_dir);
            }
            return Err(err);
        }
    };
    std::fs::rename(&building, data_dir.join(DB_DIR)).map_err(io_error("moving the restored database in place"))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(format!("syncing {}", data_dir.display())))?;
    Ok(summary)
}

/// Restores `base` into `building` and replays the journal up to `revision`. `next_base` is the
/// revision of the next newer base, if any (to tell a gap from the journal's end).
fn build(
    base: &Base,
    next_base: Option<i64>,
    segments: &[Vec<journal::Record>],
    revision: i64,
    building: &Path,
    scratch: &Path,
) -> Result<SnapshotSummary, BackupError> {
    let backend: Arc<dyn Backend> =
        Arc::new(RocksBackend::open(building, &RocksOptions::default()).map_err(store_error)?);
    // The base goes in whole (its applied log id included: replay continues from it).
    super::load_snapshot(&base.path, &*backend, |_, _| true)?;
    let core =
        StoreCore::open(backend.clone(), scratch, REPLAY_MIN_LEASE_TTL, WatchConfig::default()).map_err(store_error)?;
    core.set_revision_limit(revision);
    let mut next = base.index + 1;
    let mut reached = core.mvcc().current_revision() == revision;
    'replay: for record in segments.iter().flatten() {
        if record.index < next {
            continue;
        }
        if record.index > next {
            return Err(gap(revision, core.mvcc().current_revision(), next_base));
        }
        let entry: Entry = decode(&record.entry)
            .map_err(|err| BackupError::Journal(format!("journal entry {} does not decode: {err}", record.index)))?;
        if entry.index() != record.index {
            return Err(BackupError::Journal(format!(
                "journal record {} holds log entry {}",
                record.index,
                entry.index()
            )));
        }
        next += 1;
        let log_id = entry.log_id();
        let EntryPayload::Normal(command) = entry.payload else { continue };
        match core.apply_command(command, &log_id) {
            Ok(_) => {}
            Err(err) if err.get_ref().is_some_and(|inner| inner.is::<RevisionLimitReached>()) => {
                reached = true;
                break 'replay;
            }
            Err(err) => return Err(store_error(format!("replaying journal entry {}: {err}", record.index))),
        }
        if core.mvcc().current_revision() == revision {
            reached = true;
        }
    }
    let current = core.mvcc().current_revision();
    if (!reached || current != revision) && next_base.is_some() {
        return Err(gap(revision, current, next_base));
    }
    if !reached || current != revision {
        return Err(BackupError::Journal(format!(
            "revision {revision} is beyond the end of the journal, which reaches revision {current} (entry {})",
            next - 1
        )));
    }
    // The result founds a new cluster: drop the old cluster's Raft position and membership.
    let mut batch = WriteBatch::new();
    for key in super::CLUSTER_SPECIFIC_KEYS {
        batch.delete(Cf::Meta, key);
    }
    backend.write(batch, Durability::Synced).map_err(store_error)?;
    backend.flush_wal().map_err(store_error)?;
    drop(core);
    let size = std::fs::metadata(&base.path).map(|m| m.len()).unwrap_or_default();
    super::summarize(backend, size)
}

/// The error for a revision that falls where the journal has no entries: after what was followed
/// and before the next base (the follower was away longer than the members kept their log).
fn gap(revision: i64, reached: i64, next_base: Option<i64>) -> BackupError {
    let resumes = next_base.map_or_else(String::new, |r| format!(" and resumes at the next base (revision {r})"));
    BackupError::Journal(format!(
        "revision {revision} falls in a gap of the backup: the journal stops at revision {reached}{resumes}; the \
         entries in between were purged by the members before the follower saw them, so it cannot be restored exactly"
    ))
}
