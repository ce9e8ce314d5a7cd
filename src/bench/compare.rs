//! `keel bench compare-etcd`: Keel and etcd side by side on this machine, as ratios. It starts a
//! Keel cluster and an etcd cluster of the same size on loopback with the same flags (etcd's
//! names, which Keel follows; both fsync every commit), runs one suite of `keel bench` commands
//! against each, alternating which store goes first so that machine noise hits both alike, and
//! writes a Markdown table of both figures and their ratio. It also measures the machine's floor
//! for one durable write: a 256-byte append with `fdatasync`, and a loopback round trip.
//!
//! Invariants: every process it starts is its child, killed (and reaped) when the comparison ends
//! or fails; data lives in a temporary directory removed at the end; each suite line is bounded by
//! its own `--total`; nothing but loopback addresses is contacted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};
use keel_proto::etcdserverpb::StatusRequest;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;

use super::Bench;
use super::load::Report;

/// The suite: a label and the `keel bench` command (without endpoints) for each line.
const SUITE: &[(&str, &str)] = &[
    ("put, 1 client", "put --clients 1 --total 2000 --key-space-size 100000"),
    ("put, 100 clients", "put --clients 100 --conns 10 --total 20000 --key-space-size 100000"),
    ("range linearizable, 1 client", "range --clients 1 --total 2000 --consistency l"),
    ("range linearizable, 100 clients", "range --clients 100 --conns 10 --total 20000 --consistency l"),
    ("range serializable, 1 client", "range --clients 1 --total 2000 --consistency s"),
    ("range serializable, 100 clients", "range --clients 100 --conns 10 --total 20000 --consistency s"),
    ("txn-put, 100 clients", "txn-put --clients 100 --conns 10 --total 20000 --key-space-size 100000"),
    ("txn-mixed, 100 clients", "txn-mixed --clients 100 --conns 10 --total 20000 --key-space-size 100000"),
    ("lease-keepalive, 100 clients", "lease-keepalive --clients 100 --conns 10 --total 20000"),
    (
        "watch-latency, 100 watchers",
        "watch-latency --put-total 1000 --put-rate 100 --streams 10 --watchers-per-stream 10",
    ),
    ("watch-fanout, 1000 watchers", "watch-fanout --total 100 --streams 10 --watchers-per-stream 100"),
];

/// Flags of `compare-etcd`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The etcd server binary (Debian's `etcd-server` package).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The keel binary the Keel members run (default: this one).
    #[arg(long)]
    keel: Option<PathBuf>,
    /// Cluster sizes to compare, comma-separated.
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    members: Vec<usize>,
    /// Only the suite lines whose label contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Where the Markdown results go (appended).
    #[arg(long, default_value = "bench/RESULTS.md")]
    out: PathBuf,
}

/// A `keel bench` command line, parsed like the command line itself.
#[derive(Debug, Parser)]
#[command(no_binary_name = true)]
struct SuiteLine {
    #[command(subcommand)]
    bench: Bench,
}

/// The comparison's data directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("keel-compare-etcd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster of child processes, killed when dropped.
struct Cluster {
    children: Vec<Child>,
    endpoints: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `size` members of `binary` (etcd or `keel store`) with etcd's flags in `dir`.
async fn start_cluster(binary: &Path, store_arg: bool, size: usize, dir: &Path) -> Result<Cluster> {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
    let mut cluster = Cluster { children: Vec::new(), endpoints: Vec::new() };
    for (i, (client, peer)) in ports.iter().enumerate() {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
        let mut command = Command::new(binary);
        if store_arg {
            command.arg("store");
        }
        command
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "compare"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cluster.children.push(command.spawn().with_context(|| format!("starting {}", binary.display()))?);
        cluster.endpoints.push(client_url);
    }
    wait_for_leader(&cluster.endpoints).await?;
    Ok(cluster)
}

/// Waits (at most a minute) until every endpoint reports a leader.
async fn wait_for_leader(endpoints: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in endpoints {
        loop {
            let channel = keel_store::tls::lazy_channel(url, None, None, |e| e)?;
            let status =
                tokio::time::timeout(Duration::from_secs(1), MaintenanceClient::new(channel).status(StatusRequest {}))
                    .await;
            if let Ok(Ok(status)) = status
                && status.get_ref().leader != 0
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{url} had no leader within a minute");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Longest one suite line may run against one store before the comparison gives up on it.
const LINE_BOUND: Duration = Duration::from_secs(300);

/// Runs one suite line against `endpoints`, within [`LINE_BOUND`].
async fn run_line(line: &str, endpoints: &[String]) -> Result<Report> {
    tokio::time::timeout(LINE_BOUND, run_line_unbounded(line, endpoints))
        .await
        .map_err(|_| anyhow::anyhow!("did not finish within {LINE_BOUND:?}"))?
}

async fn run_line_unbounded(line: &str, endpoints: &[String]) -> Result<Report> {
    let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    words.push("--endpoints".into());
    words.push(endpoints.join(","));
    let parsed = SuiteLine::try_parse_from(&words).with_context(|| format!("suite line {line:?}"))?;
    Ok(super::measure(&parsed.bench).await?.1)
}

/// The machine's floor for one durable write: mean time of a 256-byte append plus `fdatasync`
/// in `dir`, and of a one-byte loopback round trip.
fn floor(dir: &Path) -> Result<(Duration, Duration)> {
    const ROUNDS: u32 = 1000;
    let mut file = std::fs::File::create(dir.join("floor"))?;
    let block = [0u8; 256];
    let started = Instant::now();
    for _ in 0..ROUNDS {
        file.write_all(&block)?;
        file.sync_data()?;
    }
    let fsync = started.elapsed() / ROUNDS;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        for _ in 0..ROUNDS {
            stream.read_exact(&mut byte)?;
            stream.write_all(&byte)?;
        }
        Ok(())
    });
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let mut byte = [7u8; 1];
    let started = Instant::now();
    for _ in 0..ROUNDS {
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
    }
    let round_trip = started.elapsed() / ROUNDS;
    echo.join().map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok((fsync, round_trip))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// One table row from the two reports.
fn row(label: &str, size: usize, etcd: &Report, keel: &Report) -> String {
    let p99 = |r: &Report| r.latency(0.99);
    let lost = |r: &Report| if r.errors() > 0 { format!(" ({} failed)", r.errors()) } else { String::new() };
    format!(
        "| {label} | {size} | {:.0}{} | {:.0}{} | **{:.2}×** | {} | {} | {} | {:.2} |",
        etcd.qps(),
        lost(etcd),
        keel.qps(),
        lost(keel),
        keel.qps() / etcd.qps(),
        ms(etcd.mean()),
        ms(keel.mean()),
        ms(p99(etcd)),
        p99(keel).as_secs_f64() / p99(etcd).as_secs_f64(),
    )
}

/// `keel bench compare-etcd`. An interrupt (Ctrl-C) ends it cleanly: the clusters it started are
/// killed and its data removed.
pub async fn compare(args: CompareArgs) -> Result<()> {
    tokio::select! {
        result = compare_uninterrupted(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn compare_uninterrupted(args: CompareArgs) -> Result<()> {
    if !args.etcd.is_file() {
        bail!("no etcd at {} (Debian package etcd-server; or pass --etcd)", args.etcd.display());
    }
    let keel = match &args.keel {
        Some(keel) => keel.clone(),
        None => std::env::current_exe().context("locating this keel binary")?,
    };
    let scratch = Scratch::new()?;
    let (fsync, round_trip) = floor(scratch.path())?;
    let mut table = vec![
        "| benchmark | members | etcd req/s | Keel req/s | Keel/etcd | etcd mean | Keel mean | etcd p99 | Keel p99 / etcd p99 |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let lines: Vec<&(&str, &str)> =
        SUITE.iter().filter(|(label, _)| args.only.as_ref().is_none_or(|only| label.contains(only.as_str()))).collect();
    for &size in &args.members {
        let dir = scratch.path().join(format!("{size}"));
        std::fs::create_dir_all(dir.join("etcd"))?;
        std::fs::create_dir_all(dir.join("keel"))?;
        eprintln!("== {size} member(s): starting etcd and Keel");
        let etcd = start_cluster(&args.etcd, false, size, &dir.join("etcd")).await?;
        let keel_cluster = start_cluster(&keel, true, size, &dir.join("keel")).await?;
        for (n, (label, line)) in lines.iter().enumerate() {
            // Alternate which store goes first, so drift in the machine's load hits both alike.
            let (first, second) = if n % 2 == 0 { (&etcd, &keel_cluster) } else { (&keel_cluster, &etcd) };
            eprintln!("-- {label}");
            let a = run_line(line, &first.endpoints).await.with_context(|| label.to_string())?;
            let b = run_line(line, &second.endpoints).await.with_context(|| label.to_string())?;
            let (etcd_report, keel_report) = if n % 2 == 0 { (a, b) } else { (b, a) };
            let row = row(label, size, &etcd_report, &keel_report);
            eprintln!("{row}");
            table.push(row);
        }
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(|| "unknown".to_string(), |out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let etcd_version = Command::new(&args.etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).lines().next().map(str::to_string))
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // Figures of a debug build say nothing about Keel's speed; the table says which it was.
    let build = match (&args.keel, cfg!(debug_assertions)) {
        (Some(path), _) => format!("Keel binary {}", path.display()),
        (None, false) => "Keel release build".to_string(),
        (None, true) => "Keel DEBUG build (not meaningful)".to_string(),
    };
    let mut section = format!(
        "\n## {date}, commit {commit}\n\n{cores} cores ({cpu}); {etcd_version}; {build}; both on loopback, \
         fsync on every commit, members and load generator on the same machine. Floor for one durable \
         write: {} (256-byte append + fdatasync) + {} (loopback round trip).\n\n",
        ms(fsync),
        ms(round_trip)
    );
    section.push_str(&table.join("\n"));
    section.push('\n');
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    out.write_all(section.as_bytes())?;
    println!("{section}");
    Ok(())
}
