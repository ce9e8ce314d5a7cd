//! etcd's Maintenance service: Status, Hash, HashKV, MoveLeader; alarm listing (no alarms exist
//! yet). Defragment, Snapshot, Downgrade and alarm changes answer Unimplemented.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::{Api, observe};
use crate::error::StoreError;
use crate::server::VERSION;

/// The Maintenance service.
#[derive(Clone, Debug)]
pub struct MaintenanceService {
    api: Arc<Api>,
}

impl MaintenanceService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

fn unsupported(what: &str) -> Status {
    StoreError::Unsupported(format!("{what} is not supported by this build")).into()
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        observe("Alarm", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_authenticated(caller.as_deref())?;
            let req = request.into_inner();
            if req.action != pb::alarm_request::AlarmAction::Get as i32 {
                return Err(unsupported("activating or deactivating alarms"));
            }
            Ok(Response::new(pb::AlarmResponse { header: self.api.current_header(), alarms: Vec::new() }))
        })
        .await
    }

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        observe("Status", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_authenticated(caller.as_deref())?;
            let status = self.api.member.status();
            Ok(Response::new(pb::StatusResponse {
                header: self.api.current_header(),
                version: VERSION.to_string(),
                db_size: status.db_size,
                leader: status.leader,
                raft_index: status.raft_index,
                raft_term: status.raft_term,
                raft_applied_index: status.raft_applied_index,
                errors: Vec::new(),
                db_size_in_use: status.db_size_in_use,
                is_learner: status.is_learner,
            }))
        })
        .await
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        Err(unsupported("defragment"))
    }

    async fn hash(&self, request: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        observe("Hash", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let core = self.api.member.core().clone();
            let hash = tokio::task::spawn_blocking(move || core.mvcc().hash_all())
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(StoreError::from)?;
            Ok(Response::new(pb::HashResponse { header: self.api.current_header(), hash }))
        })
        .await
    }

    async fn hash_kv(&self, request: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        observe("HashKV", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let revision = request.into_inner().revision;
            let core = self.api.member.core().clone();
            let hash = tokio::task::spawn_blocking(move || core.mvcc().hash_kv(revision))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(StoreError::from)?;
            Ok(Response::new(pb::HashKvResponse {
                header: self.api.current_header(),
                hash: hash.hash,
                compact_revision: hash.compact_revision,
                hash_revision: hash.hash_revision,
            }))
        })
        .await
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unsupported("snapshot"))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        observe("MoveLeader", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            self.api.member.move_leader(request.into_inner().target_id).await?;
            Ok(Response::new(pb::MoveLeaderResponse { header: self.api.current_header() }))
        })
        .await
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unsupported("downgrade"))
    }
}
