//! etcd's Cluster service: MemberList. Membership changes answer Unimplemented in this build.

use std::sync::Arc;

use keel_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::{Api, observe};
use crate::error::StoreError;
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

fn unsupported() -> Status {
    StoreError::Unsupported("membership changes are not supported by this build (single-member clusters)".into()).into()
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_add(&self, _r: Request<pb::MemberAddRequest>) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unsupported())
    }

    async fn member_remove(
        &self,
        _r: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(unsupported())
    }

    async fn member_update(
        &self,
        _r: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unsupported())
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
                members: self.api.member.members().into_iter().map(member).collect(),
            }))
        })
        .await
    }

    async fn member_promote(
        &self,
        _r: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unsupported())
    }
}
