//! etcd's Lock service (`v3lockpb`): Lock and Unlock, served by [`crate::concurrency`].
//!
//! `LockResponse.header.revision` is the lock key's create revision, the fencing token (for an
//! uncontended lock it is also the revision that granted it, as in etcd).

use std::sync::Arc;

use keel_proto::v3lockpb as pb;
use tonic::{Request, Response, Status};

use super::{Api, observe};

/// The Lock service.
#[derive(Clone, Debug)]
pub struct LockService {
    api: Arc<Api>,
}

impl LockService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

#[tonic::async_trait]
impl pb::lock_server::Lock for LockService {
    async fn lock(&self, request: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        observe("Lock", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let held = self.api.concurrency.lock(caller.as_deref(), &req.name, req.lease).await?;
            Ok(Response::new(pb::LockResponse { header: self.api.header(held.create_revision), key: held.key }))
        })
        .await
    }

    async fn unlock(&self, request: Request<pb::UnlockRequest>) -> Result<Response<pb::UnlockResponse>, Status> {
        observe("Unlock", async {
            let caller = self.api.caller(&request)?;
            let req = request.into_inner();
            let revision = self.api.concurrency.unlock(caller.as_deref(), &req.key).await?;
            Ok(Response::new(pb::UnlockResponse { header: self.api.header(revision) }))
        })
        .await
    }
}
