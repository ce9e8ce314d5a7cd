//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Reads are served locally: linearizable ones after a ReadIndex barrier, serializable ones at
//! once. Writes are proposed through Raft; read-only transactions are evaluated locally like reads.

use std::sync::Arc;

use keel_proto::etcdserverpb as pb;
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Api, convert, observe, validate};
use crate::auth::Access;
use crate::error::StoreError;
use crate::raft::{Command, CommandResponse};

/// The KV service.
#[derive(Clone, Debug)]
pub struct KvService {
    api: Arc<Api>,
}

impl KvService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

fn unexpected(resp: CommandResponse) -> Status {
    StoreError::Internal(format!("unexpected apply result {resp:?}")).into()
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        observe("Range", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let serializable = req.serializable;
            let req = convert::range_request(req);
            validate::check_range(&req)?;
            if !serializable {
                self.api.member.linearize().await?;
            }
            self.api.auth().check(caller.as_deref(), &req.key, &req.range_end, Access::Read)?;
            let core = self.api.member.core().clone();
            // A single key is a few point lookups, cheaper than handing the read to a blocking
            // thread and back; a range over many keys may take long, so it leaves the runtime.
            let resp = if req.range_end.is_empty() {
                core.mvcc().range(&req)
            } else {
                tokio::task::spawn_blocking(move || core.mvcc().range(&req))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
            }
            .map_err(StoreError::from)?;
            let header = self.api.header(resp.revision);
            Ok(Response::new(convert::range_response(resp, header)))
        })
        .await
    }

    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        observe("Put", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            self.api.check_size(req.encoded_len())?;
            let req = convert::put_request(req);
            validate::check_put(&req)?;
            match self.api.propose_as(caller, Command::Put(req)).await? {
                CommandResponse::Put(resp) => {
                    let header = self.api.header(resp.revision);
                    Ok(Response::new(convert::put_response(resp, header)))
                }
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        observe("DeleteRange", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            self.api.check_size(req.encoded_len())?;
            let req = convert::delete_request(req);
            validate::check_delete(&req)?;
            match self.api.propose_as(caller, Command::DeleteRange(req)).await? {
                CommandResponse::DeleteRange(resp) => {
                    let header = self.api.header(resp.revision);
                    Ok(Response::new(convert::delete_response(resp, header)))
                }
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        observe("Txn", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            self.api.check_size(req.encoded_len())?;
            let serializable = txn_is_serializable(&req);
            let req = convert::txn_request(req)?;
            validate::check_txn(&req, self.api.member.config().max_txn_ops)?;
            if req.is_read_only() {
                if !serializable {
                    self.api.member.linearize().await?;
                }
                let core = self.api.member.core().clone();
                let lease_keys = |_| Ok(Vec::new());
                self.api.auth().check_txn(caller.as_deref(), &req, &lease_keys)?;
                let resp = tokio::task::spawn_blocking(move || core.mvcc().execute_read_only_txn(&req))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))?
                    .map_err(StoreError::from)?;
                let header = self.api.header(resp.revision);
                return Ok(Response::new(convert::txn_response(resp, header)));
            }
            match self.api.propose_as(caller, Command::Txn(req)).await? {
                CommandResponse::Txn(resp) => {
                    let header = self.api.header(resp.revision);
                    Ok(Response::new(convert::txn_response(resp, header)))
                }
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        observe("Compact", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let mut progress = self.api.member.core().mvcc().compaction_progress();
            let revision = match self.api.propose_as(caller, Command::Compact { revision: req.revision }).await? {
                CommandResponse::Compact { revision } => revision,
                other => return Err(unexpected(other)),
            };
            if req.physical && !progress.wait_for(req.revision).await {
                return Err(StoreError::Stopped.into());
            }
            Ok(Response::new(pb::CompactionResponse { header: self.api.header(revision) }))
        })
        .await
    }
}

/// etcd's rule: a transaction is served without a read barrier only when every operation in both
/// branches is a serializable range.
fn txn_is_serializable(req: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(&op.request, Some(Request::RequestRange(r)) if r.serializable))
}
