//! `keel bench compare-etcd`: Keel and etcd side by side on this machine, as ratios. It starts a
//! Keel cluster and an etcd cluster of the same size on loopback with the same flags (etcd's
//! names, which Keel follows; both fsync every commit), runs one suite of `keel bench` commands
//! against each, alternating which store goes first so that machine noise hits both alike, and
//! writes a Markdown table of both figures and their ratio. It also measures the machine's floor
//! for one durable write: a 256-byte append with `fdatasync`, and a loopback round trip.
//!
//! Two more scenarios run on fresh clusters of each size, so that what they measure is theirs
//! alone: *history* (100k puts to one key, reads over that uncompacted history, then the data
//! directories' size before and after compacting and after defragmenting) and *1M keys* (a
//! million distinct keys, then each member's resident memory and data directory size). Those
//! sizes go into a second table, as means per member.
//!
//! Each suite line runs `--rounds` times (3 by default) against each store, the order
//! alternating from round to round, and the table shows each store's run with the median rate:
//! on a shared two-core machine one run of a line swings by more than builds differ.
//! Before each store's run of a line, both stores are left to fall quiet (at most a minute), so
//! neither is measured while either one still compacts what the line before wrote. Each row also
//! shows the share of the machine's CPU time the hypervisor took away (`steal` in `/proc/stat`)
//! during each store's shown run: on a shared virtual machine that share swings from 0 to over
//! half, and a row measured under it says more about the host than about either store.
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
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{CompactionRequest, DefragmentRequest, StatusRequest, StatusResponse};

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

/// The history scenario, on fresh clusters: this many puts to one key, left uncompacted...
const HISTORY_FILL: (&str, &str) =
    ("put, 100 clients, 100k revisions of one key", "put --clients 100 --conns 10 --total 100000 --key-space-size 1");

/// ...then reads of that key over its uncompacted history.
const HISTORY_SUITE: &[(&str, &str)] = &[
    (
        "range linearizable over 100k revisions, 100 clients",
        "range --clients 100 --conns 10 --total 20000 --consistency l",
    ),
    (
        "range serializable over 100k revisions, 100 clients",
        "range --clients 100 --conns 10 --total 20000 --consistency s",
    ),
];

/// The size scenario, on fresh clusters: a million distinct keys with 256-byte values.
const MILLION_KEYS_FILL: (&str, &str) = (
    "put, 100 clients, 1M distinct keys",
    "put --clients 100 --conns 10 --total 1000000 --key-space-size 1000000 --sequential-keys",
);

/// The footprint table's rows: mean per member, MiB.
const DISK_HISTORY: &str = "on-disk size, 100k revisions of one key";
const DISK_COMPACTED: &str = "on-disk size, after compacting them";
const DISK_DEFRAGMENTED: &str = "on-disk size, after compacting and defragmenting";
const MEMORY_MILLION: &str = "resident memory, 1M keys";
const DISK_MILLION: &str = "on-disk size, 1M keys";

const FOOTPRINT_INTRO: &str = "\nFootprint, mean per member (MiB; lower is better): resident memory (VmRSS) and the data \
    directory's allocated size (`du`), each measured 5 s after the load or maintenance call ended. \
    Values are distinct pseudo-random bytes, so compression gains nothing a real workload would not \
    give.\n\n";

/// How long a scenario's fill may take against one store.
const FILL_BOUND: Duration = Duration::from_secs(900);

/// How long the members are left alone after a fill or a compaction before they are measured,
/// so that what they do in the background right after a burst is not what is measured.
const SETTLE: Duration = Duration::from_secs(5);

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
    /// Only the suite lines whose label contains this text (a scenario runs when any of its
    /// labels does: "100k revisions", "1M keys", "on-disk size").
    #[arg(long)]
    only: Option<String>,
    /// Runs of each suite line against each store (alternating which goes first); the table
    /// shows each store's run with the median rate. The scenarios' fills run once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    rounds: u8,
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
    /// Each member's data directory, in the order of `children`.
    data_dirs: Vec<PathBuf>,
}

impl Cluster {
    /// CPU time the members have used so far, in clock ticks (user + system, from `/proc`).
    fn cpu_ticks(&self) -> Result<u64> {
        let mut total = 0;
        for child in &self.children {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                .with_context(|| format!("reading the CPU use of member process {}", child.id()))?;
            total += stat_cpu_ticks(&stat).with_context(|| format!("parsing /proc/{}/stat", child.id()))?;
        }
        Ok(total)
    }

    /// Mean resident memory of the members, in bytes (VmRSS from `/proc`).
    fn mean_rss(&self) -> Result<u64> {
        let mut total = 0;
        for child in &self.children {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .with_context(|| format!("reading the status of member process {}", child.id()))?;
            let kib: u64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no VmRSS for member process {}", child.id()))?;
            total += kib * 1024;
        }
        Ok(total / self.children.len().max(1) as u64)
    }

    /// Mean disk space the members' data directories take (allocated blocks, as `du` counts).
    fn mean_disk(&self) -> Result<u64> {
        let mut total = 0;
        for dir in &self.data_dirs {
            total += disk_usage(dir)?;
        }
        Ok(total / self.data_dirs.len().max(1) as u64)
    }

    /// The endpoints with the leader's first. A one-connection line talks to the first endpoint
    /// only, so both stores' single clients talk to their leader, and which member won the
    /// election does not decide the ratio; many connections still spread over every member.
    async fn leader_first(&self) -> Result<Vec<String>> {
        let mut endpoints = self.endpoints.clone();
        for (n, url) in self.endpoints.iter().enumerate() {
            let status = member_status(url, Duration::from_secs(10)).await?;
            if status.header.is_some_and(|header| header.member_id == status.leader) {
                endpoints.rotate_left(n);
                break;
            }
        }
        Ok(endpoints)
    }

    /// Compacts at the current revision, waiting until the history is physically removed.
    async fn compact_all(&self) -> Result<i64> {
        let mut kv = KvClient::new(keel_store::tls::lazy_channel(&self.endpoints[0], None, None, |e| e)?);
        let revision = super::kv::current_revision(&mut kv).await?;
        kv.compact(CompactionRequest { revision, physical: true }).await.context("compact")?;
        Ok(revision)
    }

    /// Defragments every member, one after another (etcd's defragmentation is per member).
    async fn defragment_all(&self) -> Result<()> {
        for url in &self.endpoints {
            let channel = keel_store::tls::lazy_channel(url, None, None, |e| e)?;
            MaintenanceClient::new(channel)
                .defragment(DefragmentRequest {})
                .await
                .with_context(|| format!("defragmenting {url}"))?;
        }
        Ok(())
    }
}

/// User plus system time (fields 14 and 15) from a `/proc/<pid>/stat` line. The command name in
/// field 2 may hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Steal and total jiffies of all CPUs from `/proc/stat`'s first line (`cpu user nice system
/// idle iowait irq softirq steal …`).
fn stat_steal_and_total(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map(str::parse).collect::<Result<_, _>>().ok()?;
    let steal = *values.get(7)?;
    Some((steal, values.iter().sum()))
}

/// The machine's steal and total jiffies now; `None` where `/proc/stat` cannot be read.
fn steal_and_total() -> Option<(u64, u64)> {
    stat_steal_and_total(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The share of CPU time stolen between two readings, in per cent.
fn steal_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((steal0, total0), (steal1, total1)) = (before?, after?);
    let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
    Some(100.0 * steal1.saturating_sub(steal0) as f64 / total as f64)
}

/// One store's run of a suite line, and the steal time while it ran.
struct Run {
    report: Report,
    steal_percent: Option<f64>,
}

/// Runs one suite line and reads the steal time around it.
async fn measured_run(bound: Duration, line: &str, endpoints: &[String]) -> Result<Run> {
    let before = steal_and_total();
    let report = run_line_within(bound, line, endpoints).await?;
    Ok(Run { report, steal_percent: steal_percent(before, steal_and_total()) })
}

/// Longest wait for both stores to fall quiet before a suite line.
const QUIET_BOUND: Duration = Duration::from_secs(60);

/// Quiet: the members of both stores used at most this many clock ticks (1/100 s on Linux) per
/// member in one second, 5 % of a core each. Idle members (heartbeats, timers) use 0.5–2.5; a
/// store still compacting what the previous line wrote uses a whole core.
const QUIET_TICKS_PER_MEMBER_SECOND: u64 = 5;

/// An etcd cluster and a Keel cluster of the same size, started for one scenario.
struct Pair {
    etcd: Cluster,
    keel: Cluster,
}

impl Pair {
    async fn start(etcd: &Path, keel: &Path, size: usize, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("etcd"))?;
        std::fs::create_dir_all(dir.join("keel"))?;
        eprintln!("== {size} member(s): starting etcd and Keel in {}", dir.display());
        let etcd = start_cluster(etcd, false, size, &dir.join("etcd")).await?;
        let keel = start_cluster(keel, true, size, &dir.join("keel")).await?;
        Ok(Self { etcd, keel })
    }

    /// Waits (at most [`QUIET_BOUND`]) until neither store is busy with background work left
    /// over from the line before (etcd's and RocksDB's compactions, snapshots), so that neither
    /// store's next line shares the cores with either store's leftovers. Gives up quietly: a
    /// store that never falls quiet is still measured, and the wait is reported.
    async fn settle(&self) -> Result<()> {
        let started = Instant::now();
        let ticks = || -> Result<u64> { Ok(self.etcd.cpu_ticks()? + self.keel.cpu_ticks()?) };
        let quiet = QUIET_TICKS_PER_MEMBER_SECOND * (self.etcd.children.len() + self.keel.children.len()) as u64;
        let mut before = ticks()?;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = ticks()?;
            let used = now.saturating_sub(before);
            if used <= quiet {
                if started.elapsed() > Duration::from_secs(2) {
                    eprintln!("   (the stores fell quiet after {:.0} s)", started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            if started.elapsed() >= QUIET_BOUND {
                eprintln!("   (the stores were still busy after {QUIET_BOUND:?}: {used} ticks in the last second)");
                return Ok(());
            }
            before = now;
        }
    }

    /// Runs each line `rounds` times against both stores, alternating which goes first so that
    /// drift in the machine's load hits both alike, and letting both fall quiet before each
    /// store's run; each row shows each store's run with the median rate. Returns the rows.
    async fn run_lines(
        &self,
        lines: &[&(&str, &str)],
        size: usize,
        bound: Duration,
        rounds: usize,
    ) -> Result<Vec<String>> {
        let mut rows = Vec::with_capacity(lines.len());
        for (n, (label, line)) in lines.iter().enumerate() {
            eprintln!("-- {label}");
            let (mut etcd_runs, mut keel_runs) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
            for round in 0..rounds {
                let etcd_first = (n + round) % 2 == 0;
                let (first, second) = if etcd_first { (&self.etcd, &self.keel) } else { (&self.keel, &self.etcd) };
                self.settle().await?;
                let a =
                    measured_run(bound, line, &first.leader_first().await?).await.with_context(|| label.to_string())?;
                self.settle().await?;
                let b = measured_run(bound, line, &second.leader_first().await?)
                    .await
                    .with_context(|| label.to_string())?;
                let (etcd_run, keel_run) = if etcd_first { (a, b) } else { (b, a) };
                if rounds > 1 {
                    eprintln!("   round {}: {}", round + 1, row(label, size, &etcd_run, &keel_run));
                }
                etcd_runs.push(etcd_run);
                keel_runs.push(keel_run);
            }
            let row = row(label, size, &median_run(etcd_runs), &median_run(keel_runs));
            eprintln!("{row}");
            rows.push(row);
        }
        Ok(rows)
    }

    /// One footprint row: `measure` of both clusters, in MiB, and their ratio.
    fn footprint_row(&self, label: &str, size: usize, measure: fn(&Cluster) -> Result<u64>) -> Result<String> {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let etcd = measure(&self.etcd).context("etcd")?;
        let keel = measure(&self.keel).context("Keel")?;
        let row = format!(
            "| {label} | {size} | {:.1} | {:.1} | **{:.2}×** |",
            mib(etcd),
            mib(keel),
            keel as f64 / etcd.max(1) as f64
        );
        eprintln!("{row}");
        Ok(row)
    }
}

/// Allocated bytes of every file under `path` (`du`'s figure: blocks, not lengths, so sparse
/// and preallocated files count as what they take).
fn disk_usage(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            total += disk_usage(&entry?.path())?;
        }
    }
    Ok(total)
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
    let mut cluster = Cluster { children: Vec::new(), endpoints: Vec::new(), data_dirs: Vec::new() };
    for (i, (client, peer)) in ports.iter().enumerate() {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join(format!("m{i}.log")))?;
        let data_dir = dir.join(format!("m{i}"));
        let mut command = Command::new(binary);
        if store_arg {
            command.arg("store");
        }
        command
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "compare"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        cluster.children.push(command.spawn().with_context(|| format!("starting {}", binary.display()))?);
        cluster.endpoints.push(client_url);
        cluster.data_dirs.push(data_dir);
    }
    wait_for_leader(&cluster.endpoints).await?;
    Ok(cluster)
}

/// Waits (at most a minute) until every endpoint reports a leader.
async fn wait_for_leader(endpoints: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in endpoints {
        loop {
            if member_status(url, Duration::from_secs(1)).await.is_ok_and(|status| status.leader != 0) {
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

/// The Status of the member at `url`, or an error naming it when it does not answer within `bound`.
async fn member_status(url: &str, bound: Duration) -> Result<StatusResponse> {
    let channel = keel_store::tls::lazy_channel(url, None, None, |e| e)?;
    let status = tokio::time::timeout(bound, MaintenanceClient::new(channel).status(StatusRequest {}))
        .await
        .map_err(|_| anyhow::anyhow!("{url} gave no status within {bound:?}"))?
        .with_context(|| format!("status of {url}"))?;
    Ok(status.into_inner())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Longest one suite line may run against one store before the comparison gives up on it.
const LINE_BOUND: Duration = Duration::from_secs(300);

async fn run_line_within(bound: Duration, line: &str, endpoints: &[String]) -> Result<Report> {
    tokio::time::timeout(bound, run_line_unbounded(line, endpoints))
        .await
        .map_err(|_| anyhow::anyhow!("did not finish within {bound:?}"))?
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

/// Of several runs of one line against one store (at least one), the run with the median rate.
fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.report.qps().total_cmp(&b.report.qps()));
    runs.swap_remove(runs.len() / 2)
}

/// One table row from the two runs.
fn row(label: &str, size: usize, etcd_run: &Run, keel_run: &Run) -> String {
    let (etcd, keel) = (&etcd_run.report, &keel_run.report);
    let p99 = |r: &Report| r.latency(0.99);
    let lost = |r: &Report| if r.errors() > 0 { format!(" ({} failed)", r.errors()) } else { String::new() };
    let steal = |run: &Run| run.steal_percent.map_or_else(|| "?".to_string(), |p| format!("{p:.0}"));
    format!(
        "| {label} | {size} | {:.0}{} | {:.0}{} | **{:.2}×** | {} | {} | {} | {:.2} | {} / {} |",
        etcd.qps(),
        lost(etcd),
        keel.qps(),
        lost(keel),
        keel.qps() / etcd.qps(),
        ms(etcd.mean()),
        ms(keel.mean()),
        ms(p99(etcd)),
        p99(keel).as_secs_f64() / p99(etcd).as_secs_f64(),
        steal(etcd_run),
        steal(keel_run),
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
    let rounds = usize::from(args.rounds);
    let scratch = Scratch::new()?;
    let (fsync, round_trip) = floor(scratch.path())?;
    let mut table = vec![
        "| benchmark | members | etcd req/s | Keel req/s | Keel/etcd | etcd mean | Keel mean | etcd p99 | Keel p99 / etcd p99 | steal % (etcd / Keel run) |"
            .to_string(),
        "|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let selected = |label: &str| args.only.as_ref().is_none_or(|only| label.contains(only.as_str()));
    let lines: Vec<&(&str, &str)> = SUITE.iter().filter(|(label, _)| selected(label)).collect();
    let history =
        [HISTORY_FILL.0, HISTORY_SUITE[0].0, HISTORY_SUITE[1].0, DISK_HISTORY, DISK_COMPACTED, DISK_DEFRAGMENTED]
            .iter()
            .any(|label| selected(label));
    let million = [MILLION_KEYS_FILL.0, MEMORY_MILLION, DISK_MILLION].iter().any(|label| selected(label));
    let mut footprint =
        vec!["| measure | members | etcd | Keel | Keel/etcd |".to_string(), "|---|---|---|---|---|".to_string()];
    for &size in &args.members {
        let dir = scratch.path().join(format!("{size}"));
        if !lines.is_empty() {
            let pair = Pair::start(&args.etcd, &keel, size, &dir.join("suite")).await?;
            table.extend(pair.run_lines(&lines, size, LINE_BOUND, rounds).await?);
        }
        if history {
            // Fresh clusters, so the history is exactly the fill's and nothing else's.
            let pair = Pair::start(&args.etcd, &keel, size, &dir.join("history")).await?;
            table.extend(pair.run_lines(&[&HISTORY_FILL], size, FILL_BOUND, 1).await?);
            tokio::time::sleep(SETTLE).await;
            let reads: Vec<&(&str, &str)> = HISTORY_SUITE.iter().collect();
            table.extend(pair.run_lines(&reads, size, LINE_BOUND, rounds).await?);
            footprint.push(pair.footprint_row(DISK_HISTORY, size, Cluster::mean_disk)?);
            eprintln!("-- compacting both stores at their current revision");
            pair.etcd.compact_all().await.context("etcd")?;
            pair.keel.compact_all().await.context("Keel")?;
            tokio::time::sleep(SETTLE).await;
            footprint.push(pair.footprint_row(DISK_COMPACTED, size, Cluster::mean_disk)?);
            eprintln!("-- defragmenting every member of both stores");
            pair.etcd.defragment_all().await.context("etcd")?;
            pair.keel.defragment_all().await.context("Keel")?;
            tokio::time::sleep(SETTLE).await;
            footprint.push(pair.footprint_row(DISK_DEFRAGMENTED, size, Cluster::mean_disk)?);
        }
        if million {
            let pair = Pair::start(&args.etcd, &keel, size, &dir.join("million")).await?;
            table.extend(pair.run_lines(&[&MILLION_KEYS_FILL], size, FILL_BOUND, 1).await?);
            tokio::time::sleep(SETTLE).await;
            footprint.push(pair.footprint_row(MEMORY_MILLION, size, Cluster::mean_rss)?);
            footprint.push(pair.footprint_row(DISK_MILLION, size, Cluster::mean_disk)?);
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
         fsync on every commit, members and load generator on the same machine; each line shows each \
         store's median-rate run of {rounds} (the fills: one). Floor for one durable \
         write: {} (256-byte append + fdatasync) + {} (loopback round trip).\n\n",
        ms(fsync),
        ms(round_trip)
    );
    section.push_str(&table.join("\n"));
    section.push('\n');
    if footprint.len() > 2 {
        section.push_str(FOOTPRINT_INTRO);
        section.push_str(&footprint.join("\n"));
        section.push('\n');
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    out.write_all(section.as_bytes())?;
    println!("{section}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Report, Run, median_run, stat_cpu_ticks, stat_steal_and_total, steal_percent};

    #[test]
    fn the_median_run_is_the_one_with_the_middle_rate() {
        let run = |requests: usize| Run {
            report: Report::new(vec![Duration::from_millis(1); requests], 0, None, Duration::from_secs(1)).unwrap(),
            steal_percent: Some(requests as f64),
        };
        let median = median_run(vec![run(30), run(10), run(20)]);
        assert_eq!(median.report.requests(), 20);
        assert_eq!(median.steal_percent, Some(20.0), "the shown run's own steal time goes with it");
        assert_eq!(median_run(vec![run(7)]).report.requests(), 7);
        assert_eq!(median_run(vec![run(5), run(9)]).report.requests(), 9);
    }

    #[test]
    fn steal_time_is_the_stolen_share_of_all_cpu_time_between_two_readings() {
        let before = "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n";
        let after = "cpu  200 0 100 1500 10 0 5 185 0 0\ncpu0 100 0 50 750 5 0 2 93 0 0\n";
        assert_eq!(stat_steal_and_total(before), Some((35, 1000)));
        assert_eq!(stat_steal_and_total(after), Some((185, 2000)));
        assert_eq!(steal_percent(stat_steal_and_total(before), stat_steal_and_total(after)), Some(15.0));
        assert_eq!(stat_steal_and_total("intr 1 2 3\n"), None, "the first line must be the CPU total");
        assert_eq!(stat_steal_and_total("cpu  1 2 3\n"), None, "a kernel without a steal field");
        assert_eq!(steal_percent(Some((5, 100)), Some((5, 100))), None, "no time passed");
        assert_eq!(steal_percent(None, Some((5, 100))), None);
    }

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (keel (m0) x) S 1 4242 4242 0 -1 4194560 905 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(stat_cpu_ticks("4242 (keel) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }
}
