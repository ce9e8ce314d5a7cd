//! etcd's Maintenance service: Status, Hash, HashKV, MoveLeader, Snapshot, Alarm (list, raise,
//! disarm — changes go through the log; see `crate::server` quota), Defragment.
//! Downgrade answers Unimplemented.
//!
//! Defragment is a member-local, admin-only full compaction of the storage backend
//! ([`crate::backend::Backend::defragment`]): it changes no data and, unlike etcd's (which
//! rewrites bbolt with writes blocked), it is online: writes and reads go on while it runs. It
//! runs on a blocking thread, at most one at a time per member; further requests wait their turn.
//!
//! Snapshot streams a Keel snapshot file (the format Raft snapshots use, checksummed end to end)
//! built from a RocksDB checkpoint, so apply and writes go on while it is built and sent. At most
//! [`SNAPSHOTS_AT_ONCE`] are built per member at a time; more wait.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::etcdserverpb as pb;
use tonic::{Request, Response, Status};

use super::{Api, observe};
use crate::alarm::{AlarmAction, AlarmKind, AlarmMember};
use crate::error::StoreError;
use crate::server::VERSION;

/// The Maintenance service.
#[derive(Clone, Debug)]
pub struct MaintenanceService {
    api: Arc<Api>,
    /// Held for the whole of a defragmentation (moved into its blocking task, so it stays held
    /// even if the client gives up): one at a time per member, because a second one would only
    /// redo the same work and double the disk load; a second request waits for the lock.
    defrag_lock: Arc<tokio::sync::Mutex<()>>,
}

impl MaintenanceService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api, defrag_lock: Arc::new(tokio::sync::Mutex::new(())) }
    }
}

fn unsupported(what: &str) -> Status {
    StoreError::Unsupported(format!("{what} is not supported by this build")).into()
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Client snapshots built at once per member (each takes a checkpoint and a file the size of the
/// data).
pub const SNAPSHOTS_AT_ONCE: usize = 2;
/// Bytes per streamed message.
const SNAPSHOT_CHUNK: usize = 64 * 1024;
/// Messages buffered ahead of the client.
const SNAPSHOT_BUFFER: usize = 16;

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        observe("Alarm", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_authenticated(caller.as_deref())?;
            let req = request.into_inner();
            let listed = |alarms: Vec<AlarmMember>| {
                alarms
                    .into_iter()
                    .map(|alarm| pb::AlarmMember { member_id: alarm.member, alarm: alarm.kind.number() })
                    .collect()
            };
            let action = pb::alarm_request::AlarmAction::try_from(req.action)
                .map_err(|_| StoreError::Unsupported(format!("unknown alarm action {}", req.action)))?;
            let action = match action {
                pb::alarm_request::AlarmAction::Get => {
                    // Only what this member has applied, as etcd answers from its local alarm store.
                    let alarms = self.api.member.core().alarms();
                    let alarms = alarms
                        .into_iter()
                        .filter(|alarm| {
                            (req.member_id == 0 || alarm.member == req.member_id)
                                && (req.alarm == 0 || alarm.kind.number() == req.alarm)
                        })
                        .collect();
                    return Ok(Response::new(pb::AlarmResponse {
                        header: self.api.current_header(),
                        alarms: listed(alarms),
                    }));
                }
                pb::alarm_request::AlarmAction::Activate => AlarmAction::Activate,
                pb::alarm_request::AlarmAction::Deactivate => AlarmAction::Deactivate,
            };
            self.api.auth().check_admin(caller.as_deref())?;
            let kind = AlarmKind::from_number(req.alarm).ok_or_else(|| {
                StoreError::Unsupported(format!("alarm type {} cannot be raised or cleared", req.alarm))
            })?;
            let changed = self
                .api
                .member
                .change_alarm(caller.as_deref(), action, AlarmMember { member: req.member_id, kind })
                .await?;
            Ok(Response::new(pb::AlarmResponse { header: self.api.current_header(), alarms: listed(changed) }))
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
                errors: self.api.member.core().alarms().iter().map(ToString::to_string).collect(),
                db_size_in_use: status.db_size_in_use,
                is_learner: status.is_learner,
            }))
        })
        .await
    }

    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        observe("Defragment", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let guard = self.defrag_lock.clone().lock_owned().await;
            let core = self.api.member.core().clone();
            let outcome = tokio::task::spawn_blocking(move || {
                // Held until the backend returns, even if the client has gone away meanwhile.
                let _guard = guard;
                let backend = core.backend();
                let size_before = backend.size_bytes();
                let started = std::time::Instant::now();
                tracing::info!(db_size = size_before, "defragmenting the backend");
                let result = backend.defragment();
                let elapsed = started.elapsed();
                match &result {
                    Ok(()) => tracing::info!(
                        db_size_before = size_before,
                        db_size_after = backend.size_bytes(),
                        db_size_in_use = backend.size_in_use_bytes(),
                        ?elapsed,
                        "defragmented the backend"
                    ),
                    Err(err) => tracing::error!(
                        db_size_before = size_before,
                        db_size_after = backend.size_bytes(),
                        ?elapsed,
                        error = %err,
                        "defragmenting the backend failed"
                    ),
                }
                result
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?;
            outcome.map_err(|e| StoreError::Internal(format!("defragment failed: {e}")))?;
            Ok(Response::new(pb::DefragmentResponse { header: self.api.current_header() }))
        })
        .await
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

    async fn snapshot(&self, request: Request<pb::SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        observe("Snapshot", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let permit = self.api.snapshot_permits.clone().acquire_owned().await.map_err(|_| StoreError::Stopped)?;
            let core = self.api.member.core().clone();
            let snapshot = tokio::task::spawn_blocking(move || {
                crate::raft::snapshot::ClientSnapshot::build(&**core.backend(), core.snapshot_dir())
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(|e| StoreError::Internal(format!("building the snapshot failed: {e}")))?;
            let total = snapshot.file.len().map_err(|e| StoreError::Internal(e.to_string()))?;
            let revision = self.api.member.core().mvcc().current_revision();
            tracing::info!(bytes = total, revision, "streaming a snapshot to a client");
            let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_BUFFER);
            let header = self.api.current_header();
            tokio::task::spawn_blocking(move || {
                // The permit and the scratch directory live until the last chunk is queued or the
                // client goes away (the send fails).
                let _permit = permit;
                send_snapshot(&snapshot, total, header, &tx);
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            Ok(Response::new(Box::pin(stream) as Self::SnapshotStream))
        })
        .await
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

/// Streams `snapshot` in chunks through `tx` (blocking reads; runs on a blocking thread), then
/// etcd's trailer (zero padding to a page boundary and the SHA-256 of all before it), which
/// etcdctl's `snapshot save` requires.
fn send_snapshot(
    snapshot: &crate::raft::snapshot::ClientSnapshot,
    file_len: u64,
    header: Option<pb::ResponseHeader>,
    tx: &tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) {
    use std::io::Read;

    use crate::raft::snapshot::{ETCD_DIGEST, etcd_padding};
    let fail = |what: &str, err: std::io::Error| {
        let _ = tx.blocking_send(Err(StoreError::Internal(format!("{what} the snapshot: {err}")).into()));
    };
    let mut file = match std::fs::File::open(snapshot.file.path()) {
        Ok(file) => file,
        Err(err) => return fail("opening", err),
    };
    let padding = etcd_padding(file_len);
    let total = file_len + padding + ETCD_DIGEST as u64;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut sent: u64 = 0;
    let mut first = true;
    let mut send = |blob: Vec<u8>, sent: u64| {
        let message = pb::SnapshotResponse {
            header,
            remaining_bytes: total - sent,
            blob,
            version: if first { VERSION.to_string() } else { String::new() },
        };
        first = false;
        tx.blocking_send(Ok(message)).is_ok()
    };
    loop {
        let mut blob = vec![0u8; SNAPSHOT_CHUNK];
        let n = match file.read(&mut blob) {
            Ok(n) => n,
            Err(err) => return fail("reading", err),
        };
        if n == 0 {
            break;
        }
        blob.truncate(n);
        hasher.update(&blob);
        sent += n as u64;
        if !send(blob, sent) {
            return;
        }
    }
    let mut trailer = vec![0u8; padding as usize];
    hasher.update(&trailer);
    trailer.extend_from_slice(hasher.finish().as_ref());
    sent += trailer.len() as u64;
    send(trailer, sent);
}
