//! Crash safety of a real `keel store` process: SIGKILL during a stream of acknowledged writes,
//! repeatedly; after each restart every acknowledged write is present and revisions never go
//! backwards. Also: SIGTERM shuts down cleanly and the data survives.

mod support;

use std::collections::BTreeMap;

use etcd_client::GetOptions;
use support::{KeelProcess, free_port};

/// Kill cycles; each kills the member after this many acknowledged writes (plus whatever is in
/// flight at that moment).
const CYCLES: usize = 5;
const WRITES_BEFORE_KILL: usize = 150;
const WRITERS: usize = 4;
/// Snapshots (and log purges behind them) every 100 entries, so kills also land around those.
const MEMBER_FLAGS: &[&str] = &["--snapshot-count", "100"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (client_port, peer_port) = (free_port(), free_port());
    let mut acknowledged: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut highest_revision = 0;

    for cycle in 0..CYCLES {
        let mut keel = KeelProcess::spawn(&data, client_port, peer_port, MEMBER_FLAGS);
        let mut client = keel.ready().await;

        // Everything acknowledged before any earlier kill is here, and the revision moved on.
        let current = client.get("\0", Some(GetOptions::new().with_from_key().with_count_only())).await.unwrap();
        let revision = current.header().unwrap().revision();
        assert!(
            revision >= highest_revision,
            "cycle {cycle}: revision went back from {highest_revision} to {revision}"
        );
        let all = client.get("\0", Some(GetOptions::new().with_from_key())).await.unwrap();
        let stored: BTreeMap<String, String> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
            .collect();
        for (key, (value, rev)) in &acknowledged {
            assert_eq!(stored.get(key), Some(value), "cycle {cycle}: acknowledged write {key} (revision {rev}) lost");
        }

        // Concurrent writers; the member is killed while they are mid-stream.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String, i64)>(1024);
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let mut client = client.clone();
            let tx = tx.clone();
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("c{cycle}/w{w}/{i:06}");
                    let value = format!("{cycle}-{w}-{i}");
                    match client.put(key.as_str(), value.as_str(), None).await {
                        Ok(resp) => {
                            if tx.send((key, value, resp.header().unwrap().revision())).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(tx);
        let mut this_cycle = 0;
        while let Some((key, value, rev)) = rx.recv().await {
            highest_revision = highest_revision.max(rev);
            acknowledged.insert(key, (value, rev));
            this_cycle += 1;
            if this_cycle == WRITES_BEFORE_KILL {
                keel.kill();
            }
        }
        for writer in writers {
            writer.await.unwrap();
        }
        assert!(this_cycle >= WRITES_BEFORE_KILL, "cycle {cycle}: only {this_cycle} writes acknowledged");
        eprintln!("cycle {cycle}: {this_cycle} writes acknowledged, then SIGKILL; highest revision {highest_revision}");
    }

    // Final check after the last kill.
    let mut keel = KeelProcess::spawn(&data, client_port, peer_port, MEMBER_FLAGS);
    let mut client = keel.ready().await;
    let all = client.get("c", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert!(all.header().unwrap().revision() >= highest_revision);
    let stored: BTreeMap<String, String> =
        all.kvs().iter().map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string())).collect();
    for (key, (value, _)) in &acknowledged {
        assert_eq!(stored.get(key), Some(value), "acknowledged write {key} lost");
    }
    assert!(acknowledged.len() >= CYCLES * WRITES_BEFORE_KILL);
    let snapshots = std::fs::read_dir(data.join("snap")).map(|d| d.count()).unwrap_or(0);
    assert!(snapshots > 0, "the member took snapshots during the run");
    eprintln!("{} acknowledged writes all present after {CYCLES} SIGKILLs", acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (client_port, peer_port) = (free_port(), free_port());
    let mut keel = KeelProcess::spawn(&data, client_port, peer_port, &[]);
    let mut client = keel.ready().await;
    client.put("survives", "yes", None).await.unwrap();
    let status = keel.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", keel.log_text());
    assert!(keel.log_text().contains("stopped"), "log:\n{}", keel.log_text());

    let mut keel = KeelProcess::spawn(&data, client_port, peer_port, &[]);
    let mut client = keel.ready().await;
    let got = client.get("survives", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_a_newer_format_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (client_port, peer_port) = (free_port(), free_port());
    {
        let mut keel = KeelProcess::spawn(&data, client_port, peer_port, &[]);
        keel.ready().await;
        keel.terminate();
    }
    // Rewrite the format marker as a future version would.
    {
        let backend = keel_store::backend::RocksBackend::open(data.join("db"), &Default::default()).unwrap();
        let mut batch = keel_store::backend::WriteBatch::new();
        batch.put(keel_store::backend::Cf::Meta, keel_store::format::FORMAT_KEY, 99u32.to_be_bytes());
        keel_store::backend::Backend::write(&backend, batch, keel_store::backend::Durability::Synced).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["store", "--data-dir"])
        .arg(&data)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client_port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("written by a newer Keel (format 99"), "{stderr}");

    // Garbage where the database should be is refused too, with the path named.
    let junk = dir.path().join("junk");
    std::fs::create_dir_all(junk.join("db")).unwrap();
    std::fs::write(junk.join("db").join("CURRENT"), b"not a manifest\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["store", "--data-dir"])
        .arg(&junk)
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the data directory"), "{stderr}");
}
