//! `--listen-metrics-urls` serves Prometheus text: request counts and latencies per method, Raft
//! term and indexes, apply lag, db size, watchers and leases.

mod support;

use std::time::Duration;

use support::{KeelProcess, READY_BOUND, free_port, scrape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let mut keel = KeelProcess::spawn(
        &dir.path().join("data"),
        free_port(),
        free_port(),
        &["--listen-metrics-urls", &metrics_url],
    );
    let mut client = keel.ready().await;
    client.put("m", "1", None).await.unwrap();
    client.get("m", None).await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap();
    let (_watcher, _stream) = client.watch("m", None).await.unwrap();

    // Gauges refresh once a second; poll (bounded) until they reflect the lease and the watcher.
    let wanted = [
        "keel_grpc_requests_total{method=\"Put\",code=\"OK\"} 1",
        "keel_grpc_request_duration_seconds_bucket{method=\"Range\"",
        "keel_disk_wal_fsync_duration_seconds_bucket",
        "keel_raft_term 1",
        "keel_raft_applied_index",
        "keel_raft_apply_lag_entries",
        "keel_db_size_bytes",
        "keel_watchers 1",
        "keel_leases 1",
        "keel_mvcc_revision 2",
    ];
    let deadline = std::time::Instant::now() + READY_BOUND;
    let body = loop {
        let body = scrape(metrics_port);
        if wanted.iter().all(|w| body.contains(w)) {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "metrics never showed all of {wanted:?}:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    client.lease_revoke(lease.id()).await.unwrap();

    // A wildcard metrics address is refused: metrics are bound explicitly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["store", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
        .args(["--listen-metrics-urls", "http://0.0.0.0:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a wildcard"));
    keel.terminate();
}
