//! Follows Raft's metrics for this member:
//! - gaining leadership promotes the lease table (every lease gets a full TTL, etcd's rule, so no
//!   lease expires early because leadership moved); losing it demotes the table;
//! - once any leader is known, this member publishes its name and client URLs through the log
//!   (forwarded to the leader when needed), as an etcd member does after it starts;
//! - a member that sees itself dropped from the committed membership marks itself removed, and the
//!   process serving it exits.

use std::sync::Weak;
use std::time::Duration;

use openraft::ServerState;
use openraft::type_config::async_runtime::WatchReceiver;

use super::Member;
use crate::raft::Command;

pub(super) async fn track(member: Weak<Member>) {
    // The server metrics change only with the vote, the server state, the leader or the membership;
    // the full metrics change with every commit, and following them would wake this task (and copy
    // the metrics) once per write.
    let Some(mut metrics) = member.upgrade().map(|m| m.raft.server_metrics()) else { return };
    let mut leading = false;
    let mut was_member = false;
    loop {
        let Some(m) = member.upgrade() else { return };
        let snapshot = metrics.borrow_watched().clone();
        // Judged from the server metrics themselves: openraft sends the full metrics after them, so
        // `Member::is_leader` may not show the change that woke this task yet.
        let is_leader = snapshot.state == ServerState::Leader && snapshot.current_leader == Some(m.member_id);
        if is_leader && !leading {
            m.core.lessor().promote();
            tracing::info!(term = m.raft_term(), "became leader");
        } else if !is_leader && leading {
            m.core.lessor().demote();
            tracing::info!("lost leadership");
        }
        leading = is_leader;

        let in_membership = snapshot.committed_membership_config.membership().get_node(&m.member_id).is_some();
        if in_membership {
            was_member = true;
        } else if was_member && !*m.removed.borrow() {
            tracing::error!("this member has been removed from the cluster");
            m.removed.send_replace(true);
        }
        drop(m);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Attempts to publish attributes before giving up (each bounded by the request timeout).
const PUBLISH_ATTEMPTS: u32 = 120;
const PUBLISH_PAUSE: Duration = Duration::from_millis(500);

/// Publishes this member's attributes as soon as a leader is known (and this member is in the
/// membership), retrying a bounded number of times.
pub(super) async fn publish(member: Weak<Member>) {
    for _ in 0..PUBLISH_ATTEMPTS {
        let Some(m) = member.upgrade() else { return };
        let id = m.member_id;
        let ready = m
            .raft
            .wait(Some(m.request_timeout))
            .metrics(
                |metrics| {
                    metrics.current_leader.is_some() && metrics.membership_config.membership().get_node(&id).is_some()
                },
                "a leader is known and this member belongs to the cluster",
            )
            .await
            .is_ok();
        if ready && publish_attributes(&m).await {
            return;
        }
        drop(m);
        tokio::time::sleep(PUBLISH_PAUSE).await;
    }
    tracing::error!("gave up publishing this member's name and client URLs");
}

/// Records this member's name and client URLs through the log; true when done or already recorded.
async fn publish_attributes(member: &Member) -> bool {
    let current = member.core.member_attributes().get(&member.member_id).cloned();
    let wanted = (member.config.name.clone(), member.config.advertise_client_urls.clone());
    if current.is_some_and(|a| (a.name, a.client_urls) == wanted) {
        return true;
    }
    let command = Command::PublishMember { id: member.member_id, name: wanted.0, client_urls: wanted.1 };
    match member.propose(command).await {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(%err, "publishing member attributes failed; will retry");
            false
        }
    }
}
