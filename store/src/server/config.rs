//! A member's configuration (what `keel store` flags produce) and its identity.
//!
//! Flag names and defaults follow etcd's. Identity follows etcd's rules: member ids derive from the
//! member's peer URLs and the cluster token, the cluster id from the member ids, so every member of
//! an initial cluster computes the same ids independently. Ids are stored in the data directory at
//! first start and reused afterwards, whatever the flags say then (as etcd does).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::compactor::{AutoCompactionMode, AutoCompactionRetention};
use crate::tls::{ClientAuth, ClientTls, ServerTls, TlsError, TlsFiles};

/// etcd's default backend quota: 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 << 30;

/// Whether the member founds a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap the cluster from `initial_cluster`.
    New,
    /// Join a cluster this member was added to.
    Existing,
}

/// Which storage backend holds the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// RocksDB under the data directory.
    RocksDb,
    /// Memory only (tests); nothing survives the process.
    Memory,
}

/// Everything a member needs to start.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Member name (`--name`).
    pub name: String,
    /// Data directory (`--data-dir`).
    pub data_dir: PathBuf,
    /// Addresses the client gRPC API listens on (`--listen-client-urls`).
    pub listen_client_urls: Vec<String>,
    /// Client URLs published to the cluster (`--advertise-client-urls`).
    pub advertise_client_urls: Vec<String>,
    /// Addresses the peer API listens on (`--listen-peer-urls`).
    pub listen_peer_urls: Vec<String>,
    /// Peer URLs published to the cluster (`--initial-advertise-peer-urls`).
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name=url,...` of the initial members (`--initial-cluster`).
    pub initial_cluster: String,
    /// `new` or `existing` (`--initial-cluster-state`).
    pub initial_cluster_state: ClusterState,
    /// Distinguishes clusters with the same members (`--initial-cluster-token`).
    pub initial_cluster_token: String,
    /// Largest client request accepted, in bytes (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// Most operations in one transaction (`--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Raft heartbeat interval (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// Raft election timeout (`--election-timeout`).
    pub election_timeout: Duration,
    /// Applied entries between snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// What `auto_compaction_retention` measures (`--auto-compaction-mode`, etcd's default periodic).
    pub auto_compaction_mode: AutoCompactionMode,
    /// History the leader keeps when compacting automatically (`--auto-compaction-retention`): a
    /// duration in periodic mode (a bare integer is hours), a revision count in revision mode; 0,
    /// the default, disables auto compaction.
    pub auto_compaction_retention: AutoCompactionRetention,
    /// Interval of watch progress notifications (`--experimental-watch-progress-notify-interval`).
    pub watch_progress_notify_interval: Duration,
    /// Storage backend.
    pub backend: BackendKind,
    /// TLS for `https://` client listeners (`--cert-file`, `--key-file`, `--trusted-ca-file`).
    pub client_tls: TlsFiles,
    /// Require client certificates signed by `--trusted-ca-file` (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// TLS between members (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`):
    /// with it, both ends of every peer connection present certificates from the peer CA.
    pub peer_tls: TlsFiles,
    /// bcrypt cost for password hashes (`--bcrypt-cost`, etcd's default 10; 4 to 31).
    pub bcrypt_cost: u32,
    /// How long an authentication token stays valid (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// Most Lock and Campaign calls waiting on this member at once, and separately most Observe
    /// streams (`--max-lock-waiters`); each holds one watch-hub stream.
    pub max_lock_waiters: usize,
    /// Raise the NOSPACE alarm when the state-machine data would grow past this many bytes
    /// (`--quota-backend-bytes`; etcd's default, 2 GiB, when 0).
    pub quota_backend_bytes: u64,
    /// Source address of connections to other members (`--peer-source-address`; the OS chooses
    /// when unset). Members sharing one host on distinct addresses (127.0.0.11, 127.0.0.12, ...)
    /// need it for firewall rules between two of them to match.
    pub peer_source_address: Option<std::net::IpAddr>,
}

impl StoreConfig {
    /// etcd's defaults on loopback, with the given data directory.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            name: "default".into(),
            data_dir: data_dir.into(),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_cluster: String::new(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            auto_compaction_mode: AutoCompactionMode::Periodic,
            auto_compaction_retention: AutoCompactionRetention::Count(0),
            watch_progress_notify_interval: Duration::from_secs(600),
            backend: BackendKind::RocksDb,
            client_tls: TlsFiles::default(),
            client_cert_auth: false,
            peer_tls: TlsFiles::default(),
            bcrypt_cost: 10,
            auth_token_ttl: Duration::from_secs(300),
            max_lock_waiters: 10_000,
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            peer_source_address: None,
        }
    }

    /// The TLS configuration of `https://` client listeners, when `--cert-file` is given.
    pub fn client_server_tls(&self) -> Result<Option<Arc<ServerTls>>, TlsError> {
        if self.client_tls.cert_file.is_none() && self.client_tls.key_file.is_none() {
            return Ok(None);
        }
        let auth = if self.client_cert_auth { ClientAuth::Required } else { ClientAuth::None };
        ServerTls::new(self.client_tls.clone(), auth).map(Some)
    }

    /// The TLS configuration of `https://` peer listeners, when peer TLS is configured. Peers
    /// always authenticate each other: a peer certificate from the peer CA is required.
    pub fn peer_server_tls(&self) -> Result<Option<Arc<ServerTls>>, TlsError> {
        if self.peer_tls == TlsFiles::default() {
            return Ok(None);
        }
        ServerTls::new(self.peer_tls.clone(), ClientAuth::Required).map(Some)
    }

    /// What this member presents to `https://` peers, when peer TLS is configured.
    pub fn peer_client_tls(&self) -> Result<Option<Arc<ClientTls>>, TlsError> {
        if self.peer_tls == TlsFiles::default() {
            return Ok(None);
        }
        ClientTls::new(self.peer_tls.clone()).map(Some)
    }

    /// The initial cluster as `(name, peer URLs)`, defaulting to this member alone.
    pub fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        if self.initial_cluster.trim().is_empty() {
            return Ok(vec![(self.name.clone(), self.initial_advertise_peer_urls.clone())]);
        }
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for part in self.initial_cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) =
                part.split_once('=').ok_or_else(|| ConfigError::InitialCluster(format!("`{part}` is not name=URL")))?;
            parse_url(url)?;
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if !members.iter().any(|(n, _)| *n == self.name) {
            return Err(ConfigError::InitialCluster(format!(
                "--initial-cluster has no member named `{}` (this member's --name)",
                self.name
            )));
        }
        Ok(members)
    }
}

/// A configuration mistake.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A URL that cannot be used.
    #[error("invalid URL `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A malformed `--initial-cluster`.
    #[error("invalid --initial-cluster: {0}")]
    InitialCluster(String),
    /// A bad `--auto-compaction-mode` or `--auto-compaction-retention` value.
    #[error("invalid {flag} {value:?}: {reason}")]
    AutoCompaction {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Resolves an `http://host:port` URL to socket addresses.
pub fn parse_url(url: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let bad = |reason: &str| ConfigError::Url { url: url.to_string(), reason: reason.to_string() };
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(bad("expected http://host:port or https://host:port"));
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return Err(bad("a listen URL must not have a path"));
    }
    let addrs: Vec<SocketAddr> =
        host_port.to_socket_addrs().map_err(|err| bad(&format!("cannot resolve host and port: {err}")))?.collect();
    if addrs.is_empty() {
        return Err(bad("host resolves to no address"));
    }
    Ok(addrs)
}

/// FNV-1a, 64 bits: a small, stable hash for deriving ids (not for security).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The id of a member with these peer URLs in a cluster with this token (never 0).
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let joined = urls.join(",");
    fnv1a(&[joined.as_bytes(), token.as_bytes()]).max(1)
}

/// The id of a cluster with these members (never 0).
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    fnv1a(&[&bytes, token.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_order_independent() {
        let a = member_id(&["http://127.0.0.1:2380".into(), "http://10.0.0.1:2380".into()], "t");
        let b = member_id(&["http://10.0.0.1:2380".into(), "http://127.0.0.1:2380".into()], "t");
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into(), "http://10.0.0.1:2380".into()], "u"));
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
    }

    #[test]
    fn initial_cluster_is_parsed_and_checked() {
        let mut config = StoreConfig::with_data_dir("/tmp/x");
        config.name = "n1".into();
        config.initial_cluster = "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2480".into();
        let members = config.initial_members().unwrap();
        assert_eq!(members.len(), 2);
        config.initial_cluster = "n2=http://127.0.0.1:2480".into();
        assert!(config.initial_members().unwrap_err().to_string().contains("no member named `n1`"));
        config.initial_cluster = "n1".into();
        assert!(config.initial_members().is_err());
        assert!(parse_url("ftp://x:1").is_err());
        assert!(parse_url("http://127.0.0.1:2379").is_ok());
    }
}
