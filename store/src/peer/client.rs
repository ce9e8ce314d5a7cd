//! Calls to peers: openraft's network, and requests forwarded to the leader.
//!
//! Channels are created lazily per peer URL and cached ([`Peers`]); a failed connection is retried
//! by the next call. Every call is bounded by a timeout. A transport failure is reported to openraft
//! as `Unreachable` (it backs off and retries); a forwarded request distinguishes "never sent" (safe
//! to retry) from "outcome unknown" (not retried: a write may have been applied). Invariant: a
//! peer that cannot be reached is dialled at most once per RPC timeout by each of openraft's
//! connections to it, including the replication connection, whose failed openings openraft itself
//! would retry at once.
//!
//! Replication uses one `StreamAppend` call per openraft stream session: requests are pipelined
//! (openraft bounds how many are in flight) and answered in order; the oldest unanswered request
//! must be answered within openraft's RPC timeout or the stream ends as `Unreachable`.
//!
//! Heartbeats (openraft's heartbeat worker, which also confirms leadership for every linearizable
//! read round) go on one `StreamAppend` call per peer that stays open between heartbeats, one
//! request and one answer at a time; opening a call per heartbeat cost an HTTP/2 stream, its
//! headers and a task on the peer each time. Invariant: an answer is matched to the heartbeat
//! that is waiting for it. The peer answers in order, so the call counts the heartbeats it sent and
//! the answers it received; a heartbeat abandoned before its answer arrived (a timeout, or openraft
//! dropping the future) leaves its answer to be skipped by the next heartbeat. A slow peer or a
//! loaded machine therefore keeps its call; only a call that ended, refused, or fell more than
//! [`MAX_UNANSWERED_HEARTBEATS`] answers behind is replaced.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};

use keel_proto::keelpeer::peer_client::PeerClient as GrpcClient;
use keel_proto::keelpeer::{PeerRequest, PeerResponse, SnapshotChunk};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{Fatal, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotOf;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::{
    ClusterInfo, LeaseReply, LeaseRequest, MAX_PEER_MESSAGE_BYTES, MembershipChange, MembershipReply, PROTOCOL_VERSION,
    SNAPSHOT_CHUNK_BYTES,
};
use crate::error::StoreError;
use crate::raft::{Command, CommandResult, LogId, MemberNode, SnapshotFile, TypeConfig, Vote, decode, encode};
use crate::tls::ClientTls;

/// Why a forwarded request has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The request never reached the peer; retrying cannot apply it twice.
    #[error("peer unreachable: {0}")]
    NotSent(String),
    /// The request may have been processed; its outcome is unknown.
    #[error("peer call failed after sending: {0}")]
    Uncertain(String),
}

/// Whether a failed call provably never left this member: the connection was not established
/// (tonic reports "Service was not ready" from the client's readiness check, or an unavailable
/// connector).
fn never_sent(status: &Status) -> bool {
    status.message().starts_with("Service was not ready")
        || (status.code() == Code::Unavailable && status.message().contains("connect"))
}

/// Shared, lazily connected channels to peers.
#[derive(Debug)]
pub struct Peers {
    /// Stamped on every request; 0 only while a joining member asks for the cluster's identity.
    cluster_id: AtomicU64,
    /// Channels by peer URL. Locked only to look up or insert.
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
    /// How to reach `https://` peer URLs: this member's peer certificate and the peer CA.
    tls: Option<Arc<ClientTls>>,
    /// Source address of outgoing connections (`--peer-source-address`), or the OS's choice.
    source: Option<std::net::IpAddr>,
}

impl Peers {
    /// An empty channel cache; `tls` is required to reach `https://` peers.
    pub fn new(connect_timeout: Duration, tls: Option<Arc<ClientTls>>, source: Option<std::net::IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            cluster_id: AtomicU64::new(0),
            channels: Mutex::new(HashMap::new()),
            connect_timeout,
            tls,
            source,
        })
    }

    /// Sets the cluster id stamped on requests.
    pub fn set_cluster_id(&self, cluster_id: u64) {
        self.cluster_id.store(cluster_id, Ordering::Relaxed);
    }

    fn client(&self, url: &str) -> Result<GrpcClient<Channel>, ForwardError> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(url) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.channel(url)?;
                channels.insert(url.to_string(), channel.clone());
                channel
            }
        };
        Ok(GrpcClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }

    fn channel(&self, url: &str) -> Result<Channel, ForwardError> {
        let connect_timeout = self.connect_timeout;
        crate::tls::lazy_channel(url, self.tls.clone(), self.source, |endpoint| {
            endpoint
                .connect_timeout(connect_timeout)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
        })
        .map_err(|err| {
            let reason = match err {
                crate::tls::ChannelError::NoTls => {
                    "an https:// peer needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file".to_string()
                }
                other => other.to_string(),
            };
            ForwardError::NotSent(format!("bad peer URL {url}: {reason}"))
        })
    }

    fn request(&self, payload: Vec<u8>) -> PeerRequest {
        PeerRequest { version: PROTOCOL_VERSION, cluster_id: self.cluster_id.load(Ordering::Relaxed), payload }
    }

    /// One unary call: encode, send with a deadline, decode.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        url: &str,
        timeout: Duration,
        req: &Req,
        call: F,
    ) -> Result<Resp, ForwardError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(GrpcClient<Channel>, PeerRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<PeerResponse>, Status>>,
    {
        let client = self.client(url)?;
        let payload = encode(req).map_err(|e| ForwardError::NotSent(e.to_string()))?;
        let request = self.request(payload);
        match tokio::time::timeout(timeout, call(client, request)).await {
            Err(_) => Err(ForwardError::Uncertain(format!("no answer from {url} within {timeout:?}"))),
            Ok(Err(status)) if never_sent(&status) => {
                Err(ForwardError::NotSent(format!("{url}: {}", status.message())))
            }
            Ok(Err(status)) => Err(ForwardError::Uncertain(format!("{url}: {}", status.message()))),
            Ok(Ok(resp)) => decode(&resp.into_inner().payload).map_err(|e| ForwardError::Uncertain(e.to_string())),
        }
    }

    /// Proposes a command through `leader`.
    pub async fn propose(
        &self,
        leader: &MemberNode,
        command: &Command,
        timeout: Duration,
    ) -> Result<CommandResult, ForwardError> {
        let url = first_url(leader)?;
        self.unary(url, timeout, command, |mut c, r| async move { c.propose(r).await }).await
    }

    /// Proposes several commands through `leader` in one call; one result per command, in order.
    /// A leader from before `ProposeMany` existed answers Unimplemented having proposed nothing,
    /// so the commands then go one unary `Propose` each.
    pub async fn propose_many(
        &self,
        leader: &MemberNode,
        commands: &[Command],
        timeout: Duration,
    ) -> Result<Vec<CommandResult>, ForwardError> {
        let url = first_url(leader)?;
        let client = self.client(url)?;
        let payload = encode(&commands).map_err(|e| ForwardError::NotSent(e.to_string()))?;
        let request = self.request(payload);
        let answers: Vec<CommandResult> =
            match tokio::time::timeout(timeout, async move { client.clone().propose_many(request).await }).await {
                Err(_) => return Err(ForwardError::Uncertain(format!("no answer from {url} within {timeout:?}"))),
                Ok(Err(status)) if status.code() == Code::Unimplemented => {
                    let each = commands.iter().map(|command| self.propose(leader, command, timeout));
                    return futures::future::join_all(each).await.into_iter().collect();
                }
                Ok(Err(status)) if never_sent(&status) => {
                    return Err(ForwardError::NotSent(format!("{url}: {}", status.message())));
                }
                Ok(Err(status)) => return Err(ForwardError::Uncertain(format!("{url}: {}", status.message()))),
                Ok(Ok(resp)) => {
                    decode(&resp.into_inner().payload).map_err(|e| ForwardError::Uncertain(e.to_string()))?
                }
            };
        if answers.len() != commands.len() {
            return Err(ForwardError::Uncertain(format!(
                "{url} answered {} of {} proposals",
                answers.len(),
                commands.len()
            )));
        }
        Ok(answers)
    }

    /// Asks `leader` for a read index (after it confirmed its leadership with a quorum).
    pub async fn read_index(
        &self,
        leader: &MemberNode,
        timeout: Duration,
    ) -> Result<Result<LogId, StoreError>, ForwardError> {
        let url = first_url(leader)?;
        self.unary(url, timeout, &(), |mut c, r| async move { c.read_index(r).await }).await
    }

    /// Sends a lease operation to `leader`.
    pub async fn lease(
        &self,
        leader: &MemberNode,
        req: &LeaseRequest,
        timeout: Duration,
    ) -> Result<Result<LeaseReply, StoreError>, ForwardError> {
        let url = first_url(leader)?;
        self.unary(url, timeout, req, |mut c, r| async move { c.lease(r).await }).await
    }

    /// Sends a membership change to `leader`.
    pub async fn change_membership(
        &self,
        leader: &MemberNode,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Result<MembershipReply, StoreError>, ForwardError> {
        let url = first_url(leader)?;
        self.unary(url, timeout, change, |mut c, r| async move { c.change_membership(r).await }).await
    }

    /// Asks the member at `url` for the cluster's id and members.
    pub async fn cluster_info(&self, url: &str, timeout: Duration) -> Result<ClusterInfo, ForwardError> {
        self.unary(url, timeout, &(), |mut c, r| async move { c.cluster_info(r).await }).await
    }
}

fn first_url(node: &MemberNode) -> Result<&str, ForwardError> {
    node.peer_urls
        .first()
        .map(String::as_str)
        .ok_or_else(|| ForwardError::NotSent(format!("member {} has no peer URL", node.name)))
}

/// Creates openraft's connections to peers.
#[derive(Clone, Debug)]
pub struct PeerNetwork {
    peers: Arc<Peers>,
}

impl PeerNetwork {
    /// A network over the shared channel cache.
    pub fn new(peers: Arc<Peers>) -> Self {
        Self { peers }
    }
}

/// The answers of a pipelined `StreamAppend` call, as openraft reads them; an error is the last.
type AppendAnswerStream = BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// How many heartbeats a call kept open may have sent without their answers arriving before it is
/// given up for a new one: a bound on the answers a later heartbeat may have to skip.
const MAX_UNANSWERED_HEARTBEATS: usize = 8;

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    peers: Arc<Peers>,
    target: u64,
    node: MemberNode,
    /// Whether this is a heartbeat connection, whose appends go on a call kept open.
    heartbeats: bool,
    /// The heartbeat call kept open. Stays here while a heartbeat is in flight, so a heartbeat
    /// whose future is dropped leaves the call, and the count of answers still owed on it, for
    /// the next one (module invariant).
    open_call: Option<OpenAppendCall>,
    /// After a failed opening of a replication call to this peer, when the next may start: one RPC
    /// timeout after the failed one started. openraft backs off only while producing a request,
    /// which a call that cannot even connect never asks for, so without this wait a leader redials
    /// a dead peer as fast as its core reschedules replication: a busy loop that starved the live
    /// members of a loaded two-core machine. A dead peer is thus dialled once per heartbeat
    /// interval, as etcd probes one, while an opening that failed by timing out (a slow peer or
    /// machine) is retried at once.
    next_opening_at: Option<tokio::time::Instant>,
}

/// A `StreamAppend` call kept open for heartbeats: requests go in through `requests`, answers come
/// back in order on `answers`. Dropping it ends the request side, so the peer ends the call.
struct OpenAppendCall {
    requests: tokio::sync::mpsc::Sender<PeerRequest>,
    answers: Streaming<PeerResponse>,
    /// Requests sent whose answers have not been received. Changed only right after the send or
    /// the receive completes, with no await in between, so a dropped exchange leaves it exact.
    unanswered: usize,
}

impl std::fmt::Debug for OpenAppendCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAppendCall").field("unanswered", &self.unanswered).finish_non_exhaustive()
    }
}

/// How one heartbeat exchange on an open call ended.
enum Exchange {
    /// The peer answered; the call may carry the next heartbeat unless the answer is a refusal
    /// (the peer's last answer on a call).
    Answered(StreamAppendResult<TypeConfig>),
    /// The call had ended (the peer restarted or closed it) or is too far behind: this heartbeat
    /// was not answered on it, and a heartbeat is harmless to resend on a new call.
    Ended(String),
    /// No answer in time: reported to openraft; the call stays open and the answer, when it
    /// comes, is skipped by the next heartbeat.
    Late(String),
    /// An unusable answer (undecodable, or the peer's Raft has stopped) or a call that takes no
    /// more requests: reported to openraft, and the call is given up.
    Failed(String),
}

impl OpenAppendCall {
    /// Sends one request and waits, at most `ttl` in all, for its answer, first skipping the
    /// answers to heartbeats sent earlier and abandoned.
    async fn exchange(&mut self, request: PeerRequest, ttl: Duration) -> Exchange {
        let deadline = tokio::time::Instant::now() + ttl;
        if self.unanswered >= MAX_UNANSWERED_HEARTBEATS {
            return Exchange::Ended(format!("{} heartbeats on the append call went unanswered", self.unanswered));
        }
        match tokio::time::timeout_at(deadline, self.requests.send(request)).await {
            // The transport has not taken even the heartbeat before: the call is stuck, not late.
            Err(_) => return Exchange::Failed(format!("the append call took no heartbeat within {ttl:?}")),
            Ok(Err(_)) => return Exchange::Ended("the append call has ended".into()),
            Ok(Ok(())) => self.unanswered += 1,
        }
        loop {
            let response = match tokio::time::timeout_at(deadline, self.answers.next()).await {
                Err(_) => return Exchange::Late(format!("no heartbeat answer within {ttl:?}")),
                Ok(None) => return Exchange::Ended("the peer ended the append call".into()),
                Ok(Some(Err(status))) => return Exchange::Ended(status.message().to_string()),
                Ok(Some(Ok(response))) => response,
            };
            self.unanswered -= 1;
            // An answer to an abandoned heartbeat: its sender has gone, and this one's comes later.
            if self.unanswered > 0 {
                continue;
            }
            return match decode::<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>>(&response.payload) {
                Err(err) => Exchange::Failed(format!("undecodable append answer: {err}")),
                // The peer's Raft has stopped: back off as for an unreachable peer.
                Ok(Err(fatal)) => Exchange::Failed(fatal.to_string()),
                Ok(Ok(result)) => Exchange::Answered(result),
            };
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
            heartbeats: false,
            open_call: None,
            next_opening_at: None,
        }
    }

    async fn new_heartbeat_client(&mut self, target: u64, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            peers: self.peers.clone(),
            target,
            node: node.clone(),
            heartbeats: true,
            open_call: None,
            next_opening_at: None,
        }
    }
}

impl PeerConnection {
    fn unreachable(&self, why: impl std::fmt::Display) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!("member {:x} ({}): {why}", self.target, self.node))
    }

    /// A Raft RPC whose remote result is `Result<Resp, RaftError>`.
    async fn raft_call<Req, Resp, F, Fut>(
        &self,
        option: &RPCOption,
        req: &Req,
        call: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(GrpcClient<Channel>, PeerRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<PeerResponse>, Status>>,
    {
        let url = first_url(&self.node).map_err(|e| RPCError::Unreachable(self.unreachable(e)))?;
        let result: Result<Resp, RaftError<TypeConfig>> = self
            .peers
            .unary(url, option.hard_ttl(), req, call)
            .await
            .map_err(|e| RPCError::Unreachable(self.unreachable(e)))?;
        // A remote Raft error means the peer's Raft has stopped: back off as for an unreachable peer.
        result.map_err(|e| RPCError::Unreachable(self.unreachable(e)))
    }

    /// Opens a `StreamAppend` call to keep open for heartbeats.
    async fn open_append_call(&self, ttl: Duration) -> Result<OpenAppendCall, String> {
        let url = first_url(&self.node).map_err(|e| e.to_string())?;
        let mut client = self.peers.client(url).map_err(|e| e.to_string())?;
        // One request at a time is ever in flight on this call.
        let (requests, outgoing) = tokio::sync::mpsc::channel(1);
        let call = client.stream_append(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        match tokio::time::timeout(ttl, call).await {
            Err(_) => Err(format!("no answer within {ttl:?}")),
            Ok(Err(status)) => Err(status.message().to_string()),
            Ok(Ok(response)) => Ok(OpenAppendCall { requests, answers: response.into_inner(), unanswered: 0 }),
        }
    }

    /// Opens a pipelined `StreamAppend` call carrying `input`, each request sent as openraft
    /// produces it; the stream of the peer's answers, in order.
    async fn open_append_stream<S>(&self, input: S, ttl: Duration) -> Result<AppendAnswerStream, RPCError<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let url = first_url(&self.node).map_err(|e| RPCError::Unreachable(self.unreachable(e)))?.to_string();
        let mut client = self.peers.client(&url).map_err(|e| RPCError::Unreachable(self.unreachable(e)))?;
        let pipeline = Arc::new(Mutex::new(AppendPipeline::default()));
        let cluster_id = self.peers.cluster_id.load(Ordering::Relaxed);
        let requests = futures::stream::unfold((input, pipeline.clone()), move |(mut input, pipeline)| async move {
            let rpc = input.next().await?;
            match encode(&rpc) {
                Ok(payload) => {
                    lock(&pipeline).unanswered.push_back(Instant::now());
                    Some((PeerRequest { version: PROTOCOL_VERSION, cluster_id, payload }, (input, pipeline)))
                }
                Err(err) => {
                    lock(&pipeline).failure = Some(format!("encoding an append request: {err}"));
                    None
                }
            }
        });
        let answers = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
            Err(_) => return Err(RPCError::Unreachable(self.unreachable(format!("no answer within {ttl:?}")))),
            Ok(Err(status)) => return Err(RPCError::Unreachable(self.unreachable(status.message()))),
            Ok(Ok(response)) => response.into_inner(),
        };
        let state = AppendAnswers { answers, pipeline, ttl, peer: format!("member {:x} ({})", self.target, self.node) };
        let answers = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let answer = state.next().await?;
            // An error, or a refusal from the peer's Raft, is the stream's last item.
            let more = matches!(answer, Ok(Ok(_)));
            Some((answer, more.then_some(state)))
        });
        Ok(Box::pin(answers))
    }

    /// One heartbeat on the call kept open, or on a new call when there is none or it had ended.
    async fn heartbeat(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(rpc).map_err(|e| RPCError::Unreachable(self.unreachable(e)))?;
        let request = self.peers.request(payload);
        if let Some(call) = self.open_call.as_mut() {
            match call.exchange(request.clone(), ttl).await {
                // Nothing was answered: resend on a new call below.
                Exchange::Ended(_) => self.open_call = None,
                exchange => return self.settle(exchange),
            }
        }
        let call = self.open_append_call(ttl).await.map_err(|why| RPCError::Unreachable(self.unreachable(why)))?;
        let call = self.open_call.insert(call);
        let exchange = call.exchange(request, ttl).await;
        self.settle(exchange)
    }

    /// A heartbeat's outcome, given the call it went on is in `open_call`: the call stays open
    /// after an accepted answer or a late one, and is dropped after a refusal (the peer's last
    /// answer on a call: it ends the stream) or an unusable answer.
    fn settle(&mut self, exchange: Exchange) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        match exchange {
            Exchange::Answered(result) => {
                if result.is_err() {
                    self.open_call = None;
                }
                Ok(result)
            }
            Exchange::Late(why) => Err(RPCError::Unreachable(self.unreachable(why))),
            Exchange::Ended(why) | Exchange::Failed(why) => {
                self.open_call = None;
                Err(RPCError::Unreachable(self.unreachable(why)))
            }
        }
    }
}

/// What a `StreamAppend` call's request side tells its answer side. Locked only to push or pop,
/// never across an await.
#[derive(Default)]
struct AppendPipeline {
    /// When each request not yet answered was handed to the transport, oldest first: the oldest
    /// must be answered within the RPC timeout.
    unanswered: VecDeque<Instant>,
    /// Why the request side stopped early (a request that could not be encoded).
    failure: Option<String>,
}

fn lock(pipeline: &Mutex<AppendPipeline>) -> MutexGuard<'_, AppendPipeline> {
    pipeline.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The answer side of a `StreamAppend` call, as the `unfold` state of the stream openraft reads.
struct AppendAnswers {
    answers: Streaming<PeerResponse>,
    pipeline: Arc<Mutex<AppendPipeline>>,
    /// The RPC timeout: how long the oldest unanswered request may wait for its answer.
    ttl: Duration,
    /// Names the peer in errors.
    peer: String,
}

impl AppendAnswers {
    /// The next answer; `None` when the stream ended. An `Err` ends the stream.
    async fn next(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let unreachable = |why: String| Some(Err(RPCError::Unreachable(Unreachable::from_string(why))));
        loop {
            let oldest = lock(&self.pipeline).unanswered.front().copied();
            // With a request outstanding the wait is bounded by its deadline; with none, the
            // stream may rightly stay quiet, so the wait is cut at the timeout only to look again.
            let deadline = oldest.map_or_else(|| Instant::now() + self.ttl, |sent| sent + self.ttl);
            let answer = match tokio::time::timeout_at(deadline.into(), self.answers.next()).await {
                Err(_) if oldest.is_some() => {
                    return unreachable(format!("{}: no append answer within {:?}", self.peer, self.ttl));
                }
                Err(_) => continue,
                Ok(answer) => answer,
            };
            return match answer {
                None => {
                    lock(&self.pipeline).failure.take().and_then(|why| unreachable(format!("{}: {why}", self.peer)))
                }
                Some(Err(status)) => unreachable(format!("{}: {}", self.peer, status.message())),
                Some(Ok(response)) => {
                    lock(&self.pipeline).unanswered.pop_front();
                    match decode::<Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>>(&response.payload) {
                        Err(err) => unreachable(format!("{}: undecodable append answer: {err}", self.peer)),
                        // The peer's Raft has stopped: back off as for an unreachable peer.
                        Ok(Err(fatal)) => unreachable(format!("{}: {fatal}", self.peer)),
                        Ok(Ok(result)) => Some(Ok(result)),
                    }
                }
            };
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotFile;

    /// Pipelined replication over one `StreamAppend` call: each request is sent as openraft
    /// produces it, without waiting for the answers to those before it (the peer answers in
    /// order). The stream ends at the first error; openraft then backs off and opens another. A
    /// call that could not be opened delays the next opening (`next_opening_at`).
    /// A heartbeat connection instead sends on the call it keeps open (module docs).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if self.heartbeats {
            // The heartbeat worker sends one request per call; any further ones go one at a time.
            return Box::pin(async move {
                let ttl = option.hard_ttl();
                let mut input = input;
                let mut answers = Vec::new();
                while let Some(rpc) = input.next().await {
                    let answer = self.heartbeat(&rpc, ttl).await;
                    let more = matches!(answer, Ok(Ok(_)));
                    answers.push(answer);
                    if !more {
                        break;
                    }
                }
                Ok(Box::pin(futures::stream::iter(answers)) as BoxStream<'s, _>)
            });
        }
        Box::pin(async move {
            let ttl = option.hard_ttl();
            if let Some(next_opening_at) = self.next_opening_at.take() {
                tokio::time::sleep_until(next_opening_at).await;
            }
            let started = tokio::time::Instant::now();
            let opened = self.open_append_stream(input, ttl).await;
            if opened.is_err() {
                self.next_opening_at = Some(started + ttl);
            }
            opened.map(|answers| answers as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&option, &rpc, |mut c, r| async move { c.append_entries(r).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&option, &rpc, |mut c, r| async move { c.vote(r).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&option, &rpc, |mut c, r| async move { c.pre_vote(r).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.raft_call(&option, &req, |mut c, r| async move { c.transfer_leader(r).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let url = first_url(&self.node).map_err(|e| StreamingError::Unreachable(self.unreachable(e)))?.to_string();
        let mut client = self.peers.client(&url).map_err(|e| StreamingError::Unreachable(self.unreachable(e)))?;
        let header =
            encode(&(vote, snapshot.meta.clone())).map_err(|e| StreamingError::Unreachable(self.unreachable(e)))?;
        let cluster_id = self.peers.cluster_id.load(Ordering::Relaxed);

        // Read the file on a blocking thread, one bounded chunk at a time; the channel holds at
        // most a few chunks, so memory stays bounded whatever the snapshot's size.
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let path = snapshot.snapshot.path().to_path_buf();
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut file = std::fs::File::open(&path)?;
            let mut header = Some(header);
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let mut filled = 0;
                while filled < data.len() {
                    let n = file.read(&mut data[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                data.truncate(filled);
                let last = filled < SNAPSHOT_CHUNK_BYTES;
                let chunk = SnapshotChunk {
                    version: PROTOCOL_VERSION,
                    cluster_id,
                    header: header.take().unwrap_or_default(),
                    data,
                };
                if tx.blocking_send(chunk).is_err() || last {
                    return Ok(());
                }
            }
        });
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        // The whole transfer is bounded by the install timeout; replication may cancel it earlier.
        let transfer = tokio::time::timeout(option.hard_ttl().max(Duration::from_secs(60)), send);
        let outcome = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            outcome = transfer => outcome,
        };
        let read = reader.await;
        let resp = match outcome {
            Err(_) => return Err(StreamingError::Unreachable(self.unreachable("snapshot transfer timed out"))),
            Ok(Err(status)) => return Err(StreamingError::Unreachable(self.unreachable(status.message()))),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        if let Ok(Err(err)) = read {
            return Err(StreamingError::Unreachable(self.unreachable(format!("reading the snapshot: {err}"))));
        }
        let result: Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>> =
            decode(&resp.payload).map_err(|e| StreamingError::Unreachable(self.unreachable(e)))?;
        result.map_err(|e| StreamingError::Unreachable(self.unreachable(e)))
    }
}
