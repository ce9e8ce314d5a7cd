//! etcd's Election service (`v3electionpb`): Campaign, Proclaim, Leader, Observe and Resign,
//! served by [`crate::concurrency`].
//!
//! Observe is a server stream: it ends when the client goes away, when the server shuts down, or
//! with an error when the member cannot serve reads for a while (the client then observes again,
//! on any member, and gets the current leader first).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use keel_proto::v3electionpb as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Api, convert, observe};
use crate::concurrency::{LeaderKey, Leadership};
use crate::error::StoreError;

/// The Election service.
#[derive(Clone, Debug)]
pub struct ElectionService {
    api: Arc<Api>,
}

impl ElectionService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    fn leader_response(&self, leadership: Leadership) -> pb::LeaderResponse {
        pb::LeaderResponse { header: self.api.header(leadership.revision), kv: Some(convert::kv(leadership.kv)) }
    }
}

/// etcd's error for Proclaim and Resign without a leader key.
fn missing_leader_key() -> Status {
    Status::invalid_argument("\"leader\" field must be provided")
}

fn leader_key(leader: pb::LeaderKey) -> LeaderKey {
    LeaderKey { name: leader.name, key: leader.key, rev: leader.rev, lease: leader.lease }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::election_server::Election for ElectionService {
    async fn campaign(&self, request: Request<pb::CampaignRequest>) -> Result<Response<pb::CampaignResponse>, Status> {
        observe("Campaign", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let (leader, held) =
                self.api.concurrency.campaign(caller.as_deref(), &req.name, req.lease, &req.value).await?;
            Ok(Response::new(pb::CampaignResponse {
                header: self.api.header(held.create_revision),
                leader: Some(pb::LeaderKey {
                    name: leader.name,
                    key: leader.key,
                    rev: leader.rev,
                    lease: leader.lease,
                }),
            }))
        })
        .await
    }

    async fn proclaim(&self, request: Request<pb::ProclaimRequest>) -> Result<Response<pb::ProclaimResponse>, Status> {
        observe("Proclaim", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let leader = req.leader.map(leader_key).ok_or_else(missing_leader_key)?;
            let revision = self.api.concurrency.proclaim(caller.as_deref(), &leader, &req.value).await?;
            Ok(Response::new(pb::ProclaimResponse { header: self.api.header(revision) }))
        })
        .await
    }

    async fn leader(&self, request: Request<pb::LeaderRequest>) -> Result<Response<pb::LeaderResponse>, Status> {
        observe("Leader", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let leadership = self.api.concurrency.leader(caller.as_deref(), &req.name).await?;
            Ok(Response::new(self.leader_response(leadership)))
        })
        .await
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, request: Request<pb::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        observe("Observe", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let updates = self.api.concurrency.observe(caller, &req.name)?;
            let service = self.clone();
            let stream = ReceiverStream::new(updates)
                .map(move |update: Result<Leadership, StoreError>| match update {
                    Ok(leadership) => Ok(service.leader_response(leadership)),
                    Err(err) => Err(Status::from(err)),
                })
                .take_until(self.api.shutting_down());
            Ok(Response::new(Box::pin(stream) as Self::ObserveStream))
        })
        .await
    }

    async fn resign(&self, request: Request<pb::ResignRequest>) -> Result<Response<pb::ResignResponse>, Status> {
        observe("Resign", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let leader = req.leader.map(leader_key).ok_or_else(missing_leader_key)?;
            let revision = self.api.concurrency.resign(caller.as_deref(), &leader).await?;
            Ok(Response::new(pb::ResignResponse { header: self.api.header(revision) }))
        })
        .await
    }
}
