//! `keel ctl defrag` end to end against real `keel store` processes: defragmentation is online —
//! a stream of writes across a defragmentation of every member loses and fails nothing, and the
//! members' data stays identical — and it does its job: after most data is deleted and compacted,
//! the database shrinks. Output and exit status are etcdctl's.
//!
//! No assertion depends on timing: the writer runs until the defragmentation has finished (and at
//! least a fixed number of operations), however long either takes.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::cluster::Cluster;
use support::ctl::Ctl;
use support::{KeelProcess, free_port};

/// Values of `len` printable bytes from a xorshift stream: random enough that compression does
/// not hide the space deleted data takes, and valid UTF-8 so `local_data` can compare them.
fn value(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % 64) as usize] as char
        })
        .collect()
}

/// `keel ctl` needs a generous timeout: a debug build on a shared machine defragments slowly.
const TIMEOUT: &[&str] = &["--command-timeout", "120s"];

fn with_timeout<'a>(args: &[&'a str]) -> Vec<&'a str> {
    TIMEOUT.iter().copied().chain(args.iter().copied()).collect()
}

/// The current revision, read linearizably.
async fn current_revision(client: &mut etcd_client::Client) -> i64 {
    let all = etcd_client::GetOptions::new().with_from_key().with_count_only();
    client.get("\0", Some(all)).await.expect("count").header().expect("header").revision()
}

/// The database size each endpoint reports (`endpoint status`), by endpoint URL.
fn db_sizes(ctl: &Ctl) -> BTreeMap<String, u64> {
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-w", "json", "endpoint", "status"])).expect("status json");
    json.as_array()
        .expect("a list")
        .iter()
        .map(|s| (s["Endpoint"].as_str().expect("endpoint").to_string(), s["Status"]["dbSize"].as_u64().unwrap_or(0)))
        .collect()
}

/// Writes at least this many operations (a fifth of them deletes), and keeps writing until the
/// defragmentation ends: the defragmentation starts at operation 200, so some writes always
/// overlap it. More writes after it ended test nothing about it, and on a slow disk each extra
/// synced write is one more chance of an unrelated request timeout (2,500 of them took 190 s
/// and failed one put, after the defragmentation had ended at operation 229).
const MIN_OPS: usize = 400;
/// A bound on the writer, so a defragmentation that never ends fails the test instead of filling
/// the disk.
const MAX_OPS: usize = 100_000;
/// Keys the writer touches: a bounded space, so overwrites and deletes make garbage.
const KEY_SPACE: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_of_every_member_during_writes_fails_no_write_and_members_agree() {
    let mut cluster = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = cluster.client_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let ctl = Ctl::new(&endpoints);

    // Garbage for the defragmentation: history overwritten and deleted, then compacted away.
    let mut client = cluster.client_for(&[0, 1, 2]).await;
    for i in 0..1_000 {
        client.put(format!("k/{:04}", i % KEY_SPACE), value(i as u64, 1024), None).await.expect("preload put");
    }
    for i in (0..KEY_SPACE).step_by(2) {
        client.delete(format!("k/{i:04}"), None).await.expect("preload delete");
    }
    let revision = current_revision(&mut client).await.to_string();
    ctl.ok(&with_timeout(&["compact", "--physical", &revision]));

    // The writer: puts of 1 KiB random values and every fifth operation a delete, sequentially,
    // spread over all three members; it remembers what each key should hold.
    let defrag_done = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (defrag_done, ops) = (defrag_done.clone(), ops.clone());
        let mut client = cluster.client_for(&[0, 1, 2]).await;
        tokio::spawn(async move {
            let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut failures = Vec::new();
            for n in 0..MAX_OPS {
                if n >= MIN_OPS && defrag_done.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("k/{:04}", (n * 7919) % KEY_SPACE);
                if n % 5 == 4 {
                    match client.delete(key.as_str(), None).await {
                        Ok(_) => {
                            model.insert(key, None);
                        }
                        Err(e) => failures.push(format!("delete {key}: {e}")),
                    }
                } else {
                    let v = value(1_000_000 + n as u64, 1024);
                    match client.put(key.as_str(), v.as_str(), None).await {
                        Ok(_) => {
                            model.insert(key, Some(v));
                        }
                        Err(e) => failures.push(format!("put {key}: {e}")),
                    }
                }
                ops.store(n + 1, Ordering::SeqCst);
            }
            (model, failures)
        })
    };

    // Defragment only once the stream is under way; it goes on until the defragmentation has
    // ended, so the two overlap however fast either is (how much is printed, never asserted).
    while ops.load(Ordering::SeqCst) < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let defrag_ctl = Ctl::new(std::slice::from_ref(&endpoints[0]));
    let out = tokio::task::spawn_blocking(move || defrag_ctl.run(&with_timeout(&["defrag", "--cluster"])))
        .await
        .expect("defrag ran");
    let ops_at_defrag_end = ops.load(Ordering::SeqCst);
    defrag_done.store(true, Ordering::SeqCst);
    eprintln!("the writer had done {ops_at_defrag_end} operations when the defragmentation ended");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "defrag --cluster failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> =
        (0..3).map(|i| format!("Finished defragmenting etcd member[{}]", cluster.url(i))).collect();
    expected.sort_unstable();
    assert_eq!(lines, expected, "one line per member, as etcdctl prints");

    let (model, failures) = writer.await.expect("writer");
    assert!(failures.is_empty(), "writes failed across the defragmentation: {failures:?}");

    // Every member holds exactly what the writer was told it wrote.
    cluster.converged().await;
    ctl.ok(&with_timeout(&["check", "hashkv", "--cluster"]));
    let expected: BTreeMap<String, String> = model.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
    let untouched =
        (0..KEY_SPACE).map(|i| format!("k/{i:04}")).filter(|k| !expected.contains_key(k)).collect::<Vec<_>>();
    for i in 0..3 {
        let mut data = cluster.local_data(i).await;
        // Keys the stream never reached keep what the preload left them (odd keys only).
        for key in &untouched {
            data.remove(key);
        }
        assert_eq!(data, expected, "member {i}'s data differs from what was written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defrag_after_deleting_most_data_shrinks_the_db_and_reports_failures_like_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &[]);
    let mut client = keel.ready().await;
    let ctl = Ctl::new(&[keel.endpoint()]);

    const KEYS: usize = 3_000;
    for i in 0..KEYS {
        client.put(format!("d/{i:05}"), value(i as u64, 1024), None).await.expect("put");
    }
    // Delete nine keys in ten, then compact so their history is removed from the store. The
    // compaction itself may already start giving the space back (in the background), so the
    // size to beat is the one before it.
    for i in (0..KEYS).filter(|i| i % 10 != 0) {
        client.delete(format!("d/{i:05}"), None).await.expect("delete");
    }
    let before = db_sizes(&ctl)[&keel.url()];
    let revision = current_revision(&mut client).await.to_string();
    ctl.ok(&with_timeout(&["compact", "--physical", &revision]));

    assert_eq!(ctl.ok(&with_timeout(&["defrag"])), format!("Finished defragmenting etcd member[{}]\n", keel.url()));
    let after = db_sizes(&ctl)[&keel.url()];
    eprintln!("db size {before} bytes before the defragmentation, {after} after");
    assert!(after < before / 2, "defragmenting should reclaim most of {before} bytes; the db size is {after}");
    assert!(keel.log_text().contains("defragmented the backend"), "start and end are logged");

    // Nothing that was kept is lost.
    let kept = client.get("d/", Some(etcd_client::GetOptions::new().with_prefix())).await.expect("read back");
    assert_eq!(kept.kvs().len(), KEYS / 10);
    for kv in kept.kvs() {
        let i: u64 = kv.key_str().unwrap()["d/".len()..].parse().unwrap();
        assert_eq!(kv.value_str().unwrap(), value(i, 1024));
    }

    // A member that cannot be reached: the reachable one is still defragmented, the failure is
    // reported by endpoint on standard error, and the command fails.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mixed = Ctl::new(&[keel.endpoint(), nowhere.clone()]);
    let out = mixed.run(&["--dial-timeout", "1s", "--command-timeout", "120s", "defrag"]);
    assert!(!out.status.success(), "a failed member makes the command fail");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("Finished defragmenting etcd member[{}]\n", keel.url()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("Failed to defragment etcd member[http://{nowhere}] (")), "{stderr}");
    keel.terminate();
}
