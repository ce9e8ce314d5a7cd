//! A running member: opens storage, starts Raft, proposes commands and waits for their results,
//! serves linearizable reads, tracks leadership, and drives lease expiry through the log.
//!
//! This is the "proposal + wait registry" layer: a proposal is a Raft `client_write`, whose response
//! openraft delivers when the entry is applied (its responder is the wait registry entry). Every
//! proposal and every read barrier is bounded by the request timeout; a timed-out request may still
//! take effect (an uncertain outcome, as in etcd).
//!
//! Background tasks (each bounded, each stopped by `shutdown` or when the member is dropped):
//! leadership tracking (promotes/demotes the lease table, publishes this member's client URLs), the
//! lease expiry loop, the watch syncer and the metrics refresher.

mod config;
mod metrics;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState, SnapshotPolicy};
use tokio::task::JoinHandle;

pub use config::{BackendKind, ClusterState, ConfigError, StoreConfig, cluster_id, member_id, parse_url};

use crate::backend::{Backend, Cf, Durability, MemBackend, RocksBackend, RocksOptions, WriteBatch};
use crate::error::StoreError;
use crate::raft::{
    Command, CommandResponse, LogStore, MemberNode, PeerNetwork, Raft, StateMachine, StoreCore, decode, encode,
};
use crate::watch::{SyncerHandle, WatchConfig};

/// Version reported by `Status`: the etcd API version Keel speaks, with Keel's own version as build
/// metadata, so tools that check for etcd 3.5 accept it.
pub const VERSION: &str = concat!("3.5.0+keel.", env!("CARGO_PKG_VERSION"));

/// `RaftState` key holding `(member_id, cluster_id)`, written once at first start.
const IDENTITY_KEY: &[u8] = b"identity";
/// Leases revoked per log entry by the expiry loop, and entries per tick: bounds how long one
/// expiry entry occupies the apply path and how fast a lease storm drains (etcd revokes ~1000/s).
const EXPIRE_PER_ENTRY: usize = 128;
const EXPIRE_ENTRIES_PER_TICK: usize = 4;
const EXPIRE_TICK: Duration = Duration::from_millis(500);

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
    /// This build cannot do what the configuration asks.
    #[error("{0}")]
    Unsupported(String),
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
}

/// A member as listed by `MemberList`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub id: u64,
    /// Name ("" until the member published it).
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
    request_timeout: Duration,
    /// Source of server-chosen lease ids: member id in the top bits, a counter below.
    next_lease: AtomicU64,
    /// Background tasks, aborted by `shutdown`/drop. Locked only to push or drain.
    tasks: Mutex<Vec<JoinHandle<()>>>,
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
    /// Opens the data directory and starts the member. Must run inside a Tokio runtime.
    pub async fn start(config: StoreConfig) -> Result<Arc<Self>, StartError> {
        let initial = config.initial_members()?;
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
        let log_store = LogStore::new(backend.clone()).map_err(|e| storage_error(&data_dir, e))?;
        let pristine = log_store.is_pristine().map_err(|e| storage_error(&data_dir, e))?;

        let members: BTreeMap<u64, MemberNode> = initial
            .iter()
            .map(|(name, urls)| {
                (
                    member_id(urls, &config.initial_cluster_token),
                    MemberNode { name: name.clone(), peer_urls: urls.clone() },
                )
            })
            .collect();
        if pristine && config.initial_cluster_state == ClusterState::Existing {
            return Err(StartError::Unsupported(
                "--initial-cluster-state existing needs a peer transport to join through; this build runs single-member clusters"
                    .into(),
            ));
        }
        if members.len() > 1 && pristine {
            return Err(StartError::Unsupported(
                "this build runs single-member clusters; --initial-cluster must name only this member".into(),
            ));
        }

        let (member_id, cluster_id) = load_identity(&*backend, &config, &members, &data_dir)?;

        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count.max(1)),
            // etcd keeps 5000 entries behind a snapshot so slow followers catch up from the log.
            max_in_snapshot_log_to_keep: 5000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let raft = Raft::new(member_id, Arc::new(raft_config), PeerNetwork, log_store, StateMachine::new(core.clone()))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if pristine {
            raft.initialize(members).await.map_err(|e| StartError::Raft(e.to_string()))?;
        }

        let syncer = core.hub().start_syncer();
        let request_timeout = Duration::from_secs(5) + 2 * config.election_timeout;
        let lease_base = (member_id & 0xffff) << 47;
        let member = Arc::new(Self {
            config,
            member_id,
            cluster_id,
            raft,
            core,
            request_timeout,
            next_lease: AtomicU64::new(lease_base | (now_millis() & 0x3f_ffff) << 24),
            tasks: Mutex::new(Vec::new()),
            _syncer: syncer,
        });
        let weak = Arc::downgrade(&member);
        let tasks = vec![
            tokio::spawn(track_leadership(weak.clone())),
            tokio::spawn(expire_leases(weak.clone())),
            tokio::spawn(metrics::refresh(weak)),
        ];
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

    /// Proposes a command and waits until it is applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, StoreError> {
        match tokio::time::timeout(self.request_timeout, self.raft.client_write(command)).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(resp)) => resp.data,
            Ok(Err(RaftError::APIError(err))) => Err(match err {
                ClientWriteError::ForwardToLeader(f) if f.leader_id.is_none() => StoreError::NoLeader,
                ClientWriteError::ForwardToLeader(_) => StoreError::NotLeader,
                ClientWriteError::LogEntryDiscarded(_) => StoreError::LeaderChanged,
                other => StoreError::Internal(other.to_string()),
            }),
            Ok(Err(RaftError::Fatal(fatal))) => {
                tracing::error!(%fatal, "raft stopped");
                Err(StoreError::Stopped)
            }
        }
    }

    /// Waits until this member may serve a linearizable read: it confirmed its leadership with a
    /// quorum (ReadIndex) and applied everything committed before the read began.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        let barrier = self.raft.ensure_linearizable(ReadPolicy::ReadIndex);
        match tokio::time::timeout(self.request_timeout, barrier).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(err))) => Err(match err {
                LinearizableReadError::ForwardToLeader(f) if f.leader_id.is_none() => StoreError::NoLeader,
                LinearizableReadError::ForwardToLeader(_) => StoreError::NotLeader,
                other => StoreError::Internal(other.to_string()),
            }),
            Ok(Err(RaftError::Fatal(_))) => Err(StoreError::Stopped),
        }
    }

    /// Waits until this member has applied every entry it knows to be committed (etcd's
    /// `waitAppliedIndex`), so local lease lookups reflect every acknowledged grant and revoke.
    pub async fn wait_applied(&self) -> Result<(), StoreError> {
        let committed = self.raft.metrics().borrow_watched().local_committed.as_ref().map(|id| id.index());
        if committed.is_none() {
            return Ok(());
        }
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(committed, "applied catches up with committed")
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Timeout)
    }

    /// A fresh, positive, non-zero lease id.
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = (self.next_lease.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }

    /// Renews a lease on the leader; returns its TTL.
    pub fn renew_lease(&self, id: i64) -> Result<i64, StoreError> {
        Ok(self.core.lessor().renew(id)?)
    }

    /// Raft and storage status.
    pub fn status(&self) -> StatusInfo {
        let metrics = self.raft.metrics().borrow_watched().clone();
        StatusInfo {
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index()),
            db_size: self.core.backend().size_bytes() as i64,
            db_size_in_use: self.core.backend().size_in_use_bytes() as i64,
        }
    }

    /// The cluster's members.
    pub fn members(&self) -> Vec<MemberInfo> {
        let membership = self.core.membership();
        let attributes = self.core.member_attributes();
        let config = membership.membership();
        let voters: std::collections::BTreeSet<u64> = config.voter_ids().collect();
        config
            .nodes()
            .map(|(id, node)| {
                let published = attributes.get(id);
                MemberInfo {
                    id: *id,
                    name: published.map_or_else(|| node.name.clone(), |a| a.name.clone()),
                    peer_urls: node.peer_urls.clone(),
                    client_urls: published.map(|a| a.client_urls.clone()).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }

    /// True when this member currently leads.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.member_id)
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

/// Reads the stored identity, or derives it from the configuration, checks it, and stores it
/// (synced). Nothing is written when the configuration is inconsistent.
fn load_identity(
    backend: &dyn Backend,
    config: &StoreConfig,
    members: &BTreeMap<u64, MemberNode>,
    data_dir: &std::path::Path,
) -> Result<(u64, u64), StartError> {
    let stored = backend.get(Cf::RaftState, IDENTITY_KEY).map_err(|e| storage_error(data_dir, e))?;
    if let Some(bytes) = stored {
        return decode::<(u64, u64)>(&bytes).map_err(|e| storage_error(data_dir, e));
    }
    let id = member_id(&config.initial_advertise_peer_urls, &config.initial_cluster_token);
    if !members.contains_key(&id) {
        return Err(ConfigError::InitialCluster(format!(
            "--initial-advertise-peer-urls {} must equal the URLs given for `{}` in --initial-cluster",
            config.initial_advertise_peer_urls.join(","),
            config.name
        ))
        .into());
    }
    let ids: Vec<u64> = members.keys().copied().collect();
    let cluster = cluster_id(&ids, &config.initial_cluster_token);
    let mut batch = WriteBatch::new();
    batch.put(Cf::RaftState, IDENTITY_KEY, encode(&(id, cluster)).map_err(|e| storage_error(data_dir, e))?);
    backend.write(batch, Durability::Synced).map_err(|e| storage_error(data_dir, e))?;
    Ok((id, cluster))
}

/// Follows leadership: the leader tracks lease expiry (every lease gets a full TTL when leadership
/// is gained) and this member publishes its client URLs once it can.
async fn track_leadership(member: Weak<Member>) {
    let Some(mut metrics) = member.upgrade().map(|m| m.raft.metrics()) else { return };
    let mut leading = false;
    let mut published = false;
    loop {
        let Some(m) = member.upgrade() else { return };
        let is_leader = m.is_leader();
        if is_leader && !leading {
            m.core.lessor().promote();
            tracing::info!(term = m.raft_term(), "became leader");
        } else if !is_leader && leading {
            m.core.lessor().demote();
            tracing::info!("lost leadership");
        }
        leading = is_leader;
        if is_leader && !published {
            published = publish_attributes(&m).await;
        }
        drop(m);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

async fn publish_attributes(member: &Member) -> bool {
    let current = member.core.member_attributes().get(&member.member_id).cloned();
    let wanted = (member.config.name.clone(), member.config.advertise_client_urls.clone());
    if current.is_some_and(|a| (a.name, a.client_urls) == wanted) {
        return true;
    }
    let command = Command::PublishMember { id: member.member_id, name: wanted.0, client_urls: wanted.1 };
    match member.propose(command).await {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(%err, "publishing member attributes failed; will retry");
            false
        }
    }
}

/// Proposes revocation of expired leases, in bounded batches, while leading.
async fn expire_leases(member: Weak<Member>) {
    let mut tick = tokio::time::interval(EXPIRE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = member.upgrade() else { return };
        for _ in 0..EXPIRE_ENTRIES_PER_TICK {
            let ids = m.core.lessor().expired(EXPIRE_PER_ENTRY);
            if ids.is_empty() {
                break;
            }
            tracing::debug!(count = ids.len(), "revoking expired leases");
            if let Err(err) = m.propose(Command::LeaseExpire { ids }).await {
                tracing::warn!(%err, "revoking expired leases failed; will retry");
                break;
            }
        }
    }
}
