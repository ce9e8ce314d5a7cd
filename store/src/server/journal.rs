//! The committed log, read back for journal followers (`keel ctl backup --follow`).
//!
//! Invariants: only entries this member has applied are handed out — they are committed, so no
//! later leader can truncate them — and they come out consecutive from the index asked for; when
//! this member no longer holds that index (purged behind a Raft snapshot) the answer says so
//! instead of skipping ahead, so a journal never has a silent hole.

use std::time::Duration;

use super::Member;
use crate::error::StoreError;
use crate::raft::LogStore;

/// One committed log entry as stored (Keel's encoded `Entry`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// Raft log index.
    pub index: u64,
    /// The encoded entry.
    pub entry: Vec<u8>,
}

impl Member {
    /// Applied entries from `from` on, at most about `max_bytes` of them (at least one when any is
    /// ready). Waits up to `wait` for entry `from` to be applied; returns nothing if it was not.
    pub async fn journal(&self, from: u64, max_bytes: usize, wait: Duration) -> Result<Vec<JournalRecord>, StoreError> {
        let applied = self.raft.wait(Some(wait)).applied_index_at_least(Some(from), "journal follower waits").await;
        let applied = match applied {
            Ok(metrics) => metrics.last_applied.map_or(0, |id| id.index()),
            Err(_) => return Ok(Vec::new()),
        };
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || read_log(&log, from, applied, max_bytes))
            .await
            .map_err(|err| StoreError::Internal(err.to_string()))?
    }
}

/// Reads entries `from..=last` (fewer past `max_bytes`) from the log.
fn read_log(log: &LogStore, from: u64, last: u64, max_bytes: usize) -> Result<Vec<JournalRecord>, StoreError> {
    if from > last {
        return Ok(Vec::new());
    }
    let read = log.read_encoded(from, last, max_bytes).map_err(|err| StoreError::Internal(err.to_string()))?;
    match read.first() {
        // Applied but not in the log: the entries were purged behind a snapshot.
        None => Err(StoreError::LogPurged { requested: from, first_held: last + 1 }),
        Some(&(first, _)) if first != from => Err(StoreError::LogPurged { requested: from, first_held: first }),
        Some(_) => Ok(read.into_iter().map(|(index, entry)| JournalRecord { index, entry }).collect()),
    }
}
