//! Lease keep-alives and lookups, and the leader's expiry loop.
//!
//! Deadlines live only on the leader (etcd's design), so a follower forwards keep-alives and
//! time-to-live lookups to it. A keep-alive is answered only after a quorum confirmed that this
//! member still leads: a deposed leader that has not noticed yet must not renew. Expired leases are revoked through the log in bounded batches: at
//! most `EXPIRE_PER_ENTRY` leases per entry and `EXPIRE_ENTRIES_PER_TICK` entries per tick, so a
//! storm of expiries never occupies the apply path for long and other requests keep flowing.

use std::sync::Weak;
use std::time::Duration;

use super::Member;
use super::forward::Retry;
use crate::error::StoreError;
use crate::lease::LeaseInfo;
use crate::peer::{ForwardError, LeaseReply, LeaseRequest};
use crate::raft::Command;

/// Leases revoked per log entry by the expiry loop.
pub const EXPIRE_PER_ENTRY: usize = 128;
/// Expiry entries proposed per tick.
const EXPIRE_ENTRIES_PER_TICK: usize = 4;
const EXPIRE_TICK: Duration = Duration::from_millis(500);

impl Member {
    /// Renews a lease (on the leader; a follower forwards its concurrent keep-alives together,
    /// `batch.rs`); returns its TTL.
    pub async fn renew_lease(&self, id: i64) -> Result<i64, StoreError> {
        if !self.core.lessor().is_primary() {
            return self.keep_alives.call(id).await?;
        }
        match self.lease(LeaseRequest::Renew { id }).await? {
            LeaseReply::Renewed { ttl } => Ok(ttl),
            other => Err(StoreError::Internal(format!("unexpected lease reply {other:?}"))),
        }
    }

    /// A lease's remaining time (known only to the leader) and, when asked, its keys.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<(Option<LeaseInfo>, Vec<Vec<u8>>), StoreError> {
        match self.lease(LeaseRequest::TimeToLive { id, keys }).await? {
            LeaseReply::TimeToLive { info, keys } => Ok((info, keys)),
            other => Err(StoreError::Internal(format!("unexpected lease reply {other:?}"))),
        }
    }

    pub(super) async fn lease(&self, req: LeaseRequest) -> Result<LeaseReply, StoreError> {
        let mut retry = Retry::new(self.request_timeout);
        loop {
            match self.lease_local(&req).await {
                Err(StoreError::NotLeader) => {
                    if let Some((_, leader)) = self.remote_leader() {
                        match self.peers.lease(&leader, &req, retry.remaining()).await {
                            Ok(Ok(reply)) => return Ok(reply),
                            Ok(Err(StoreError::NotLeader))
                            | Err(ForwardError::NotSent(_) | ForwardError::Uncertain(_)) => {}
                            Ok(Err(err)) => return Err(err),
                        }
                    }
                }
                done => return done,
            }
            if !retry.wait().await {
                return Err(if self.leader_id().is_none() { StoreError::NoLeader } else { StoreError::Timeout });
            }
        }
    }

    /// Answers a lease request on this member; `NotLeader` unless it tracks deadlines (leads).
    pub async fn lease_local(&self, req: &LeaseRequest) -> Result<LeaseReply, StoreError> {
        let lessor = self.core.lessor();
        if !lessor.is_primary() {
            return Err(StoreError::NotLeader);
        }
        match req {
            LeaseRequest::Renew { id } => {
                // A leader cut off from the others still believes it leads until it learns
                // otherwise, while a new leader has already restarted every lease's TTL from its
                // election. Renewing there would promise the client a TTL the real leader never
                // heard of, and the lease would expire before it. So leadership is confirmed with
                // a quorum first (etcd does the same since 3.5.13).
                self.confirm_leadership().await?;
                Ok(LeaseReply::Renewed { ttl: lessor.renew(*id)? })
            }
            LeaseRequest::RenewMany { ids } => {
                // One confirmation covers them all, for the reason above.
                self.confirm_leadership().await?;
                let ttls = ids.iter().map(|&id| lessor.renew(id).map_err(StoreError::from)).collect();
                Ok(LeaseReply::RenewedMany { ttls })
            }
            LeaseRequest::TimeToLive { id, keys } => {
                // Reflect every grant and revoke committed before the lookup.
                self.wait_applied().await?;
                let info = lessor.lookup(*id);
                let keys = if *keys && info.is_some() { lessor.attached_keys(*id)? } else { Vec::new() };
                Ok(LeaseReply::TimeToLive { info, keys })
            }
        }
    }
}

/// Proposes revocation of expired leases, in bounded batches, while leading.
pub(super) async fn expire(member: Weak<Member>) {
    let mut tick = tokio::time::interval(EXPIRE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = member.upgrade() else { return };
        for _ in 0..EXPIRE_ENTRIES_PER_TICK {
            let ids = m.core.lessor().expired(EXPIRE_PER_ENTRY);
            if ids.is_empty() {
                break;
            }
            tracing::debug!(count = ids.len(), "revoking expired leases");
            // Only the leader expires leases: never forwarded.
            if let Err(err) = m.propose_local(Command::LeaseExpire { ids }).await {
                tracing::warn!(%err, "revoking expired leases failed; will retry");
                break;
            }
        }
    }
}
