//! The chaos suite run for real, through `keel jepsen test`: the real build under kill and
//! partition faults must come out valid (the CI smoke test), and a build with planted bugs must
//! be caught by the workload and fault each bug is meant to be found by (the proof that the
//! checkers can fail).
//!
//! `scripts/test` builds the tests with the `planted-bugs` feature, so the keel binary under test
//! has the planted bugs compiled in; they are off unless `--planted-bug` names them (it sets
//! `KEEL_PLANTED_BUGS` for the members), and the real-build tests name none. Seeds are fixed, so
//! every run draws the same operations and the same fault schedule.
//!
//! Each real-build run asserts floors (operations, events, locks) so that a vacuous history cannot
//! pass, and passes `--min-ok` so that reaching them does not depend on the machine's speed: on a
//! host slowed by its neighbours the workload runs past its time limit until that many operations
//! have succeeded, instead of stopping with a handful.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{KeelProcess, free_port};

/// A run's output directory. When the test fails while holding it, the end of each member's log
/// (`n1.log`, ...) is printed before the directory goes: the results say what the checker saw,
/// the logs what the members did meanwhile.
struct RunDir(tempfile::TempDir);

/// Lines printed from the end of each member's log.
const LOG_TAIL_LINES: usize = 15;

impl RunDir {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.path())
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
            .collect();
        logs.sort();
        for log in logs {
            support::print_log_tail(&log, LOG_TAIL_LINES);
        }
    }
}

/// Runs `keel jepsen test` with `args` into a fresh directory; returns the exit code and the
/// parsed `results.json`, and checks the other outputs exist.
fn jepsen(binary: &Path, args: &[&str]) -> (i32, serde_json::Value, RunDir) {
    let out = RunDir(tempfile::tempdir().expect("temp dir"));
    let output = Command::new(binary)
        .args(["jepsen", "test", "--nodes", "5", "--rate", "150", "--concurrency", "10", "--out"])
        .arg(out.path())
        .args(args)
        .output()
        .expect("run keel jepsen test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().unwrap_or(-1);
    let results = std::fs::read_to_string(out.path().join("results.json"))
        .unwrap_or_else(|err| panic!("no results.json ({err}); exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    let results: serde_json::Value = serde_json::from_str(&results).expect("results.json is JSON");
    for file in ["history.jsonl", "report.html"] {
        assert!(out.path().join(file).is_file(), "{file} missing; stdout:\n{stdout}");
    }
    assert!(stderr.contains("reproduce with:"), "the command to reproduce is printed:\n{stderr}");
    (code, results, out)
}

/// Runs the real build's `workload` for `time_limit` seconds under kills and partitions (a fault
/// step every 3 s on average), extended until `min_ok` operations succeeded.
fn under_kill_and_partition(workload: &str, time_limit: &str, min_ok: &str) -> (i32, serde_json::Value, RunDir) {
    let keel = Path::new(env!("CARGO_BIN_EXE_keel"));
    let args = ["--workload", workload, "--nemesis", "kill,partition", "--time-limit", time_limit, "--interval", "3"];
    jepsen(keel, &[&args[..], &["--min-ok", min_ok]].concat())
}

fn anomaly_kinds(results: &serde_json::Value) -> Vec<String> {
    results["results"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["anomalies"].as_array().into_iter().flatten())
        .filter_map(|a| a["kind"].as_str().map(str::to_string))
        .collect()
}

/// The keel binary under test, which must have the planted bugs compiled in.
fn planted_binary() -> PathBuf {
    if !cfg!(feature = "planted-bugs") {
        panic!(
            "the chaos suite's planted-bug tests need the planted-bugs feature: run them as scripts/test does \
             (cargo nextest run --features keel/planted-bugs)"
        );
    }
    PathBuf::from(env!("CARGO_BIN_EXE_keel"))
}

/// No firewall rule of a finished run is left behind.
fn assert_no_firewall_chains_left() {
    let rules = Command::new("iptables").args(["-w", "5", "-S"]).output().expect("iptables -S");
    let rules = String::from_utf8_lossy(&rules.stdout);
    let mine: Vec<&str> = rules.lines().filter(|l| l.contains("KEEL-JEPSEN-")).collect();
    assert!(mine.is_empty(), "firewall rules left behind: {mine:?}");
}

#[test]
fn the_real_build_stays_linearizable_under_kill_and_partition() {
    let (code, results, _out) = under_kill_and_partition("register", "30", "500");
    assert_eq!(results["valid"], "valid", "anomalies: {:?}\n{results:#}", anomaly_kinds(&results));
    assert_eq!(code, 0);
    assert!(results["faults"].as_u64().unwrap() >= 3, "faults were injected: {results:#}");
    assert!(results["ops"].as_u64().unwrap() >= 500, "the workload ran: {results:#}");
    assert_no_firewall_chains_left();
}

#[test]
fn the_real_build_stays_strictly_serializable_under_kill_and_partition() {
    let (code, results, _out) = under_kill_and_partition("append", "30", "250");
    assert_eq!(results["valid"], "valid", "anomalies: {:?}\n{results:#}", anomaly_kinds(&results));
    assert_eq!(code, 0);
    let stats = &results["results"][0]["stats"];
    // Printed with every figure below: the run's seed is random, so a shortfall is replayed from it.
    let again = &results["command"];
    assert!(stats["ok"].as_u64().unwrap() >= 200, "transactions committed: {stats}\nreproduce with: {again}");
    assert_no_firewall_chains_left();
}

#[test]
fn watchers_under_kill_and_partition_keep_etcds_watch_guarantees() {
    let (code, results, _out) = under_kill_and_partition("watch", "25", "300");
    assert_eq!(results["valid"], "valid", "anomalies: {:?}\n{results:#}", anomaly_kinds(&results));
    assert_eq!(code, 0);
    let stats = &results["results"][0]["stats"];
    // Printed with every figure below: the run's seed is random, so a shortfall is replayed from it.
    let again = &results["command"];
    assert!(
        stats["watches_checked"].as_u64().unwrap() >= 5,
        "watch streams were checked: {stats}\nreproduce with: {again}"
    );
    // A floor against a run where nothing was watched, not a speed target: a normal run (700-900
    // operations succeed, 400-600 events) is not extended by `--min-ok`, and one on a slow machine,
    // or under a leader-heavy schedule where every kill costs an election, runs on until 300 have.
    assert!(
        stats["events_received"].as_u64().unwrap() >= 50,
        "events were delivered: {stats}\nreproduce with: {again}"
    );
    assert_no_firewall_chains_left();
}

#[test]
fn lock_holders_under_kill_and_partition_keep_fences_ordered_and_leases_honest() {
    let (code, results, _out) = under_kill_and_partition("lease", "20", "300");
    assert_eq!(results["valid"], "valid", "anomalies: {:?}\n{results:#}", anomaly_kinds(&results));
    assert_eq!(code, 0);
    let stats = &results["results"][0]["stats"];
    // Printed with every figure below: the run's seed is random, so a shortfall is replayed from it.
    let again = &results["command"];
    assert!(stats["acquisitions"].as_u64().unwrap() >= 10, "locks were taken: {stats}\nreproduce with: {again}");
    assert!(stats["fenced_applied"].as_u64().unwrap() >= 10, "holders wrote: {stats}\nreproduce with: {again}");
    assert!(
        stats["abandoned"].as_u64().unwrap() >= 1,
        "some leases were left to expire: {stats}\nreproduce with: {again}"
    );
    assert!(stats["leases_listed"].is_u64(), "the final listing ran: {stats}\nreproduce with: {again}");
    assert_no_firewall_chains_left();
}

#[test]
fn membership_changes_and_clock_skew_keep_the_register_linearizable() {
    let keel = Path::new(env!("CARGO_BIN_EXE_keel"));
    let (code, results, out) = jepsen(
        keel,
        &[
            "--workload",
            "register",
            "--nemesis",
            "member,clock",
            "--time-limit",
            "30",
            "--interval",
            "3",
            "--seed",
            "5",
        ],
    );
    assert_eq!(results["valid"], "valid", "anomalies: {:?}\n{results:#}", anomaly_kinds(&results));
    assert_eq!(code, 0);
    let history = std::fs::read_to_string(out.path().join("history.jsonl")).unwrap();
    let started = |kind: &str| {
        history.lines().any(|line| line.contains(r#""f":"start""#) && line.contains(&format!(r#""kind":"{kind}""#)))
    };
    assert!(started("member") && started("clock"), "both faults were injected:\n{results:#}");
}

#[test]
fn the_suite_runs_against_endpoints_it_did_not_start_and_refuses_what_it_cannot_check() {
    let data = tempfile::tempdir().unwrap();
    let mut store = KeelProcess::spawn(&data.path().join("store"), free_port(), free_port(), &[]);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(store.ready());
    let keel = Path::new(env!("CARGO_BIN_EXE_keel"));
    let url = store.url();
    let (code, results, _out) = jepsen(
        keel,
        &["--workload", "register", "--nemesis", "none", "--time-limit", "5", "--min-ok", "100", "--endpoints", &url],
    );
    assert_eq!(results["valid"], "valid", "anomalies: {:?}\n{results:#}", anomaly_kinds(&results));
    assert_eq!(code, 0);
    assert!(results["ops"].as_u64().unwrap() >= 100, "the workload ran: {results:#}");

    // A second run would mistake the first one's keys for its own, and faults need processes
    // this run did not start: both are refused before anything runs.
    for (args, expected) in
        [(vec!["--nemesis", "none"], "already hold"), (vec!["--nemesis", "kill"], "use --nemesis none")]
    {
        let out = tempfile::tempdir().unwrap();
        let output = Command::new(keel)
            .args(["jepsen", "test", "--time-limit", "5", "--endpoints", &url, "--out"])
            .arg(out.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.path().join("history.jsonl").exists(), "{args:?}: nothing ran");
    }
}

#[test]
fn keep_alives_that_renew_too_little_are_caught_as_leases_expiring_early() {
    let (code, results, _out) = jepsen(
        &planted_binary(),
        &[
            "--workload",
            "lease",
            "--nemesis",
            "none",
            "--time-limit",
            "10",
            "--seed",
            "11",
            "--planted-bug",
            "short-keep-alive",
        ],
    );
    let kinds = anomaly_kinds(&results);
    assert_eq!(results["valid"], "invalid", "the short keep-alives went unnoticed: {results:#}");
    assert!(kinds.iter().any(|k| k == "lease-expired-early"), "{kinds:?}");
    assert_eq!(code, 1);
}

#[test]
fn reads_served_without_a_leadership_check_are_caught_as_nonlinearizable() {
    let (code, results, _out) = jepsen(
        &planted_binary(),
        &[
            "--workload",
            "register",
            "--nemesis",
            "partition",
            "--time-limit",
            "25",
            "--interval",
            "3",
            "--seed",
            "7",
            "--planted-bug",
            "stale-read",
        ],
    );
    let kinds = anomaly_kinds(&results);
    assert_eq!(results["valid"], "invalid", "the stale-read bug went unnoticed: {results:#}");
    assert!(kinds.iter().any(|k| k == "nonlinearizable"), "{kinds:?}");
    assert_eq!(code, 1);
    assert_no_firewall_chains_left();
}

#[test]
fn a_watch_hub_that_skips_events_is_caught_as_missed_events() {
    let (code, results, _out) = jepsen(
        &planted_binary(),
        &[
            "--workload",
            "watch",
            "--nemesis",
            "none",
            "--time-limit",
            "20",
            "--interval",
            "3",
            "--seed",
            "9",
            "--planted-bug",
            "skip-watch-event",
        ],
    );
    let kinds = anomaly_kinds(&results);
    assert_eq!(results["valid"], "invalid", "the skipped events went unnoticed: {results:#}");
    assert!(kinds.iter().any(|k| k == "missed-event" || k == "non-atomic"), "{kinds:?}");
    assert_eq!(code, 1);
}

#[test]
fn acknowledging_log_writes_before_they_are_durable_is_caught_under_kills() {
    let (code, results, _out) = jepsen(
        &planted_binary(),
        &[
            "--workload",
            "register",
            "--nemesis",
            "kill",
            "--time-limit",
            "25",
            "--interval",
            "3",
            "--seed",
            "3",
            "--recovery-timeout",
            "20s",
            "--planted-bug",
            "ack-before-fsync",
        ],
    );
    assert_eq!(results["valid"], "invalid", "the ack-before-fsync bug went unnoticed: {results:#}");
    assert_eq!(code, 1, "{:?}", anomaly_kinds(&results));
}
