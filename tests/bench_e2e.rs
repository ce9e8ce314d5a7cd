//! `keel bench` against a real member: every benchmark issues exactly `--total` requests without
//! an error (the watch benchmarks deliver every put to every watcher) and prints a JSON summary
//! with its percentiles (also with the load generator on one thread); settings that cannot work
//! are refused before anything is sent; the lease benchmark leaves no lease behind.
//!
//! Nothing here judges speed: benchmarks are measured by running them, not by tests.

mod support;

use std::process::Command;

use support::{KeelProcess, free_port};

fn bench(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench"])
        .args(args)
        .args(["--endpoints", url])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run keel bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_benchmark_issues_its_total_and_reports_percentiles() {
    let data = tempfile::tempdir().unwrap();
    let mut member = KeelProcess::spawn(&data.path().join("m"), free_port(), free_port(), &[]);
    let mut client = member.ready().await;
    let url = member.url();
    let runs: [(&str, &[&str]); 9] = [
        ("put", &["put", "--clients", "4", "--conns", "2", "--total", "300", "--key-space-size", "50"]),
        ("put", &["put", "--total", "40", "--rate", "200", "--sequential-keys"]),
        ("range", &["range", "--clients", "4", "--total", "300", "--consistency", "l"]),
        ("range", &["range", "--clients", "4", "--total", "300", "--consistency", "s", "--threads", "1"]),
        ("txn-put", &["txn-put", "--clients", "2", "--total", "100", "--txn-ops", "4", "--key-space-size", "16"]),
        ("txn-mixed", &["txn-mixed", "--clients", "2", "--total", "200", "--rw-ratio", "3"]),
        ("lease-keepalive", &["lease-keepalive", "--clients", "4", "--total", "400"]),
        ("watch-latency", &["watch-latency", "--put-total", "50", "--streams", "2", "--watchers-per-stream", "3"]),
        ("watch-fanout", &["watch-fanout", "--total", "10", "--streams", "5", "--watchers-per-stream", "40"]),
    ];
    for (run, (name, args)) in runs.into_iter().enumerate() {
        let mut args = args.to_vec();
        args.extend(["-w", "json"]);
        // One run names the endpoint as a bare host:port, as etcd's benchmark accepts.
        let endpoint = if run == 1 { member.endpoint() } else { url.clone() };
        let (ok, stdout, stderr) = bench(&endpoint, &args);
        assert!(ok, "{args:?}: {stderr}");
        let summary: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON summary");
        let flag = args.iter().position(|a| *a == "--total" || *a == "--put-total").unwrap();
        let total: u64 = args[flag + 1].parse().unwrap();
        // A watch benchmark's requests are deliveries: every put to every watcher.
        let watchers: u64 = match args.iter().position(|a| *a == "--streams") {
            Some(at) => args[at + 1].parse::<u64>().unwrap() * args[at + 3].parse::<u64>().unwrap(),
            None => 1,
        };
        assert_eq!(summary["benchmark"], name);
        assert_eq!(summary["requests"], total * watchers, "{args:?}: {summary}");
        assert_eq!(summary["errors"], 0, "{args:?}: {summary}");
        let latency = &summary["latency_ms"];
        for quantile in ["p50", "p90", "p99", "p99.9"] {
            assert!(latency[quantile].as_f64().is_some_and(|ms| ms > 0.0), "{quantile} in {summary}");
        }
        assert!(latency["p50"].as_f64() <= latency["p99.9"].as_f64(), "{summary}");
    }
    // The written keys are the benchmark's: 50 distinct keys from the first run at most, 16 from
    // txn-put and the watch benchmarks' one key (which share the key names), and the
    // rate-limited run's first 40.
    let written = client.get("", Some(etcd_client::GetOptions::new().with_all_keys().with_count_only())).await.unwrap();
    assert!(written.count() > 0 && written.count() <= 50 + 40, "{} keys", written.count());
    assert!(client.leases().await.unwrap().leases().is_empty(), "lease-keepalive revokes its leases");

    // Settings that cannot work are refused, naming the flag, before any request.
    let before = client.status().await.unwrap().header().unwrap().revision();
    for (args, expected) in [
        (&["put", "--clients", "0"][..], "--clients must be at least 1"),
        (&["txn-put", "--txn-ops", "4"][..], "--txn-ops 4 needs --key-space-size of at least 4"),
        (&["txn-mixed", "--rw-ratio=-1"][..], "--rw-ratio must be a non-negative number"),
        (&["put", "--threads", "0"][..], "invalid value '0' for '--threads <THREADS>'"),
    ] {
        let (ok, _, stderr) = bench(&url, args);
        assert!(!ok && stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(client.status().await.unwrap().header().unwrap().revision(), before, "nothing was written");
    let (ok, _, stderr) = bench("http://127.0.0.1:1", &["range", "--total", "5"]);
    assert!(!ok && stderr.contains("connecting to http://127.0.0.1:1"), "{stderr}");
}
