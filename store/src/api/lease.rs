//! etcd's Lease service. Grants and revokes go through the log; keep-alives renew the leader's
//! in-memory deadline (not replicated, as in etcd) and time-to-live lookups read it, so a follower
//! forwards both to the leader; the lease list is read locally.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::etcdserverpb as pb;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, observe};
use crate::auth::Access;
use crate::error::StoreError;
use crate::raft::{Command, CommandResponse};

/// The Lease service.
#[derive(Clone, Debug)]
pub struct LeaseService {
    api: Arc<Api>,
}

impl LeaseService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        observe("LeaseGrant", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            self.api.check_size(req.encoded_len())?;
            let id = if req.id == 0 { self.api.member.next_lease_id() } else { req.id };
            match self.api.propose_as(caller, Command::LeaseGrant { id, ttl: req.ttl }).await? {
                CommandResponse::LeaseGrant { id, ttl, revision } => Ok(Response::new(pb::LeaseGrantResponse {
                    header: self.api.header(revision),
                    id,
                    ttl,
                    error: String::new(),
                })),
                other => Err(StoreError::Internal(format!("unexpected apply result {other:?}")).into()),
            }
        })
        .await
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        observe("LeaseRevoke", async {
            let caller = self.api.caller(&request)?;
            let id = request.into_inner().id;
            match self.api.propose_as(caller, Command::LeaseRevoke { id }).await? {
                CommandResponse::LeaseRevoke { revision } => {
                    Ok(Response::new(pb::LeaseRevokeResponse { header: self.api.header(revision) }))
                }
                other => Err(StoreError::Internal(format!("unexpected apply result {other:?}")).into()),
            }
        })
        .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let caller = self.api.caller(&request)?;
        self.api.auth().check_authenticated(caller.as_deref())?;
        metrics::counter!("keel_grpc_requests_total", "method" => "LeaseKeepAlive", "code" => "OK").increment(1);
        let inbound = request.into_inner();
        // The response stream reads the next request itself, so each keep-alive is served where
        // the connection polls its response (no task, channel and two wake-ups in between), one
        // at a time per stream and only as fast as the client takes the answers. It ends when the
        // client closes its side or goes away, after an error answer, or when the server shuts
        // down.
        let responses = futures::stream::unfold(Some((inbound, self.api.clone())), |state| async move {
            let (mut inbound, api) = state?;
            let req = inbound.message().await.ok().flatten()?;
            let ttl = match api.member.renew_lease(req.id).await {
                Ok(ttl) => ttl,
                // etcd answers a keep-alive for an unknown lease with TTL 0.
                Err(StoreError::LeaseNotFound) => 0,
                Err(err) => return Some((Err(Status::from(err)), None)),
            };
            let message = pb::LeaseKeepAliveResponse { header: api.current_header(), id: req.id, ttl };
            Some((Ok(message), Some((inbound, api))))
        });
        let responses = futures::StreamExt::take_until(responses, self.api.shutting_down());
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        observe("LeaseTimeToLive", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            self.api.auth().check_authenticated(caller.as_deref())?;
            let (info, keys) = self.api.member.lease_time_to_live(req.id, req.keys).await?;
            // Listing a lease's keys reveals their names: etcd asks for read access to each.
            let auth = self.api.auth();
            if !auth.is_admin(caller.as_deref()) {
                for key in &keys {
                    auth.check(caller.as_deref(), key, &[], Access::Read)?;
                }
            }
            let Some(info) = info else {
                // etcd answers a missing lease with TTL -1 rather than an error.
                return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                    header: self.api.current_header(),
                    id: req.id,
                    ttl: -1,
                    ..Default::default()
                }));
            };
            Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: self.api.current_header(),
                id: req.id,
                ttl: info.remaining_ttl,
                granted_ttl: info.granted_ttl,
                keys,
            }))
        })
        .await
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        observe("LeaseLeases", async {
            let caller = self.api.caller(&request)?;
            self.api.member.wait_applied().await?;
            let ids = self.api.member.core().lessor().ids();
            // etcd's rule: administrators see every lease, others need read access to every key
            // attached to any lease.
            let auth = self.api.auth();
            auth.check_authenticated(caller.as_deref())?;
            if !auth.is_admin(caller.as_deref()) {
                for &id in &ids {
                    // A lease revoked since `ids()` was taken has no keys left to reveal.
                    let keys = match self.api.member.core().lessor().attached_keys(id) {
                        Err(crate::lease::LeaseError::NotFound) => Vec::new(),
                        other => other.map_err(StoreError::from)?,
                    };
                    for key in keys {
                        auth.check(caller.as_deref(), &key, &[], Access::Read)?;
                    }
                }
            }
            let leases = ids.into_iter().map(|id| pb::LeaseStatus { id }).collect();
            Ok(Response::new(pb::LeaseLeasesResponse { header: self.api.current_header(), leases }))
        })
        .await
    }
}
