//! etcd's Cluster service: member list and membership changes (decided by the leader; a follower
//! forwards them).

use std::sync::Arc;

use keel_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::{Api, observe};
use crate::peer::MembershipChange;
use crate::server::MemberInfo;

/// The Cluster service.
#[derive(Clone, Debug)]
pub struct ClusterService {
    api: Arc<Api>,
}

impl ClusterService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

fn member(info: MemberInfo) -> pb::Member {
    pb::Member {
        id: info.id,
        name: info.name,
        peer_ur_ls: info.peer_urls,
        client_ur_ls: info.client_urls,
        is_learner: info.is_learner,
    }
}

fn members(infos: Vec<MemberInfo>) -> Vec<pb::Member> {
    infos.into_iter().map(member).collect()
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        observe("MemberAdd", async {
            // Membership changes are administration (etcd leaves them unchecked; we do not).
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let req = request.into_inner();
            let change = MembershipChange::Add { peer_urls: req.peer_ur_ls, is_learner: req.is_learner };
            let reply = self.api.member.change_membership(change).await?;
            Ok(Response::new(pb::MemberAddResponse {
                header: self.api.current_header(),
                member: reply.added.map(member),
                members: members(reply.members),
            }))
        })
        .await
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        observe("MemberRemove", async {
            // Membership changes are administration (etcd leaves them unchecked; we do not).
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let id = request.into_inner().id;
            let reply = self.api.member.change_membership(MembershipChange::Remove { id }).await?;
            Ok(Response::new(pb::MemberRemoveResponse {
                header: self.api.current_header(),
                members: members(reply.members),
            }))
        })
        .await
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        observe("MemberUpdate", async {
            // Membership changes are administration (etcd leaves them unchecked; we do not).
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let req = request.into_inner();
            let change = MembershipChange::Update { id: req.id, peer_urls: req.peer_ur_ls };
            let reply = self.api.member.change_membership(change).await?;
            Ok(Response::new(pb::MemberUpdateResponse {
                header: self.api.current_header(),
                members: members(reply.members),
            }))
        })
        .await
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        observe("MemberList", async {
            if request.into_inner().linearizable {
                self.api.member.linearize().await?;
            }
            Ok(Response::new(pb::MemberListResponse {
                header: self.api.current_header(),
                members: members(self.api.member.members()),
            }))
        })
        .await
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        observe("MemberPromote", async {
            // Membership changes are administration (etcd leaves them unchecked; we do not).
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let id = request.into_inner().id;
            let reply = self.api.member.change_membership(MembershipChange::Promote { id }).await?;
            Ok(Response::new(pb::MemberPromoteResponse {
                header: self.api.current_header(),
                members: members(reply.members),
            }))
        })
        .await
    }
}
