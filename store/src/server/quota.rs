//! The backend quota (`--quota-backend-bytes`) and alarm changes.
//!
//! Like etcd: before proposing a command that grows the store, a member compares its own data size
//! plus the command's cost with its quota; over it, the member raises NOSPACE through the log and
//! refuses the command. Once NOSPACE is applied, every member's state machine refuses commands that
//! grow the store (`crate::alarm::grows_store`), whatever its own size, until an operator disarms
//! the alarm. Reads, deletes, compactions and lease revokes keep working, so space can be freed.
//!
//! Invariant: the refusal that matters is in apply (deterministic, the same on every member); the
//! checks here only spare the log entries that apply would refuse anyway and raise the alarm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Member;
use crate::alarm::{self, AlarmAction, AlarmKind, AlarmMember};
use crate::error::StoreError;
use crate::raft::{Command, CommandResponse};

impl Member {
    /// Refuses `command` when it grows the store and NOSPACE is raised or this member is over its
    /// quota; in the second case raises NOSPACE for this member first.
    pub(super) async fn check_quota(&self, command: &Command) -> Result<(), StoreError> {
        if !alarm::grows_store(command) {
            return Ok(());
        }
        if self.core.out_of_space() {
            return Err(StoreError::NoSpace);
        }
        let size = self.db_size.get(|| self.core.backend().size_bytes());
        let quota = self.config.quota_backend_bytes;
        if size.saturating_add(alarm::cost(command)) <= quota {
            return Ok(());
        }
        tracing::warn!(size, quota, "the data would outgrow --quota-backend-bytes; raising the NOSPACE alarm");
        let alarm = AlarmMember { member: self.member_id, kind: AlarmKind::NoSpace };
        self.forward_proposal(Command::Alarm { action: AlarmAction::Activate, alarm }).await?;
        Err(StoreError::NoSpace)
    }

    /// Raises or clears an alarm through the log on behalf of `caller` (who needs admin when auth
    /// is on); returns the alarms that changed (none when it was a no-op).
    pub async fn change_alarm(
        &self,
        caller: Option<&str>,
        action: AlarmAction,
        alarm: AlarmMember,
    ) -> Result<Vec<AlarmMember>, StoreError> {
        match self.forward_proposal(Command::as_user(caller, Command::Alarm { action, alarm })).await? {
            CommandResponse::Alarm { changed } => Ok(changed),
            other => Err(StoreError::Internal(format!("unexpected response to an alarm change: {other:?}"))),
        }
    }
}

/// How long a sampled data size serves quota checks. Asking RocksDB for its sizes takes a lock and
/// a walk of every column family, too much for every write; between samples the data can outgrow
/// the quota by at most what one member proposes in this time, as etcd's quota is approximate too.
pub(super) const SIZE_SAMPLE: Duration = Duration::from_millis(100);

/// The last sampled data size. Two atomics, no lock: a race between two samplers only means both
/// ask the backend, and either answer is a valid sample.
#[derive(Debug)]
pub(super) struct SizeSample {
    origin: Instant,
    /// Bytes.
    size: AtomicU64,
    /// When `size` was sampled, in microseconds since `origin` (0: never).
    sampled_at: AtomicU64,
}

impl Default for SizeSample {
    fn default() -> Self {
        Self { origin: Instant::now(), size: AtomicU64::new(0), sampled_at: AtomicU64::new(0) }
    }
}

impl SizeSample {
    /// The size, from `measure` when the last sample is older than [`SIZE_SAMPLE`].
    fn get(&self, measure: impl FnOnce() -> u64) -> u64 {
        // +1 so that a sample taken at `origin` is not mistaken for "never".
        let now = self.origin.elapsed().as_micros() as u64 + 1;
        let sampled_at = self.sampled_at.load(Ordering::Acquire);
        if sampled_at != 0 && now.saturating_sub(sampled_at) < SIZE_SAMPLE.as_micros() as u64 {
            return self.size.load(Ordering::Acquire);
        }
        let size = measure();
        self.size.store(size, Ordering::Release);
        self.sampled_at.store(now, Ordering::Release);
        size
    }
}
