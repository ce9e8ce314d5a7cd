//! The `keel` binary: every server role and the admin CLI behind one clap command line, plus
//! `keel bench` load generators.
//!
//! `keel store` runs a store member with etcd's flag names and defaults, serving clients on the
//! client URLs and other members on the peer URLs. It serves until SIGTERM or SIGINT (or until it is
//! removed from the cluster), then stops accepting requests and shuts Raft down cleanly; a SIGKILL
//! loses no acknowledged write because writes are acknowledged only once their log entry is fsynced
//! on a quorum.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Every role's heap: requests are allocated on one tokio worker and often freed on another, which
/// glibc's malloc handles slowly (its arenas and consolidation were about a fifth of a member's CPU
/// under 100 concurrent clients' puts); mimalloc's per-thread free lists take that path cheaply.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod certs;
mod ctl;
mod jepsen;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use keel_store::server::{ClusterState, Member, StoreConfig, parse_url};
use keel_store::tls::{Listener, ServerTls, TlsFiles};

/// Keel: a Kubernetes-style control plane on its own Raft-replicated, etcd-compatible store.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a member of the etcd-compatible store.
    Store(Box<StoreArgs>),
    /// Measure an etcd v3 endpoint (Keel or etcd) under load.
    Bench(bench::BenchCommand),
    /// Create a CA and the server, peer and client certificates it signs.
    #[command(subcommand)]
    Certs(certs::Certs),
    /// Chaos tests: a real cluster under real faults, histories checked against models.
    #[command(subcommand)]
    Jepsen(jepsen::Jepsen),
    /// Operate a cluster: snapshots and restore, members, maintenance, debugging reads and writes.
    Ctl {
        #[command(flatten)]
        global: ctl::Global,
        #[command(subcommand)]
        command: ctl::Ctl,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum InitialClusterState {
    New,
    Existing,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Flags named like etcd's, with etcd's defaults (on 127.0.0.1).
#[derive(Debug, Args)]
struct StoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory (default: `<name>.keel`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,
    /// Client URLs to advertise to the cluster, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// URLs to listen on for peer traffic, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,
    /// This member's peer URLs to advertise to the cluster, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping: name=URL,... (default: this member alone).
    #[arg(long, default_value = "")]
    initial_cluster: String,
    /// Initial cluster state.
    #[arg(long, value_enum, default_value = "new")]
    initial_cluster_state: InitialClusterState,
    /// Initial cluster token, which keeps clusters with the same members apart.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// Maximum client request size in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    max_txn_ops: usize,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, default_value_t = 100_000)]
    snapshot_count: u64,
    /// URLs to serve Prometheus metrics on (`/metrics`), comma-separated; loopback or explicit
    /// addresses only.
    #[arg(long, value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    /// Duration of periodic watch progress notifications (e.g. 10m, 30s, 500ms).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    experimental_watch_progress_notify_interval: Duration,
    /// Auto compaction mode: `periodic` (the retention is a duration) or `revision` (a revision
    /// count). The leader compacts; see --auto-compaction-retention.
    #[arg(long, default_value = "periodic")]
    auto_compaction_mode: keel_store::server::AutoCompactionMode,
    /// History auto compaction keeps: in periodic mode a duration (`30m`, `1h30m`; a bare integer
    /// is hours), in revision mode a revision count. 0 disables auto compaction.
    #[arg(long, default_value = "0")]
    auto_compaction_retention: keel_store::server::AutoCompactionRetention,
    /// Path to the client server TLS certificate file (for https:// client URLs).
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA certificate file.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Enable client certificate authentication: clients need a certificate from --trusted-ca-file;
    /// with auth enabled, its common name is the user.
    #[arg(long)]
    client_cert_auth: bool,
    /// Path to the peer server TLS certificate file (for https:// peer URLs); also presented to
    /// other members.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client certificate authentication. Always on when peer TLS is configured: members
    /// authenticate each other in both directions. Accepted for etcd compatibility.
    #[arg(long)]
    peer_client_cert_auth: bool,
    /// bcrypt cost for hashing user passwords (4 to 31).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    bcrypt_cost: u32,
    /// Time (in seconds) an authentication token stays valid.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    auth_token_ttl: u64,
    /// Most Lock and Campaign calls waiting on this member at once (and, separately, most Observe
    /// streams); calls beyond it are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_lock_waiters: u64,
    /// Raise the NOSPACE alarm (cluster-wide: writes that grow the store are refused until an
    /// operator frees space and disarms it) when the data would grow past this many bytes; 0 means
    /// etcd's default, 2 GiB.
    #[arg(long, default_value_t = 0)]
    quota_backend_bytes: u64,
    /// Source IP address of connections to other members (default: the OS chooses). Members
    /// sharing a host on distinct addresses need it for firewall rules to tell them apart.
    #[arg(long)]
    peer_source_address: Option<std::net::IpAddr>,
    /// Log level.
    #[arg(long, value_enum, default_value = "info")]
    log_level: LogLevel,
}

/// Parses durations like etcd's flags: `500ms`, `30s`, `10m`, `1h` (plain numbers are seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 10m, 30s or 500ms"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" | "" => Duration::from_secs(value),
        "m" => Duration::from_secs(value * 60),
        "h" => Duration::from_secs(value * 3600),
        _ => return Err(format!("`{text}` has an unknown unit (use ms, s, m or h)")),
    };
    if duration.is_zero() {
        return Err("a duration must be positive".into());
    }
    Ok(duration)
}

fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Bench(bench::BenchCommand { threads: Some(threads), .. }) = &cli.command {
        runtime.worker_threads(usize::from(*threads));
    }
    let runtime = runtime.enable_all().thread_name("keel").build().context("starting the async runtime")?;
    match cli.command {
        Command::Store(args) => runtime.block_on(run_store(*args)),
        Command::Bench(bench) => runtime.block_on(bench::run(bench.bench)),
        Command::Certs(certs) => certs::run(certs),
        Command::Ctl { global, command } => runtime.block_on(ctl::run(global, command)),
        Command::Jepsen(command) => {
            init_logging(LogLevel::Info);
            return runtime.block_on(jepsen::run(command)).map(std::process::ExitCode::from);
        }
    }
    .map(|()| std::process::ExitCode::SUCCESS)
}

fn init_logging(level: LogLevel) {
    let filter = match level {
        LogLevel::Debug => "debug,openraft=info,h2=info,tower=info,hyper=info",
        // openraft warns about routine events (e.g. stale notifications at a fresh start).
        LogLevel::Info => "info,openraft=error",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| filter.into());
    // Colour codes only for a terminal: a log redirected to a file (a service manager's, a test's)
    // stays plain text that grep and a failing test's report can show as it is.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn store_config(args: &StoreArgs) -> StoreConfig {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.keel", args.name)));
    let mut config = StoreConfig::with_data_dir(data_dir);
    config.name = args.name.clone();
    config.listen_client_urls = args.listen_client_urls.clone();
    config.advertise_client_urls = args.advertise_client_urls.clone();
    config.listen_peer_urls = args.listen_peer_urls.clone();
    config.initial_advertise_peer_urls = args.initial_advertise_peer_urls.clone();
    config.initial_cluster = args.initial_cluster.clone();
    config.initial_cluster_state = match args.initial_cluster_state {
        InitialClusterState::New => ClusterState::New,
        InitialClusterState::Existing => ClusterState::Existing,
    };
    config.initial_cluster_token = args.initial_cluster_token.clone();
    config.max_request_bytes = args.max_request_bytes;
    config.max_txn_ops = args.max_txn_ops;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval);
    config.election_timeout = Duration::from_millis(args.election_timeout);
    config.snapshot_count = args.snapshot_count;
    config.watch_progress_notify_interval = args.experimental_watch_progress_notify_interval;
    config.auto_compaction_mode = args.auto_compaction_mode;
    config.auto_compaction_retention = args.auto_compaction_retention;
    config.client_tls = TlsFiles {
        cert_file: args.cert_file.clone(),
        key_file: args.key_file.clone(),
        trusted_ca_file: args.trusted_ca_file.clone(),
    };
    config.client_cert_auth = args.client_cert_auth;
    config.bcrypt_cost = args.bcrypt_cost;
    config.auth_token_ttl = Duration::from_secs(args.auth_token_ttl);
    config.max_lock_waiters = args.max_lock_waiters as usize;
    if args.quota_backend_bytes > 0 {
        config.quota_backend_bytes = args.quota_backend_bytes;
    }
    config.peer_source_address = args.peer_source_address;
    config.peer_tls = TlsFiles {
        cert_file: args.peer_cert_file.clone(),
        key_file: args.peer_key_file.clone(),
        trusted_ca_file: args.peer_trusted_ca_file.clone(),
    };
    config
}

/// Refuses TLS flags that cannot work together, before anything is bound or opened.
fn check_tls_flags(config: &StoreConfig) -> Result<()> {
    let https = |urls: &[String]| urls.iter().any(|url| url.starts_with("https://"));
    let client = &config.client_tls;
    if https(&config.listen_client_urls) && (client.cert_file.is_none() || client.key_file.is_none()) {
        bail!("https:// in --listen-client-urls needs --cert-file and --key-file");
    }
    if config.client_cert_auth && client.trusted_ca_file.is_none() {
        bail!("--client-cert-auth needs --trusted-ca-file");
    }
    let peer = &config.peer_tls;
    let peer_https = https(&config.listen_peer_urls) || https(&config.initial_advertise_peer_urls);
    if (peer_https || *peer != TlsFiles::default())
        && (peer.cert_file.is_none() || peer.key_file.is_none() || peer.trusted_ca_file.is_none())
    {
        bail!("peer TLS needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file together");
    }
    Ok(())
}

fn metrics_address(url: &str) -> Result<SocketAddr> {
    let addrs = parse_url(url)?;
    let addr = addrs[0];
    if addr.ip().is_unspecified() {
        bail!("--listen-metrics-urls {url}: bind metrics to an explicit address, not a wildcard");
    }
    Ok(addr)
}

async fn run_store(args: StoreArgs) -> Result<()> {
    init_logging(args.log_level);
    if args.heartbeat_interval == 0 || args.election_timeout < 5 * args.heartbeat_interval {
        bail!("--election-timeout must be at least five times --heartbeat-interval");
    }
    let config = store_config(&args);
    check_tls_flags(&config)?;
    if args.peer_client_cert_auth && config.peer_tls == TlsFiles::default() {
        bail!("--peer-client-cert-auth needs --peer-cert-file, --peer-key-file and --peer-trusted-ca-file");
    }
    let client_tls = config.client_server_tls().context("client TLS")?;
    let peer_tls = config.peer_server_tls().context("peer TLS")?;

    match args.listen_metrics_urls.as_slice() {
        [] => {}
        [url] => {
            let addr = metrics_address(url)?;
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
                .context("configuring metric buckets")?
                .install()
                .with_context(|| format!("serving metrics on {addr}"))?;
            tracing::info!(%addr, "serving Prometheus metrics on /metrics");
        }
        _ => bail!("--listen-metrics-urls takes one URL in this build"),
    }

    let client_listeners = bind_all(&config.listen_client_urls, "clients", client_tls).await?;
    let peer_listeners = bind_all(&config.listen_peer_urls, "peers", peer_tls).await?;

    let member = Member::start(config.clone()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let peer_server = tokio::spawn(keel_store::peer::serve(member.clone(), peer_listeners, stopped(stop_rx.clone())));
    let client_server = tokio::spawn(keel_store::api::serve(member.clone(), client_listeners, stopped(stop_rx)));
    tracing::info!(urls = %config.listen_client_urls.join(","), "ready to serve client requests");

    let mut removed = member.removed();
    let reason = tokio::select! {
        signal = wait_for_signal() => signal?,
        _ = removed.wait_for(|removed| *removed) => "removed from the cluster",
    };
    tracing::info!(reason, "shutting down");
    stop_tx.send_replace(true);
    for (name, server) in [("client API", client_server), ("peer API", peer_server)] {
        match tokio::time::timeout(Duration::from_secs(10), server).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "{name} task failed"),
            Err(_) => tracing::warn!("{name} connections did not close within 10s"),
        }
    }
    member.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds every URL; `https://` ones serve TLS with `tls` (checked to exist by `check_tls_flags`).
async fn bind_all(urls: &[String], purpose: &str, tls: Option<Arc<ServerTls>>) -> Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for url in urls {
        let tls = if url.starts_with("https://") {
            Some(tls.clone().with_context(|| format!("{url} needs TLS certificate flags"))?)
        } else {
            None
        };
        for addr in parse_url(url)? {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for {purpose} on {addr}"))?;
            listeners.push(Listener { tcp, tls: tls.clone() });
        }
    }
    Ok(listeners)
}

async fn wait_for_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
