//! The committed log, read back for journal followers (`keel ctl backup --follow`).
//!
//! Invariants: only entries this member has applied are handed out — they are committed, so no
//! later leader can truncate them — and they come out consecutive from the index asked for; when
//! this member no longer holds that index (purged behind a Raft snapshot) the answer says so
//! instead of skipping ahead, so a journal never has a silent hole.

use std::time::Duration;

use super::Member;
use crate::backend::Cf;
use crate::error::StoreError;

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
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || read_log(&**core.backend(), from, applied, max_bytes))
            .await
            .map_err(|err| StoreError::Internal(err.to_string()))?
    }
}

/// Reads entries `from..=last` (fewer past `max_bytes`) from the log column family.
fn read_log(
    backend: &dyn crate::backend::Backend,
    from: u64,
    last: u64,
    max_bytes: usize,
) -> Result<Vec<JournalRecord>, StoreError> {
    let mut records = Vec::new();
    let mut bytes = 0;
    let mut cursor = backend.cursor(Cf::RaftLog);
    cursor.seek(&from.to_be_bytes());
    let mut expected = from;
    while let Some((key, value)) = cursor.entry() {
        let index = key
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Internal(format!("malformed log key {key:?}")))?;
        if index > last || bytes >= max_bytes {
            break;
        }
        if index != expected {
            return Err(StoreError::LogPurged { requested: expected, first_held: index });
        }
        bytes += value.len();
        records.push(JournalRecord { index, entry: value.to_vec() });
        expected += 1;
        cursor.next();
    }
    cursor.status().map_err(|err| StoreError::Internal(err.to_string()))?;
    if records.is_empty() && from <= last {
        // Applied but not in the log: the entries were purged behind a snapshot.
        return Err(StoreError::LogPurged { requested: from, first_held: last + 1 });
    }
    Ok(records)
}
