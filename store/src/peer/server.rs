//! The peer service: answers Raft RPCs from other members and requests forwarded to this member.
//!
//! Every request is checked for the protocol version and the cluster id first (except
//! `ClusterInfo`, which a joining member calls before it knows the id). Snapshot chunks are written
//! to a partial file in the snapshot directory as they arrive (bounded memory) and handed to Raft,
//! which verifies the checksum before installing, when the stream ends. Replication arrives on
//! `StreamAppend`, one long-lived stream per leader and follower, each request checked like a
//! unary one.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use keel_proto::keelpeer::peer_server::{Peer, PeerServer};
use keel_proto::keelpeer::{PeerRequest, PeerResponse, SnapshotChunk};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::alias::SnapshotOf;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status, Streaming};

use super::{LeaseRequest, MAX_PEER_MESSAGE_BYTES, MAX_PROPOSALS_PER_CALL, MembershipChange, PROTOCOL_VERSION};
use crate::raft::{Command, SnapshotFile, SnapshotMeta, TypeConfig, Vote, decode, encode};
use crate::server::Member;

/// The peer gRPC service of one member.
#[derive(Clone, Debug)]
struct PeerService {
    member: Arc<Member>,
}

fn reply<T: Serialize>(value: &T) -> Result<Response<PeerResponse>, Status> {
    let payload = encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(PeerResponse { payload }))
}

impl PeerService {
    fn check(&self, version: u32, cluster_id: u64) -> Result<(), Status> {
        if version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "peer protocol {version} is not supported (this member speaks {PROTOCOL_VERSION})"
            )));
        }
        if cluster_id != self.member.cluster_id() {
            return Err(Status::failed_precondition(format!(
                "etcdserver: cluster ID mismatch (request for {cluster_id:x}, this member is in {:x})",
                self.member.cluster_id()
            )));
        }
        Ok(())
    }

    fn open<T: DeserializeOwned>(&self, request: Request<PeerRequest>) -> Result<T, Status> {
        let req = request.into_inner();
        self.check(req.version, req.cluster_id)?;
        decode(&req.payload).map_err(|e| Status::invalid_argument(format!("malformed peer request: {e}")))
    }
}

/// The answers of a `StreamAppend` call.
type AppendAnswers = Pin<Box<dyn Stream<Item = Result<PeerResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        reply(&self.member.raft().append_entries(rpc).await)
    }

    type StreamAppendStream = AppendAnswers;

    /// Pipelined replication: requests go to openraft's `stream_append` as they arrive (it keeps
    /// at most 64 in flight) and its answers are sent back in order. The first request that is
    /// refused ends the input; its reason follows the answers to the requests before it. The
    /// caller dropping the stream ends both directions.
    async fn stream_append(
        &self,
        request: Request<Streaming<PeerRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        // Each call is a replication session or a leader's heartbeat channel, both long-lived; a
        // fast-rising count means streams are being torn down and opened again.
        metrics::counter!("keel_peer_append_calls_total").increment(1);
        let incoming = request.into_inner();
        // Written once by the input side when it refuses a request, read once by the output side
        // after the last answer; never held across an await.
        let refusal: Arc<Mutex<Option<Status>>> = Arc::default();
        let state = (incoming, self.clone(), refusal.clone());
        let rpcs = futures::stream::unfold(state, |(mut incoming, service, refusal)| async move {
            let opened = match incoming.next().await? {
                Ok(req) => service.check(req.version, req.cluster_id).and_then(|()| {
                    decode::<AppendEntriesRequest<TypeConfig>>(&req.payload)
                        .map_err(|e| Status::invalid_argument(format!("malformed append request: {e}")))
                }),
                Err(status) => Err(status),
            };
            match opened {
                Ok(rpc) => Some((rpc, (incoming, service, refusal))),
                Err(status) => {
                    *refusal.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(status);
                    None
                }
            }
        });
        let answers = self.member.raft().stream_append(Box::pin(rpcs)).map(|answer| {
            encode(&answer).map(|payload| PeerResponse { payload }).map_err(|e| Status::internal(e.to_string()))
        });
        let refused = futures::stream::once(async move {
            refusal.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take().map(Err)
        })
        .filter_map(std::future::ready);
        Ok(Response::new(Box::pin(answers.chain(refused))))
    }

    async fn vote(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.open(request)?;
        reply(&self.member.raft().vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let rpc: VoteRequest<TypeConfig> = self.open(request)?;
        reply(&self.member.raft().pre_vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<PeerResponse>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check(first.version, first.cluster_id)?;
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&first.header).map_err(|e| Status::invalid_argument(format!("malformed snapshot header: {e}")))?;
        let partial = self.member.core().snapshot_dir().join(format!(
            "receiving-{}{}",
            crate::raft::snapshot_name(&meta),
            crate::raft::PARTIAL_SNAPSHOT_SUFFIX
        ));
        std::fs::create_dir_all(self.member.core().snapshot_dir()).map_err(|e| Status::internal(e.to_string()))?;
        let path = partial.clone();
        let first_data = first.data;
        tokio::task::spawn_blocking(move || append_chunk(&path, &first_data, true))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("writing snapshot: {e}")))?;
        while let Some(chunk) = chunks.next().await {
            let data = chunk?.data;
            let path = partial.clone();
            tokio::task::spawn_blocking(move || append_chunk(&path, &data, false))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(format!("writing snapshot: {e}")))?;
        }
        let snapshot = SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot: SnapshotFile::new(&partial) };
        let result = self.member.raft().install_full_snapshot(vote, snapshot).await;
        // Installed snapshots are renamed into place; anything left here is refused or failed.
        let _ = std::fs::remove_file(&partial);
        reply(&result)
    }

    async fn transfer_leader(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let req: TransferLeaderRequest<TypeConfig> = self.open(request)?;
        reply(&self.member.raft().handle_transfer_leader(req).await)
    }

    async fn propose(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let command: Command = self.open(request)?;
        reply(&self.member.propose_local(command).await)
    }

    async fn propose_many(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let commands: Vec<Command> = self.open(request)?;
        if commands.len() > MAX_PROPOSALS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} proposals in one call; at most {MAX_PROPOSALS_PER_CALL} are accepted",
                commands.len()
            )));
        }
        reply(&self.member.propose_local_many(commands).await)
    }

    async fn read_index(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let () = self.open(request)?;
        reply(&self.member.local_read_index().await)
    }

    async fn lease(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let req: LeaseRequest = self.open(request)?;
        reply(&self.member.lease_local(&req).await)
    }

    async fn change_membership(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let change: MembershipChange = self.open(request)?;
        reply(&self.member.change_membership_local(change).await)
    }

    async fn cluster_info(&self, request: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        let req = request.into_inner();
        if req.version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!("peer protocol {} is not supported", req.version)));
        }
        reply(&self.member.cluster_info())
    }
}

/// Writes one received chunk: the first creates (or truncates) the partial file, later ones append.
fn append_chunk(path: &std::path::Path, data: &[u8], first: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    if first {
        options.create(true).truncate(true).write(true);
    } else {
        options.append(true);
    }
    options.open(path)?.write_all(data)
}

/// Serves the peer API on `listeners` until `shutdown` completes, on the same HTTP/2 server as
/// the client API (`api::http2`).
pub async fn serve(
    member: Arc<Member>,
    listeners: Vec<crate::tls::Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let service = PeerServer::new(PeerService { member })
        .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
    // With peer TLS, a connection exists only once the peer presented a certificate from the peer
    // CA (see `tls`), so nothing below sees a stranger.
    crate::api::http2::serve(listeners, crate::api::http2::Services::new().add(service), shutdown).await;
}
