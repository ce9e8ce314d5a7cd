//! Cluster membership: listing members, changing membership (on the leader, through openraft's joint
//! consensus), and moving leadership.
//!
//! Checks follow etcd: malformed peer URLs, a peer URL already in use, an unknown member, promoting
//! a voter, or promoting a learner that is far behind (its replicated log below 90% of the
//! leader's) are refused with etcd's errors before anything changes. Added members get a fresh id
//! derived from their peer URLs, the cluster token and the time, so ids are never reused.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;

use super::forward::Retry;
use super::{Member, MemberInfo, member_id, parse_url};
use crate::error::StoreError;
use crate::peer::{ClusterInfo, ForwardError, MembershipChange, MembershipReply};
use crate::raft::MemberNode;

/// A learner may be promoted once it has replicated this share of the leader's log (etcd's rule).
const PROMOTE_READY_RATIO: f64 = 0.9;

fn check_urls(urls: &[String]) -> Result<(), StoreError> {
    if urls.is_empty() {
        return Err(StoreError::MemberBadUrls);
    }
    for url in urls {
        parse_url(url).map_err(|_| StoreError::MemberBadUrls)?;
    }
    Ok(())
}

fn change_error(err: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>) -> StoreError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => StoreError::LeaderChanged,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => {
            tracing::info!(%err, "membership change refused");
            StoreError::MembershipChangeInProgress
        }
        RaftError::APIError(other) => StoreError::Internal(other.to_string()),
        RaftError::Fatal(_) => StoreError::Stopped,
    }
}

impl Member {
    /// The cluster's members, from this member's applied membership.
    pub fn members(&self) -> Vec<MemberInfo> {
        let membership = self.core.membership();
        let attributes = self.core.member_attributes();
        let config = membership.membership();
        let voters: BTreeSet<u64> = config.voter_ids().collect();
        config
            .nodes()
            .map(|(id, node)| {
                let published = attributes.get(id);
                MemberInfo {
                    id: *id,
                    name: published.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// What a joining member needs to know.
    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo { cluster_id: self.cluster_id, members: self.members() }
    }

    /// Applies a membership change through the leader (forwarded if needed).
    pub async fn change_membership(&self, change: MembershipChange) -> Result<MembershipReply, StoreError> {
        let mut retry = Retry::new(self.request_timeout);
        loop {
            match self.change_membership_local(change.clone()).await {
                Err(StoreError::NotLeader) => {
                    if let Some((_, leader)) = self.remote_leader() {
                        match self.peers.change_membership(&leader, &change, retry.remaining()).await {
                            Ok(Ok(reply)) => return Ok(reply),
                            Ok(Err(StoreError::NotLeader)) | Err(ForwardError::NotSent(_)) => {}
                            Ok(Err(err)) => return Err(err),
                            Err(ForwardError::Uncertain(_)) => return Err(StoreError::Timeout),
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

    /// Applies a membership change on this member; `NotLeader` unless it leads.
    pub async fn change_membership_local(&self, change: MembershipChange) -> Result<MembershipReply, StoreError> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let _one_at_a_time = self.membership_change.lock().await;
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let nodes: BTreeMap<u64, MemberNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let url_owner = |url: &String| nodes.iter().find(|(_, n)| n.peer_urls.contains(url)).map(|(id, _)| *id);

        let mut added = None;
        match change {
            MembershipChange::Add { peer_urls, is_learner } => {
                check_urls(&peer_urls)?;
                if peer_urls.iter().any(|u| url_owner(u).is_some()) {
                    return Err(StoreError::PeerUrlExists);
                }
                let mut id = 0;
                for attempt in 0u32.. {
                    let salt = format!("{}/{}/{attempt}", self.config.initial_cluster_token, super::now_millis());
                    id = member_id(&peer_urls, &salt);
                    if !nodes.contains_key(&id) {
                        break;
                    }
                }
                let node = MemberNode { name: String::new(), peer_urls: peer_urls.clone() };
                self.raft.add_learner(id, node, false).await.map_err(change_error)?;
                if !is_learner {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(change_error)?;
                }
                added = Some(MemberInfo { id, name: String::new(), peer_urls, client_urls: Vec::new(), is_learner });
            }
            MembershipChange::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(StoreError::MemberNotFound);
                }
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft.change_membership(change, false).await.map_err(change_error)?;
            }
            MembershipChange::Update { id, peer_urls } => {
                check_urls(&peer_urls)?;
                let Some(node) = nodes.get(&id) else { return Err(StoreError::MemberNotFound) };
                if peer_urls.iter().any(|u| url_owner(u).is_some_and(|owner| owner != id)) {
                    return Err(StoreError::PeerUrlExists);
                }
                let node = MemberNode { name: node.name.clone(), peer_urls };
                self.raft
                    .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])), true)
                    .await
                    .map_err(change_error)?;
            }
            MembershipChange::Promote { id } => {
                if !nodes.contains_key(&id) {
                    return Err(StoreError::MemberNotFound);
                }
                if voters.contains(&id) {
                    return Err(StoreError::MemberNotLearner);
                }
                let leader_index = metrics.last_log_index.unwrap_or(0);
                let learner_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|log_id| log_id.index());
                let ready = learner_index.is_some_and(|i| i as f64 >= leader_index as f64 * PROMOTE_READY_RATIO);
                if !ready {
                    return Err(StoreError::LearnerNotReady);
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
            }
        }
        Ok(MembershipReply { added, members: self.members() })
    }

    /// Moves leadership to `target`; only the leader can. Waits (bounded) for the handover.
    pub async fn move_leader(&self, target: u64) -> Result<(), StoreError> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let voters: BTreeSet<u64> =
            self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
        if !voters.contains(&target) {
            return Err(StoreError::BadLeaderTransferee);
        }
        if target == self.member_id {
            return Ok(());
        }
        self.raft.trigger().transfer_leader(target).await.map_err(|_| StoreError::Stopped)?;
        self.raft
            .wait(Some(self.request_timeout.max(Duration::from_secs(5))))
            .current_leader(target, "leadership moves to the transferee")
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Timeout)
    }
}
