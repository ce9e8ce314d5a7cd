//! A storm of 10 000 leases expiring together does not stall other requests: the leader revokes them
//! through the log in bounded batches, so writes issued during the storm are applied between the
//! revocations rather than after all of them.

mod support;

use std::time::Duration;

use etcd_client::{EventType, PutOptions, Txn, TxnOp, WatchOptions};
use support::{KeelProcess, free_port};

const LEASES: usize = 10_000;
const TTL: i64 = 15;
const GRANTERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_expiring_leases_do_not_stall_other_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &[]);
    let client = keel.ready().await;

    // Grant the leases concurrently (they expire together, TTL after their grants), and attach one
    // key to each, many per transaction.
    let mut granters = Vec::new();
    for g in 0..GRANTERS {
        let mut client = client.clone();
        granters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (g..LEASES).step_by(GRANTERS) {
                ids.push(client.lease_grant(TTL, None).await.unwrap().id());
            }
            for chunk in ids.chunks(100) {
                let puts: Vec<TxnOp> = chunk
                    .iter()
                    .map(|id| TxnOp::put(format!("storm/{id:x}"), "v", Some(PutOptions::new().with_lease(*id))))
                    .collect();
                client.txn(Txn::new().and_then(puts)).await.unwrap();
            }
        }));
    }
    for granter in granters {
        granter.await.unwrap();
    }

    let mut watch_client = client.clone();
    let (_w, mut deletes) = watch_client.watch("storm/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let mut writer_client = client.clone();
    let mut delete_revisions = Vec::new();
    let mut write_revisions = Vec::new();
    let mut slowest = Duration::ZERO;
    while delete_revisions.len() < LEASES {
        // One write per round while the storm drains: each must be answered, and is timed.
        let started = std::time::Instant::now();
        let put = writer_client.put("other", "x", None).await.expect("writes keep working during the storm");
        slowest = slowest.max(started.elapsed());
        write_revisions.push(put.header().unwrap().revision());
        let resp = tokio::time::timeout(Duration::from_secs(60), deletes.message()).await.unwrap().unwrap().unwrap();
        for event in resp.events() {
            assert_eq!(event.event_type(), EventType::Delete);
            delete_revisions.push(event.kv().unwrap().mod_revision());
        }
    }
    let (first, last) = (delete_revisions[0], *delete_revisions.last().unwrap());
    let interleaved = write_revisions.iter().filter(|&&r| r > first && r < last).count();
    assert!(interleaved > 0, "writes landed between revocations ({first}..{last}): {write_revisions:?}");
    assert_eq!(last - first + 1 - interleaved as i64, LEASES as i64, "one revision per revoked lease");
    eprintln!(
        "{LEASES} leases revoked over revisions {first}..{last}; {interleaved} writes interleaved; slowest write {slowest:?}"
    );
    keel.terminate();
}
