//! A running member: opens storage, starts Raft, and serves as the "proposal + wait" layer between
//! the API and Raft.
//!
//! - `forward`: proposals and read barriers; a follower forwards them to the leader.
//! - `batch`: batched rounds: one read index for concurrent linearizable reads and keep-alives,
//!   one request to the leader for a follower's concurrent keep-alives.
//! - `leases`: keep-alives and lookups (leader-local state, forwarded by followers) and the expiry
//!   loop.
//! - `membership`: membership changes (forwarded to the leader), leadership transfer, member lists.
//! - `journal`: the committed log read back for point-in-time backup followers.
//! - `quota`: `--quota-backend-bytes` (raising NOSPACE through the log) and alarm changes.
//! - `leadership`: follows Raft's metrics to promote/demote the lease table, publish this member's
//!   client URLs, and notice removal.
//! - `compactor`: etcd's auto compaction (`--auto-compaction-mode`/`-retention`), run by the leader
//!   and proposed through the log.
//!
//! Every proposal, barrier and forwarded call is bounded by the request timeout (5 s + 2 election
//! timeouts, as in etcd). Background tasks are aborted by `shutdown` or when the member is dropped.

mod batch;
mod compactor;
mod config;
mod forward;
mod journal;
mod leadership;
mod leases;
mod membership;
mod metrics;
mod quota;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

pub use compactor::{AutoCompactionMode, AutoCompactionRetention};
pub use config::{
    BackendKind, ClusterState, ConfigError, DEFAULT_QUOTA_BACKEND_BYTES, StoreConfig, cluster_id, member_id, parse_url,
};
pub use journal::JournalRecord;

use crate::backend::{Backend, Cf, Durability, MemBackend, RocksBackend, RocksOptions, WriteBatch};
use crate::peer::{PeerNetwork, Peers};
use crate::raft::{LogStore, MemberNode, Raft, StateMachine, StoreCore, decode, encode};
use crate::watch::{SyncerHandle, WatchConfig};

/// Version reported by `Status`: the etcd API version Keel speaks, with Keel's own version as build
/// metadata, so tools that check for etcd 3.5 accept it.
pub const VERSION: &str = concat!("3.5.0+keel.", env!("CARGO_PKG_VERSION"));

/// `RaftState` key holding `(member_id, cluster_id)`, written once at first start.
const IDENTITY_KEY: &[u8] = b"identity";
/// How long a joining member keeps asking the existing members who it is.
const JOIN_BOUND: Duration = Duration::from_secs(60);

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be opened.
    #[error("cannot open the data directory {path}: {source}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Raft failed to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
    /// Joining an existing cluster failed.
    #[error("cannot join the cluster: {0}")]
    Join(String),
    /// The peer TLS files are unusable.
    #[error("peer TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What `Status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// Current leader, 0 when none.
    pub leader: u64,
    /// Last log index.
    pub raft_index: u64,
    /// Current term.
    pub raft_term: u64,
    /// Last applied index.
    pub raft_applied_index: u64,
    /// Backend size.
    pub db_size: i64,
    /// Backend size in use.
    pub db_size_in_use: i64,
    /// This member does not vote.
    pub is_learner: bool,
}

/// A member as listed by `MemberList`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member id.
    pub id: u64,
    /// Name ("" until the member published it: etcdctl shows it as unstarted).
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs (empty until the member published them).
    pub client_urls: Vec<String>,
    /// A non-voting member.
    pub is_learner: bool,
}

/// A running member.
pub struct Member {
    config: StoreConfig,
    member_id: u64,
    cluster_id: u64,
    raft: Raft,
    core: Arc<StoreCore>,
    /// A clone of the log store openraft drives, for journal followers' reads of the log.
    log: LogStore,
    peers: Arc<Peers>,
    request_timeout: Duration,
    /// Source of server-chosen lease ids: member id in the top bits, a counter below.
    next_lease: AtomicU64,
    /// Serializes membership changes on the leader (openraft allows one at a time). Held across the
    /// change's `.await`, hence an async mutex.
    membership_change: tokio::sync::Mutex<()>,
    /// Set once this member sees itself removed from the cluster; the process watching it exits.
    /// Written only by the leadership task.
    removed: tokio::sync::watch::Sender<bool>,
    /// Background tasks, aborted by `shutdown`/drop. Locked only to push or drain.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The data size the quota check compares, sampled at most every `quota::SIZE_SAMPLE`.
    db_size: quota::SizeSample,
    /// Queue for this member's next read-index round as leader (`batch::run` task).
    leader_reads: batch::ReadIndexBatcher,
    /// Queue for a follower's next read-index request to the leader (`batch::run` task).
    forwarded_reads: batch::ReadIndexBatcher,
    /// Queue for a follower's next batch of forwarded keep-alives (`batch::run` task).
    keep_alives: batch::KeepAliveBatcher,
    /// Queue for a follower's next batch of proposals to the leader (`batch::run_overlapping`).
    forwarded_proposals: batch::ProposalBatcher,
    _syncer: SyncerHandle,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.config.name)
            .field("member_id", &format_args!("{:x}", self.member_id))
            .finish_non_exhaustive()
    }
}

fn storage_error(path: &std::path::Path, err: impl std::error::Error + Send + Sync + 'static) -> StartError {
    StartError::Storage { path: path.to_path_buf(), source: Box::new(err) }
}

impl Member {
    /// Opens the data directory and starts the member. Must run inside a Tokio runtime. The peer
    /// and client APIs are served separately (`peer::serve`, `api::serve`).
    pub async fn start(config: StoreConfig) -> Result<Arc<Self>, StartError> {
        let initial = config.initial_members()?;
        let auto_compaction = compactor::policy(config.auto_compaction_mode, config.auto_compaction_retention)?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| storage_error(&data_dir, e))?;
        let backend: Arc<dyn Backend> = match config.backend {
            BackendKind::RocksDb => Arc::new(
                RocksBackend::open(data_dir.join("db"), &RocksOptions::default())
                    .map_err(|e| storage_error(&data_dir, e))?,
            ),
            BackendKind::Memory => Arc::new(MemBackend::new()),
        };
        // etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
        let min_lease_ttl = ((config.election_timeout.as_millis() as i64 * 3 + 1999) / 2000).max(1);
        let core = StoreCore::open(backend.clone(), &data_dir.join("snap"), min_lease_ttl, WatchConfig::default())
            .map_err(|e| storage_error(&data_dir, e))?;
        // A member on RocksDB keeps its log's entries in segment files of their own (`wal/`, as
        // etcd's member directory), so a sync after an append writes nothing but the records.
        let log_store = match config.backend {
            BackendKind::RocksDb => LogStore::with_segment_files(backend.clone(), &data_dir.join("wal")),
            BackendKind::Memory => LogStore::new(backend.clone()),
        }
        .map_err(|e| storage_error(&data_dir, e))?;
        let pristine = log_store.is_pristine().map_err(|e| storage_error(&data_dir, e))?;
        let peers = Peers::new(Duration::from_secs(1), config.peer_client_tls()?, config.peer_source_address);
        let request_timeout = Duration::from_secs(5) + 2 * config.election_timeout;

        let members: BTreeMap<u64, MemberNode> = initial
            .iter()
            .map(|(name, urls)| {
                let node = MemberNode { name: name.clone(), peer_urls: urls.clone() };
                (member_id(urls, &config.initial_cluster_token), node)
            })
            .collect();
        let (member_id, cluster_id) =
            identity(&*backend, &config, &members, pristine, &peers, &data_dir, request_timeout).await?;
        peers.set_cluster_id(cluster_id);

        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            // A pre-vote keeps a member coming back from a partition from disrupting the leader.
            enable_pre_vote: Some(true),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count.max(1)),
            // etcd keeps 5000 entries behind a snapshot so slow followers catch up from the log, and
            // writes landing during a snapshot transfer do not force another one.
            max_in_snapshot_log_to_keep: 5000,
            // The leader sends new entries to the followers while its own fsync is under way
            // instead of after it (as etcd does, Raft thesis 10.2.1): an entry still commits only
            // once a quorum, the leader counted only after its own fsync, holds it durably.
            broadcast_submitted_on_append: Some(true),
            // A restarted leader must win an election before it leads again (standard Raft, as
            // etcd does). Resuming leadership straight from the saved vote is unsafe here: the
            // end of the leader's log, its commit index and applied state may have been in the
            // unsynced WAL buffer when it was killed, while a quorum of followers durably holds
            // those entries. A resumed leader would write other entries at the same positions
            // under the same term (followers, matching log ids, keep theirs: the logs diverge)
            // and hand out read indexes below writes it had acknowledged. An election, which the
            // followers' longer logs refuse it, and the new term's no-op entry prevent both.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let network = PeerNetwork::new(peers.clone());
        let raft =
            Raft::new(member_id, Arc::new(raft_config), network, log_store.clone(), StateMachine::new(core.clone()))
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
        if pristine && config.initial_cluster_state == ClusterState::New {
            // Every founding member initializes with the same membership, so the entries agree.
            // Initializing starts a campaign at once; staggering by rank (lowest id first) lets one
            // founder win the first term instead of all splitting the vote, yet any founder still
            // bootstraps the cluster if the ones before it are down. A member that already received
            // the leader's log refuses to initialize, which is fine.
            let rank = members.keys().position(|id| *id == member_id).unwrap_or(0) as u32;
            let delay = config.election_timeout * rank;
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Err(err) = raft.initialize(members).await {
                    tracing::debug!(%err, "not initializing: the cluster already started");
                }
            });
        }

        if !pristine {
            // A sole voter need not wait out an election timeout after a restart: no other member
            // can hold entries it lacks (nothing commits without its own fsync), so it campaigns
            // at once.
            let sole_voter = raft.metrics().borrow_watched().membership_config.membership().voter_ids().eq([member_id]);
            if sole_voter && let Err(err) = raft.trigger().elect(false).await {
                tracing::warn!(%err, "campaigning after a restart");
            }
        }

        let syncer = core.hub().start_syncer();
        let lease_base = (member_id & 0xffff) << 47;
        let (removed, _) = tokio::sync::watch::channel(false);
        let (leader_reads, leader_read_waiters) = batch::ReadIndexBatcher::new();
        let (forwarded_reads, forwarded_read_waiters) = batch::ReadIndexBatcher::new();
        let (keep_alives, keep_alive_waiters) = batch::KeepAliveBatcher::new();
        let (forwarded_proposals, proposal_waiters) = batch::ProposalBatcher::new();
        let member = Arc::new(Self {
            config,
            member_id,
            cluster_id,
            raft,
            core,
            log: log_store,
            peers,
            request_timeout,
            next_lease: AtomicU64::new(lease_base | (now_millis() & 0x3f_ffff) << 24),
            membership_change: tokio::sync::Mutex::new(()),
            removed,
            tasks: Mutex::new(Vec::new()),
            db_size: quota::SizeSample::default(),
            leader_reads,
            forwarded_reads,
            keep_alives,
            forwarded_proposals,
            _syncer: syncer,
        });
        let weak = Arc::downgrade(&member);
        let mut tasks = vec![
            tokio::spawn(leadership::track(weak.clone())),
            tokio::spawn(leadership::publish(weak.clone())),
            tokio::spawn(leases::expire(weak.clone())),
            tokio::spawn(metrics::refresh(weak.clone())),
            tokio::spawn(batch::run(
                weak.clone(),
                leader_read_waiters,
                "keel_read_index_batch",
                batch::leader_read_index_round,
            )),
            tokio::spawn(batch::run(
                weak.clone(),
                forwarded_read_waiters,
                "keel_forwarded_read_index_batch",
                batch::forwarded_read_index_round,
            )),
            tokio::spawn(batch::run(
                weak.clone(),
                keep_alive_waiters,
                "keel_forwarded_keep_alive_batch",
                batch::keep_alive_round,
            )),
            tokio::spawn(batch::run_overlapping(
                weak.clone(),
                proposal_waiters,
                "keel_forwarded_proposal_batch",
                batch::forwarded_proposal_round,
                batch::PROPOSAL_ROUNDS_IN_FLIGHT,
            )),
        ];
        if let Some(policy) = auto_compaction {
            tasks.push(tokio::spawn(compactor::run(weak, policy)));
        }
        member.lock_tasks().extend(tasks);
        tracing::info!(name = %member.config.name, member_id = %format_args!("{member_id:x}"),
            cluster_id = %format_args!("{cluster_id:x}"), "member started");
        Ok(member)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops Raft and the background tasks. Data written so far is durable.
    pub async fn shutdown(&self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        if let Err(err) = self.raft.shutdown().await {
            tracing::warn!(%err, "raft did not shut down cleanly");
        }
    }

    /// The configuration the member runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The store state.
    pub fn core(&self) -> &Arc<StoreCore> {
        &self.core
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The current Raft term.
    pub fn raft_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// Becomes true when this member has been removed from the cluster.
    pub fn removed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.removed.subscribe()
    }

    /// Raft and storage status.
    pub fn status(&self) -> StatusInfo {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let is_learner = !metrics.membership_config.membership().voter_ids().any(|id| id == self.member_id);
        StatusInfo {
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index()),
            db_size: self.core.backend().size_bytes() as i64,
            db_size_in_use: self.core.backend().size_in_use_bytes() as i64,
            is_learner,
        }
    }

    /// True when this member currently leads.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.member_id)
    }

    /// The current leader, if known.
    pub fn leader_id(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The current leader and its node, when known and not this member.
    fn remote_leader(&self) -> Option<(u64, MemberNode)> {
        // Borrowed, not cloned: this runs for every forwarded request, and the metrics hold the
        // whole membership. The borrow ends before any await.
        let receiver = self.raft.metrics();
        let metrics = receiver.borrow_watched();
        let leader = metrics.current_leader?;
        if leader == self.member_id {
            return None;
        }
        let node = metrics.membership_config.membership().get_node(&leader)?.clone();
        Some((leader, node))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The member's `(member_id, cluster_id)`: stored at first start and reused afterwards.
///
/// A founding member (`new`) derives both from the configuration; before storing them it asks the
/// other founding members whether this member already ran (a wiped data directory rejoining under its
/// old id would corrupt the cluster) and refuses if so. A joining member (`existing`) asks the
/// existing members for the id `MemberAdd` gave its peer URLs. Nothing is stored on failure.
async fn identity(
    backend: &dyn Backend,
    config: &StoreConfig,
    members: &BTreeMap<u64, MemberNode>,
    pristine: bool,
    peers: &Peers,
    data_dir: &std::path::Path,
    timeout: Duration,
) -> Result<(u64, u64), StartError> {
    if let Some(bytes) = backend.get(Cf::RaftState, IDENTITY_KEY).map_err(|e| storage_error(data_dir, e))? {
        return decode::<(u64, u64)>(&bytes).map_err(|e| storage_error(data_dir, e));
    }
    if !pristine {
        return Err(storage_error(
            data_dir,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the data directory has a Raft log but no member identity",
            ),
        ));
    }
    let own_urls = sorted(&config.initial_advertise_peer_urls);
    let other_urls: Vec<String> =
        members.values().flat_map(|n| n.peer_urls.iter()).filter(|url| !own_urls.contains(url)).cloned().collect();
    let (id, cluster) = match config.initial_cluster_state {
        ClusterState::New => {
            let id = member_id(&config.initial_advertise_peer_urls, &config.initial_cluster_token);
            if !members.contains_key(&id) {
                return Err(ConfigError::InitialCluster(format!(
                    "--initial-advertise-peer-urls {} must equal the URLs given for `{}` in --initial-cluster",
                    config.initial_advertise_peer_urls.join(","),
                    config.name
                ))
                .into());
            }
            // Best effort: founding members start together, so silence is normal.
            for url in &other_urls {
                if let Ok(info) = peers.cluster_info(url, Duration::from_secs(1)).await
                    && info.members.iter().any(|m| m.id == id && !m.name.is_empty())
                {
                    return Err(StartError::Join(format!(
                        "member {id:x} has already been bootstrapped (the cluster at {url} knows it); \
                         start it with its original data directory, or remove it and add it again"
                    )));
                }
            }
            let ids: Vec<u64> = members.keys().copied().collect();
            (id, cluster_id(&ids, &config.initial_cluster_token))
        }
        ClusterState::Existing => join(peers, &other_urls, &own_urls, timeout).await?,
    };
    let mut batch = WriteBatch::new();
    batch.put(Cf::RaftState, IDENTITY_KEY, encode(&(id, cluster)).map_err(|e| storage_error(data_dir, e))?);
    backend.write(batch, Durability::Synced).map_err(|e| storage_error(data_dir, e))?;
    Ok((id, cluster))
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

/// Rounds (half a second apart) in which members answer without listing a joining member before
/// it gives up: long enough for a just-committed `MemberAdd` to be applied everywhere.
const NOT_LISTED_ROUNDS: u32 = 6;

/// Asks the existing members (bounded retries) for the id a `MemberAdd` gave these peer URLs.
///
/// A member that answers without listing them may simply not have applied the `MemberAdd` yet
/// (the add returns once the leader committed it), so every member is asked, and a refusal comes
/// only after [`NOT_LISTED_ROUNDS`] rounds in which members answered and none listed them.
async fn join(
    peers: &Peers,
    others: &[String],
    own_urls: &[String],
    timeout: Duration,
) -> Result<(u64, u64), StartError> {
    if others.is_empty() {
        return Err(StartError::Join(
            "--initial-cluster-state existing needs the existing members in --initial-cluster".into(),
        ));
    }
    let deadline = tokio::time::Instant::now() + JOIN_BOUND;
    let mut last_error = String::new();
    let mut not_listed_rounds = 0;
    loop {
        let mut answered = false;
        for url in others {
            match peers.cluster_info(url, timeout).await {
                Ok(info) => {
                    if let Some(member) = info.members.iter().find(|m| sorted(&m.peer_urls) == own_urls) {
                        return Ok((member.id, info.cluster_id));
                    }
                    answered = true;
                }
                Err(err) => {
                    let err = err.to_string();
                    if err != last_error {
                        tracing::warn!(%url, %err, "cannot reach an existing member yet; retrying for up to {JOIN_BOUND:?}");
                    }
                    last_error = err;
                }
            }
        }
        if answered {
            not_listed_rounds += 1;
            if not_listed_rounds >= NOT_LISTED_ROUNDS {
                return Err(StartError::Join(format!(
                    "the cluster has no member with peer URLs {}; add it first (etcdctl member add)",
                    own_urls.join(",")
                )));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError::Join(format!("no existing member answered within {JOIN_BOUND:?}: {last_error}")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
