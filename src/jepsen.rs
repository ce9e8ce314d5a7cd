//! `keel jepsen test`: the chaos suite's command line. Parses the flags, picks a seed when none is
//! given (and prints it, with the whole command that reproduces the run), runs the test, prints
//! the verdict and where the results are.
//!
//! Exit status: 0 when every checker found the history valid, 1 when an anomaly was found, 2 when
//! the verdict is unknown (a checker's search bound was reached) or the harness failed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_jepsen::checker::Validity;
use keel_jepsen::nemesis::parse_nemeses;
use keel_jepsen::{TestOptions, WorkloadKind};

/// Chaos tests.
#[derive(Debug, Subcommand)]
pub enum Jepsen {
    /// Start a cluster, run a workload under faults, check the history, write a report.
    Test(TestArgs),
}

/// Flags of `keel jepsen test`, named like Jepsen's own.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The workload: `register` (per-key read/write/cas, checked for linearizability), `append`
    /// (transactions appending to lists, checked for strict serializability), `watch` (writers
    /// and watchers, checked against etcd's watch guarantees) or `lease` (lock holders with
    /// leases and fenced writes, checked for exclusion, keep-alive and expiry).
    #[arg(long, default_value = "register")]
    workload: String,
    /// Faults, comma-separated: kill, kill-leader, pause, pause-leader, partition,
    /// partition-leader, clock (needs libfaketime), member; `all` or `none`.
    #[arg(long, default_value = "kill,partition")]
    nemesis: String,
    /// Number of members.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=63))]
    nodes: u64,
    /// Seconds the workload runs, at least.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    time_limit: u64,
    /// Client operations that must succeed before the workload stops: past the time limit it runs
    /// on until they have, for at most ten time limits in all (0: stop at the time limit).
    #[arg(long, default_value_t = 0)]
    min_ok: usize,
    /// Target operations per second across all clients.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Number of client workers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    concurrency: u64,
    /// Seed of every random choice (operations, faults, targets); random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Output directory, new or empty (default: `jepsen-results/<workload>-<seed>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Mean seconds between faults, and mean fault duration.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Bound on each client operation, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    op_timeout: Duration,
    /// Register workload: operations on one key before moving to the next.
    #[arg(long, default_value_t = 300)]
    ops_per_key: u64,
    /// How long the cluster may take to recover after every fault is healed, e.g. `60s`.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    recovery_timeout: Duration,
    /// First member address (127.0.0.11: members are .11, .12, ...).
    #[arg(long, default_value = "127.0.0.11")]
    base_address: std::net::Ipv4Addr,
    /// The keel binary the members run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Switch on planted bugs in the members, comma-separated (stale-read, ack-before-fsync,
    /// skip-watch-event, short-keep-alive);
    /// only a build with the `planted-bugs` feature has them.
    #[arg(long)]
    planted_bug: Option<String>,
    /// Run against these client URLs of a cluster this test does not start (any etcd v3
    /// endpoints, comma-separated) instead of starting Keel members; only with `--nemesis none`.
    /// Keys under `jepsen/` must not exist there yet.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// With `--endpoints`: the CA bundle that verifies them.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// With `--endpoints`: the client certificate to present.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// With `--endpoints`: the client certificate's key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// Runs a `keel jepsen` command; returns the process exit status.
pub async fn run(command: Jepsen) -> Result<u8> {
    match command {
        Jepsen::Test(args) => test(args).await,
    }
}

async fn test(args: TestArgs) -> Result<u8> {
    let workload: WorkloadKind = args.workload.parse()?;
    let nemeses = parse_nemeses(&args.nemesis)?;
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        bail!("--interval must be a positive number of seconds");
    }
    if args.planted_bug.is_some() && !cfg!(feature = "planted-bugs") && args.binary.is_none() {
        bail!(
            "--planted-bug needs a debug build with the planted-bugs feature (cargo build --features planted-bugs); this one has none"
        );
    }
    if let Some(bugs) = &args.planted_bug {
        for name in bugs.split(',').map(str::trim) {
            if keel_store::planted::PlantedBug::from_name(name).is_none() {
                let known: Vec<&str> = keel_store::planted::PlantedBug::ALL.iter().map(|b| b.name()).collect();
                bail!("unknown planted bug {name:?}; known: {}", known.join(", "));
            }
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("jepsen-results/{workload}-{seed}")));
    let binary = match &args.binary {
        Some(binary) => binary.clone(),
        None => std::env::current_exe().context("locating this keel binary")?,
    };
    let nemesis_flag = if nemeses.is_empty() {
        "none".to_string()
    } else {
        nemeses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    };
    let mut command = format!(
        "{} jepsen test --workload {workload} --nemesis {nemesis_flag} --nodes {} --time-limit {} --rate {} \
         --concurrency {} --interval {} --op-timeout {}ms --ops-per-key {} --seed {seed} --out {}",
        binary.display(),
        args.nodes,
        args.time_limit,
        args.rate,
        args.concurrency,
        args.interval,
        args.op_timeout.as_millis(),
        args.ops_per_key,
        out.display(),
    );
    if args.min_ok > 0 {
        command.push_str(&format!(" --min-ok {}", args.min_ok));
    }
    if let Some(bugs) = &args.planted_bug {
        command.push_str(&format!(" --planted-bug {bugs}"));
    }
    if !args.endpoints.is_empty() {
        command.push_str(&format!(" --endpoints {}", args.endpoints.join(",")));
        for (flag, file) in [("--cacert", &args.cacert), ("--cert", &args.cert), ("--key", &args.key)] {
            if let Some(file) = file {
                command.push_str(&format!(" {flag} {}", file.display()));
            }
        }
    }
    eprintln!("reproduce with: {command}");
    let options = TestOptions {
        workload,
        nemeses,
        nodes: args.nodes as usize,
        time_limit: Duration::from_secs(args.time_limit),
        min_ok: args.min_ok,
        rate: args.rate,
        concurrency: args.concurrency,
        seed,
        out: out.clone(),
        binary,
        interval: Duration::from_secs_f64(args.interval),
        op_timeout: args.op_timeout,
        ops_per_key: args.ops_per_key,
        planted_bugs: args.planted_bug.clone(),
        recovery_timeout: args.recovery_timeout,
        base_ip: args.base_address,
        command,
        endpoints: args.endpoints.clone(),
        endpoint_tls: keel_store::tls::TlsFiles {
            cert_file: args.cert.clone(),
            key_file: args.key.clone(),
            trusted_ca_file: args.cacert.clone(),
        },
    };
    let outcome = keel_jepsen::run(options).await?;
    let verdict = match outcome.valid {
        Validity::Valid => "valid",
        Validity::Invalid => "INVALID",
        Validity::Unknown => "unknown",
    };
    for result in &outcome.results {
        let kinds: Vec<&str> = result.anomalies.iter().map(|a| a.kind.as_str()).collect();
        println!("{}: {:?} {}", result.checker, result.valid, kinds.join(" "));
    }
    println!(
        "{verdict}: {} operations, {} faults{}; results in {}",
        outcome.ops,
        outcome.faults,
        if outcome.interrupted { ", interrupted" } else { "" },
        out.display()
    );
    Ok(match outcome.valid {
        Validity::Valid => 0,
        Validity::Invalid => 1,
        Validity::Unknown => 2,
    })
}
