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
        let size = self.core.backend().size_bytes();
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
