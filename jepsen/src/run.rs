//! One test from start to verdict: set up the cluster and firewall, run workers and nemesis for
//! the time limit (or until interrupted), heal, wait for recovery, tear down, check, and write
//! `history.jsonl`, `results.json` and `report.html` into the output directory.
//!
//! Invariants: teardown (killing every member, removing the firewall chain) happens on every
//! path out of `run` after setup began, including errors and SIGINT/SIGTERM; a second signal
//! aborts the wait for workers but still tears down; the output directory must be new or empty,
//! so an earlier result is never overwritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::JepsenError;
use crate::checker::{self, Anomaly, CheckResult, Validity};
use crate::cluster::{Cluster, ClusterSpec, StateComparison};
use crate::history::{History, Recorder};
use crate::nemesis::{self, NemesisKind, Schedule};
use crate::net::Firewall;
use crate::rng::Rng;
use crate::workload::{self, WorkerContext, WorkerSpec, Workload};

/// Which workload to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Per-key read/write/compare-and-set, checked for linearizability.
    Register,
    /// Transactions appending to lists, checked for strict serializability.
    Append,
    /// Writers and watchers, checked against etcd's watch guarantees.
    Watch,
    /// Lock holders with leases and fenced writes, checked for exclusion and lease expiry.
    Lease,
}

impl std::str::FromStr for WorkloadKind {
    type Err = JepsenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "register" => Ok(WorkloadKind::Register),
            "append" => Ok(WorkloadKind::Append),
            "watch" => Ok(WorkloadKind::Watch),
            "lease" => Ok(WorkloadKind::Lease),
            other => {
                Err(JepsenError::Usage(format!("unknown workload {other:?}; known: register, append, watch, lease")))
            }
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Append => "append",
            WorkloadKind::Watch => "watch",
            WorkloadKind::Lease => "lease",
        })
    }
}

/// Everything a test needs.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// The workload.
    pub workload: WorkloadKind,
    /// Enabled fault kinds (empty: no faults).
    pub nemeses: Vec<NemesisKind>,
    /// Number of members.
    pub nodes: usize,
    /// How long the workload runs, at least.
    pub time_limit: Duration,
    /// Client operations that must complete `Ok` before the workload stops: past the time limit
    /// the run goes on until they have, for at most [`MIN_OK_EXTENSION`] times the limit in all.
    /// A machine slowed by its neighbours then yields as much evidence as an idle one instead of a
    /// vacuous history. Zero: stop at the time limit.
    pub min_ok: usize,
    /// Target operations per second, across all workers.
    pub rate: f64,
    /// Number of client workers.
    pub concurrency: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Output directory (new or empty).
    pub out: PathBuf,
    /// The `keel` binary the members run.
    pub binary: PathBuf,
    /// Mean time between faults and mean fault duration.
    pub interval: Duration,
    /// Bound on each client operation.
    pub op_timeout: Duration,
    /// Register workload: operations per key before moving to the next.
    pub ops_per_key: u64,
    /// Planted bugs to switch on in the members (a `planted-bugs` build only).
    pub planted_bugs: Option<String>,
    /// How long the cluster may take to recover once every fault is healed.
    pub recovery_timeout: Duration,
    /// First member address.
    pub base_ip: std::net::Ipv4Addr,
    /// The command line that reproduces this test, for the report.
    pub command: String,
    /// Client URLs of a cluster this test does not start (any etcd v3 endpoints); empty: start
    /// a Keel cluster.
    pub endpoints: Vec<String>,
    /// Client TLS for `endpoints`: CA, and certificate and key to present.
    pub endpoint_tls: keel_store::tls::TlsFiles,
}

/// What a test concluded.
#[derive(Debug)]
pub struct TestOutcome {
    /// The overall verdict.
    pub valid: Validity,
    /// Every checker's result.
    pub results: Vec<CheckResult>,
    /// Client operations invoked.
    pub ops: usize,
    /// Faults injected.
    pub faults: usize,
    /// True when the test was cut short by a signal.
    pub interrupted: bool,
}

/// Runs one test.
pub async fn run(options: TestOptions) -> Result<TestOutcome, JepsenError> {
    validate(&options)?;
    if !options.endpoints.is_empty() {
        return run_external(options).await;
    }
    let faketime =
        if options.nemeses.contains(&NemesisKind::Clock) { Some(crate::cluster::find_faketime()?) } else { None };
    prepare_out_dir(&options.out)?;
    let firewall = if options.nemeses.iter().any(|k| k.needs_firewall()) { Some(Firewall::install()?) } else { None };
    let spec = ClusterSpec {
        binary: options.binary.clone(),
        nodes: options.nodes,
        dir: options.out.clone(),
        planted_bugs: options.planted_bugs.clone(),
        base_ip: options.base_ip,
        faketime,
    };
    tracing::info!(nodes = options.nodes, out = %options.out.display(), "starting the cluster");
    let mut cluster = Cluster::start(spec).await?;
    let result = exercise(&options, Target::Started(&mut cluster, firewall.as_ref())).await;
    // Teardown, whatever happened above.
    if let Some(firewall) = &firewall
        && let Err(err) = firewall.heal()
    {
        tracing::warn!(%err, "healing the network");
    }
    cluster.shutdown().await;
    drop(firewall);
    let (history, faults, interrupted, findings) = result?;
    finish(&options, history, faults, interrupted, findings).await
}

/// Runs the workload against endpoints of a cluster this test did not start: no faults (they
/// need the members' processes) and no recovery check, and keys under `jepsen/` must not exist
/// yet, so that nothing of an earlier run (or of anyone else) is mistaken for this run's writes.
async fn run_external(options: TestOptions) -> Result<TestOutcome, JepsenError> {
    if !options.nemeses.is_empty() {
        return Err(JepsenError::Usage(
            "--endpoints runs against a cluster this test did not start, and faults need its processes; \
             use --nemesis none"
                .into(),
        ));
    }
    let files = &options.endpoint_tls;
    let tls = if files.trusted_ca_file.is_some() || files.cert_file.is_some() {
        Some(
            keel_store::tls::ClientTls::new(files.clone())
                .map_err(|err| JepsenError::Usage(format!("client TLS for --endpoints: {err}")))?,
        )
    } else {
        None
    };
    let mut members = Vec::new();
    for url in &options.endpoints {
        let name = url.split("://").nth(1).unwrap_or(url).to_string();
        let channel =
            keel_store::tls::lazy_channel(url, tls.clone(), None, |e| e.connect_timeout(Duration::from_secs(1)))
                .map_err(|err| JepsenError::Usage(format!("endpoint {url}: {err}")))?;
        members.push((name, channel));
    }
    let mut kv = keel_proto::etcdserverpb::kv_client::KvClient::new(members[0].1.clone());
    let probe = keel_proto::etcdserverpb::RangeRequest {
        key: b"jepsen/".to_vec(),
        range_end: b"jepsen0".to_vec(),
        count_only: true,
        ..Default::default()
    };
    let found = tokio::time::timeout(options.op_timeout, kv.range(probe))
        .await
        .map_err(|_| {
            JepsenError::Setup(format!("{} did not answer within {:?}", options.endpoints[0], options.op_timeout))
        })?
        .map_err(|status| JepsenError::Setup(format!("{}: {}", options.endpoints[0], status.message())))?;
    if found.get_ref().count > 0 {
        return Err(JepsenError::Usage(format!(
            "the endpoints already hold {} keys under jepsen/ (an earlier run?); this test would mistake them for \
             its own writes. Delete them first (etcdctl del --prefix jepsen/) or use a fresh cluster",
            found.get_ref().count
        )));
    }
    prepare_out_dir(&options.out)?;
    tracing::info!(endpoints = ?options.endpoints, out = %options.out.display(), "running against external endpoints");
    let (history, faults, interrupted, findings) = exercise(&options, Target::External(members)).await?;
    finish(&options, history, faults, interrupted, findings).await
}

/// What the workload runs against.
enum Target<'a> {
    /// A cluster this test started (and the firewall, when partitions are enabled).
    Started(&'a mut Cluster, Option<&'a Firewall>),
    /// Endpoints of some other cluster, by name and channel.
    External(Vec<(String, tonic::transport::Channel)>),
}

fn validate(options: &TestOptions) -> Result<(), JepsenError> {
    if options.concurrency == 0 {
        return Err(JepsenError::Usage("--concurrency must be at least 1".into()));
    }
    if !options.rate.is_finite() || options.rate <= 0.0 {
        return Err(JepsenError::Usage("--rate must be positive".into()));
    }
    if options.time_limit.is_zero() {
        return Err(JepsenError::Usage("--time-limit must be positive".into()));
    }
    if options.endpoints.is_empty() && !options.binary.is_file() {
        return Err(JepsenError::Usage(format!("no keel binary at {}", options.binary.display())));
    }
    Ok(())
}

fn prepare_out_dir(out: &Path) -> Result<(), JepsenError> {
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        return Err(JepsenError::Usage(format!(
            "{} is not empty; choose a new --out directory so earlier results are kept",
            out.display()
        )));
    }
    std::fs::create_dir_all(out)?;
    Ok(())
}

/// How far past the time limit a run waits for `min_ok` operations: the whole workload phase lasts
/// at most this many time limits, so a cluster that cannot serve at all still ends the test.
pub const MIN_OK_EXTENSION: u32 = 10;

/// How often the timer looks at the count of `Ok` operations once the time limit has passed.
const MIN_OK_POLL: Duration = Duration::from_millis(100);

/// The process number of the watch workload's reference watch and of the lease workload's final
/// listing, far from any worker's.
const REFERENCE_PROCESS: u64 = 1_000_000_000;

type Exercised = (History, usize, bool, Vec<CheckResult>);

/// Runs workers and nemesis, then heals and waits for recovery. Returns the history, the number
/// of faults, whether a signal cut the test short, and findings about the cluster itself.
async fn exercise(options: &TestOptions, mut target: Target<'_>) -> Result<Exercised, JepsenError> {
    let recorder = Arc::new(Recorder::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Ends the workload at the time limit once `min_ok` operations have completed (bounded by
    // MIN_OK_EXTENSION limits), or at the first SIGINT/SIGTERM.
    let timer = {
        let stop_tx = stop_tx.clone();
        let interrupted = interrupted.clone();
        let limit = options.time_limit;
        let min_ok = options.min_ok;
        let recorder = recorder.clone();
        let enough = async move {
            tokio::time::sleep(limit).await;
            let bound = tokio::time::Instant::now() + limit * (MIN_OK_EXTENSION - 1);
            if recorder.client_ok() < min_ok {
                tracing::info!(
                    ok = recorder.client_ok(),
                    min_ok,
                    "time limit reached; running on until enough operations succeed"
                );
            }
            while recorder.client_ok() < min_ok && tokio::time::Instant::now() < bound {
                tokio::time::sleep(MIN_OK_POLL).await;
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = enough => {}
                _ = interrupt() => {
                    tracing::warn!("interrupted: stopping the workload, healing and cleaning up");
                    interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            stop_tx.send_replace(true);
        })
    };

    let workload = match options.workload {
        WorkloadKind::Register => Workload::Register(workload::register::Register::new(options.ops_per_key)),
        WorkloadKind::Append => Workload::Append(workload::append::Append::new()),
        WorkloadKind::Watch => Workload::Watch(workload::watch::Watch::new()),
        WorkloadKind::Lease => Workload::Lease(workload::lease::LeaseLock::new()),
    };
    let members: Vec<(String, tonic::transport::Channel)> = match &target {
        Target::Started(cluster, _) => (0..cluster.members.len())
            .map(|i| cluster.channel(i).map(|channel| (cluster.members[i].name.clone(), channel)))
            .collect::<Result<_, _>>()?,
        Target::External(members) => members.clone(),
    };
    let ctx = Arc::new(WorkerContext { op_timeout: options.op_timeout });
    let mean_delay = Duration::from_secs_f64(options.concurrency as f64 / options.rate);
    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let node = (worker as usize) % members.len();
        let spec = WorkerSpec {
            worker,
            concurrency: options.concurrency,
            node: members[node].0.clone(),
            channel: members[node].1.clone(),
            members: members.clone(),
            node_index: node,
            mean_delay,
        };
        workers.push(tokio::spawn(workload::run_worker(
            spec,
            workload.clone(),
            ctx.clone(),
            recorder.clone(),
            Rng::stream(options.seed, worker + 1),
            stop_rx.clone(),
        )));
    }

    let schedule = Schedule { interval: options.interval };
    let nemesis_rng = Rng::stream(options.seed, 0);
    let faults = match &mut target {
        Target::Started(cluster, firewall) => {
            nemesis::run(cluster, *firewall, &options.nemeses, schedule, nemesis_rng, recorder.clone(), stop_rx.clone())
                .await
        }
        Target::External(_) => {
            let _ = stop_rx.clone().wait_for(|s| *s).await;
            Ok(0)
        }
    };

    // Workers notice the stop before their next operation; the one in flight is bounded by the
    // operation timeout. A lock holder first winds down what it holds: an unlock, its keep-alive
    // process (one keep-alive in flight) and a revoke, each bounded the same way.
    let worker_bound = options.op_timeout * 5 + mean_delay * 2 + Duration::from_secs(1);
    for worker in workers {
        if tokio::time::timeout(worker_bound, worker).await.is_err() {
            tracing::warn!("a worker did not stop in time");
        }
    }
    timer.abort();
    let faults = faults?;

    let mut findings = Vec::new();
    let recovery = match &mut target {
        Target::Started(cluster, firewall) => {
            let crashed = cluster.crashed();
            if let Some(firewall) = firewall {
                firewall.heal()?;
            }
            tracing::info!("healing every member and waiting for recovery");
            let recovery = cluster.heal(options.recovery_timeout).await;
            let state = match recovery {
                Ok(()) => cluster.compare_state(options.recovery_timeout).await,
                Err(_) => StateComparison::Unknown("the cluster did not recover".into()),
            };
            findings.push(cluster_result(&crashed, recovery.as_ref().err(), &state));
            recovery
        }
        Target::External(_) => Ok(()),
    };
    if options.workload == WorkloadKind::Watch && recovery.is_ok() {
        // The true sequence of changes, read once the cluster is whole again.
        if let Err(err) = workload::watch::reference(&ctx, members[0].1.clone(), &recorder, REFERENCE_PROCESS).await {
            tracing::warn!(%err, "the reference watch did not complete");
        }
    }
    if options.workload == WorkloadKind::Lease && recovery.is_ok() {
        tracing::info!("waiting for every abandoned lease to expire, then listing the leases left");
        let (name, channel) = &members[0];
        workload::lease::final_listing(&ctx, channel.clone(), name, &recorder, REFERENCE_PROCESS).await;
    }
    let interrupted = interrupted.load(std::sync::atomic::Ordering::Relaxed);
    Ok((recorder.history(), faults, interrupted, findings))
}

/// The `cluster` check: no member exited on its own, the cluster recovered after healing, and its
/// members then hold the same key-value state (a diverged member can hide from every history
/// check when no client happens to read the keys it differs on).
fn cluster_result(
    crashed: &[(String, String)],
    recovery: Option<&JepsenError>,
    state: &StateComparison,
) -> CheckResult {
    let mut anomalies = Vec::new();
    for (name, status) in crashed {
        anomalies.push(Anomaly {
            kind: "crash".into(),
            explanation: format!("member {name} exited on its own ({status}); see {name}.log"),
            ops: Vec::new(),
        });
    }
    if let Some(err) = recovery {
        anomalies.push(Anomaly {
            kind: "no-recovery".into(),
            explanation: format!("after every fault was healed: {err}"),
            ops: Vec::new(),
        });
    }
    if let StateComparison::Differ(explanation) = state {
        anomalies.push(Anomaly { kind: "diverged".into(), explanation: explanation.clone(), ops: Vec::new() });
    }
    let mut stats = serde_json::Map::new();
    stats.insert("crashed_members".into(), json!(crashed.len()));
    stats.insert("recovered".into(), json!(recovery.is_none()));
    // `same_state` only when the states were compared: a cluster that never recovered was not
    // found to differ, and saying `false` would claim it was.
    match state {
        StateComparison::Agree => stats.insert("same_state".into(), json!(true)),
        StateComparison::Differ(_) => stats.insert("same_state".into(), json!(false)),
        StateComparison::Unknown(why) => stats.insert("state_not_compared".into(), json!(why)),
    };
    let valid = match state {
        _ if !anomalies.is_empty() => Validity::Invalid,
        StateComparison::Unknown(_) if recovery.is_none() => Validity::Unknown,
        _ => Validity::Valid,
    };
    CheckResult { checker: "cluster".into(), valid, anomalies, stats }
}

async fn interrupt() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn finish(
    options: &TestOptions,
    history: History,
    faults: usize,
    interrupted: bool,
    mut results: Vec<CheckResult>,
) -> Result<TestOutcome, JepsenError> {
    let file = std::fs::File::create(options.out.join("history.jsonl"))?;
    history.write(std::io::BufWriter::new(file))?;
    let ops = history.events.iter().filter(|e| e.kind == crate::history::EventType::Invoke).count();
    let workload = options.workload;
    let (history, checked) = tokio::task::spawn_blocking(move || {
        let checked = match workload {
            WorkloadKind::Register => checker::register::check(&history, &checker::register::Limits::default()),
            WorkloadKind::Append => checker::append::check(&history),
            WorkloadKind::Watch => checker::watch::check(&history),
            WorkloadKind::Lease => checker::lease::check(&history, workload::lease::EXPIRY_BOUND),
        };
        (history, checked)
    })
    .await
    .map_err(|err| JepsenError::Setup(format!("the checker panicked: {err}")))?;
    results.insert(0, checked);
    let valid = results.iter().fold(Validity::Valid, |acc, r| acc.and(r.valid));
    let nemeses: Vec<String> = options.nemeses.iter().map(ToString::to_string).collect();
    let summary = json!({
        "valid": valid,
        "workload": options.workload.to_string(),
        "nemeses": nemeses,
        "nodes": options.nodes,
        "time_limit_s": options.time_limit.as_secs_f64(),
        "min_ok": options.min_ok,
        "rate": options.rate,
        "concurrency": options.concurrency,
        "seed": options.seed,
        "ops": ops,
        "faults": faults,
        "interrupted": interrupted,
        "planted_bugs": options.planted_bugs,
        "command": options.command,
        "results": results,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(std::io::Error::from)?;
    std::fs::write(options.out.join("results.json"), text + "\n")?;
    let facts = vec![
        ("workload".to_string(), options.workload.to_string()),
        ("nemesis".to_string(), if nemeses.is_empty() { "none".into() } else { nemeses.join(",") }),
        ("nodes".to_string(), options.nodes.to_string()),
        ("seed".to_string(), options.seed.to_string()),
        ("operations".to_string(), ops.to_string()),
        ("faults".to_string(), faults.to_string()),
        ("time limit".to_string(), format!("{:?}", options.time_limit)),
        ("rate / concurrency".to_string(), format!("{} op/s / {}", options.rate, options.concurrency)),
        ("interrupted".to_string(), interrupted.to_string()),
    ];
    let page = crate::report::render(&crate::report::ReportInput {
        title: &format!("keel jepsen: {} with {}", options.workload, facts[1].1),
        command: &options.command,
        history: &history,
        results: &results,
        summary: &facts,
    });
    std::fs::write(options.out.join("report.html"), page)?;
    Ok(TestOutcome { valid, results, ops, faults, interrupted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_whose_state_differs_after_healing_fail_the_cluster_check() {
        let differ = StateComparison::Differ("n1 0x1 (compacted at 0), n2 0x2 (compacted at 0)".into());
        let result = cluster_result(&[], None, &differ);
        assert_eq!(result.valid, Validity::Invalid);
        assert_eq!(result.anomalies.len(), 1);
        assert_eq!(result.anomalies[0].kind, "diverged");
        assert!(result.anomalies[0].explanation.contains("n2 0x2"));

        assert_eq!(cluster_result(&[], None, &StateComparison::Agree).valid, Validity::Valid);
        let unasked = cluster_result(&[], None, &StateComparison::Unknown("n3 gave no status".into()));
        assert_eq!(unasked.valid, Validity::Unknown, "a comparison that could not be made claims nothing");
        assert!(unasked.anomalies.is_empty());
        assert!(unasked.stats.get("same_state").is_none(), "no comparison, so no claim either way");
        assert_eq!(result.stats["same_state"], json!(false));
    }
}
