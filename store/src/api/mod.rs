//! The client API: gRPC services wire-compatible with etcd v3 (`etcdserverpb`).
//!
//! API boundary: this is the only module that knows protobuf or gRPC. It validates requests with
//! etcd's rules, converts them to domain types, hands writes to the member's proposer and reads to
//! MVCC, and maps every error through one table (`status`). Besides `etcdserverpb` it serves
//! etcd's `v3lockpb` and `v3electionpb` (over `crate::concurrency`), and Keel's own
//! `keeljournal` (the committed log, for point-in-time backups). Absent on purpose: Downgrade.
//!
//! Auth: each handler resolves its caller (`Api::caller`: token, else client-certificate CN) and
//! either proposes on the caller's behalf (apply checks permissions) or checks the local auth state
//! itself after its read barrier (reads, watches, admin-only queries).

mod auth;
mod cluster;
mod convert;
mod election;
mod hpack;
pub(crate) mod http2;
mod journal;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod status;
mod validate;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use keel_proto::etcdserverpb as pb;
use tonic::Status;

pub use http2::PeerIdentity;
pub use status::{code as status_code, to_status};

use crate::error::StoreError;
use crate::server::Member;

/// Extra room gRPC frames get above `--max-request-bytes` (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// What every service shares.
#[derive(Debug)]
pub(crate) struct Api {
    member: Arc<Member>,
    /// Becomes true when the server starts shutting down. Long-lived streams (watch, keep-alive)
    /// end on it, because graceful shutdown waits for every open stream to finish.
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Locks and elections (the Lock and Election services).
    concurrency: crate::concurrency::Coordinator,
    /// Bounds client snapshots built at once (Maintenance Snapshot).
    snapshot_permits: Arc<tokio::sync::Semaphore>,
}

impl Api {
    /// A full response header at `revision`.
    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.member.cluster_id(),
            member_id: self.member.member_id(),
            revision,
            raft_term: self.member.raft_term(),
        })
    }

    /// A header at the latest revision.
    fn current_header(&self) -> Option<pb::ResponseHeader> {
        self.header(self.member.core().mvcc().current_revision())
    }

    /// Completes when the server starts shutting down.
    fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|down| *down).await;
        }
    }

    /// The user a request acts as: with auth on, the user of its token, else (with
    /// `--client-cert-auth`) the common name of its client certificate; `None` when the request
    /// carries no credentials. A token that does not verify is an error, as in etcd.
    ///
    /// With auth off here the certificate's user is still attached: an auth enable may be
    /// committed but not yet applied on this member, and the apply (which decides, and ignores the
    /// caller while auth is off) would otherwise refuse the request as nameless.
    fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Option<String>, StoreError> {
        let auth = self.member.core().auth().state();
        if !auth.enabled {
            return Ok(self.certificate_user(request));
        }
        let metadata = request.metadata();
        let token = metadata.get("token").or_else(|| metadata.get("authorization")).and_then(|v| v.to_str().ok());
        if let Some(token) = token {
            let token = token.strip_prefix("Bearer ").unwrap_or(token);
            return auth.user_for_token(token, now_ms()).map(Some).ok_or(StoreError::InvalidAuthToken);
        }
        Ok(self.certificate_user(request))
    }

    /// With `--client-cert-auth`, the common name of the request's client certificate.
    fn certificate_user<T>(&self, request: &tonic::Request<T>) -> Option<String> {
        if !self.member.config().client_cert_auth {
            return None;
        }
        let identity = request.extensions().get::<PeerIdentity>()?;
        identity.certificate.as_ref().and_then(|c| c.common_name.clone())
    }

    /// Proposes `command` on behalf of `caller`; apply checks the caller's permissions.
    async fn propose_as(
        &self,
        caller: Option<String>,
        command: crate::raft::Command,
    ) -> Result<crate::raft::CommandResponse, StoreError> {
        self.member.propose(crate::raft::Command::as_user(caller.as_deref(), command)).await
    }

    /// The local auth state.
    fn auth(&self) -> std::sync::Arc<crate::auth::AuthState> {
        self.member.core().auth().state()
    }

    /// Refuses requests above `--max-request-bytes`.
    fn check_size(&self, encoded_len: usize) -> Result<(), StoreError> {
        if encoded_len > self.member.config().max_request_bytes {
            return Err(StoreError::RequestTooLarge);
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, for token expiry.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The handles of one method's success counter and latency histogram.
struct MethodMetrics {
    succeeded: metrics::Counter,
    duration: metrics::Histogram,
}

thread_local! {
    /// Each worker thread's handles, by method. Looking a labelled metric up in the recorder hashes
    /// its labels and takes the registry's lock; keeping the handles makes that once per thread and
    /// method rather than once per request. Handles are taken after the recorder is installed (the
    /// binary installs it before it serves), so none of them is a stale no-op. Bounded by the number
    /// of methods.
    static METHOD_METRICS: std::cell::RefCell<std::collections::HashMap<&'static str, MethodMetrics>> =
        std::cell::RefCell::default();
}

/// Runs a handler, recording its count, outcome and latency.
async fn observe<T>(method: &'static str, handler: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    let start = Instant::now();
    let result = handler.await;
    let elapsed = start.elapsed().as_secs_f64();
    if let Err(status) = &result {
        // A request that timed out or found no leader is the client's only sign of a stalled
        // member; the member says which request and after how long, next to its own warnings
        // (slow fdatasync, slow apply) that usually explain it.
        if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
            tracing::warn!(method, took_seconds = elapsed, error = status.message(), "request failed");
        }
        let code = format!("{:?}", status.code());
        metrics::counter!("keel_grpc_requests_total", "method" => method, "code" => code).increment(1);
    }
    METHOD_METRICS.with_borrow_mut(|cache| {
        let handles = cache.entry(method).or_insert_with(|| MethodMetrics {
            succeeded: metrics::counter!("keel_grpc_requests_total", "method" => method, "code" => "OK"),
            duration: metrics::histogram!("keel_grpc_request_duration_seconds", "method" => method),
        });
        if result.is_ok() {
            handles.succeeded.increment(1);
        }
        handles.duration.record(elapsed);
    });
    result
}

/// Serves the client API on `listeners` until `shutdown` completes.
pub async fn serve(
    member: Arc<Member>,
    listeners: Vec<crate::tls::Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limit = member.config().max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let concurrency = crate::concurrency::Coordinator::new(member.clone());
    let snapshot_permits = Arc::new(tokio::sync::Semaphore::new(maintenance::SNAPSHOTS_AT_ONCE));
    let api = Arc::new(Api { member, shutdown: shutdown_rx, concurrency, snapshot_permits });
    let shutdown = async move {
        shutdown.await;
        shutdown_tx.send_replace(true);
    };
    let kv = pb::kv_server::KvServer::new(kv::KvService::new(api.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let watch = watch::WatchServer::new(watch::WatchService::new(api.clone()), limit);
    let lease = pb::lease_server::LeaseServer::new(lease::LeaseService::new(api.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let maintenance = pb::maintenance_server::MaintenanceServer::new(maintenance::MaintenanceService::new(api.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let auth = pb::auth_server::AuthServer::new(auth::AuthService::new(api.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let lock = keel_proto::v3lockpb::lock_server::LockServer::new(lock::LockService::new(api.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let election =
        keel_proto::v3electionpb::election_server::ElectionServer::new(election::ElectionService::new(api.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX);
    let journal =
        keel_proto::keeljournal::journal_server::JournalServer::new(journal::JournalService::new(api.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(usize::MAX);
    let cluster = pb::cluster_server::ClusterServer::new(cluster::ClusterService::new(api))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);

    let services = http2::Services::new()
        .add(kv)
        .add(watch)
        .add(lease)
        .add(maintenance)
        .add(cluster)
        .add(auth)
        .add(lock)
        .add(election)
        .add(journal);
    http2::serve(listeners, services, shutdown).await;
}
