//! `--quota-backend-bytes` and the NOSPACE alarm on a real 3-member cluster, driven the way an
//! etcd operator does it: fill the store past a small quota, see every member refuse writes that
//! grow the store with etcd's error while reads and deletes go on, then recover with the documented
//! steps (delete, compact, defrag, `alarm disarm`) without losing a key that was not deleted.

mod support;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use support::cluster::Cluster;
use support::ctl::Ctl;

const QUOTA: u64 = 4 << 20;
const VALUE_BYTES: usize = 64 << 10;
/// More fill than the quota can hold, so the loop must meet NOSPACE well before it ends.
const MAX_FILL_PUTS: usize = 200;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Incompressible bytes (the backend compresses), from a fixed seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn endpoints(cluster: &Cluster) -> Vec<String> {
    cluster.client_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
}

/// Polls `keel ctl alarm list` on one member until `want` holds for its output (bounded).
async fn wait_for_alarms(ctl: &Ctl, want: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        let listed = ctl.ok(&["alarm", "list"]);
        if want(&listed) {
            return listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the alarm list did not reach the expected state: {}", ctl.ok(&["alarm", "list"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_refuses_growth_cluster_wide_until_space_is_freed_and_the_alarm_disarmed() {
    let quota = QUOTA.to_string();
    let mut cluster = Cluster::start(3, &["--quota-backend-bytes", &quota]).await;
    let all = endpoints(&cluster);
    let mut writer = cluster.client(0).await;
    for i in 0..10 {
        writer.put(format!("keep/{i}"), format!("value {i}"), None).await.unwrap();
    }

    let mut refused_at = None;
    for i in 0..MAX_FILL_PUTS {
        match writer.put(format!("fill/{:03}", i % 40), noise(i as u64, VALUE_BYTES), None).await {
            Ok(_) => {}
            Err(err) => {
                assert!(err.to_string().contains(NOSPACE), "fill put {i} failed with {err}");
                refused_at = Some(i);
                break;
            }
        }
    }
    let refused_at = refused_at.expect("the quota was never reached");
    assert!(refused_at > 10, "NOSPACE came too early, after {refused_at} puts of 64 KiB with a 4 MiB quota");

    // Raised cluster-wide: every member lists it, and every member refuses what grows the store.
    for endpoint in &all {
        let listed =
            wait_for_alarms(&Ctl::new(std::slice::from_ref(endpoint)), |out| out.contains("alarm:NOSPACE")).await;
        assert!(listed.starts_with("memberID:"), "{listed}");
    }
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let err = client.put("small", "x", None).await.expect_err("put while NOSPACE is raised");
        assert!(err.to_string().contains(NOSPACE), "member {i}: {err}");
        let err = client.lease_grant(30, None).await.expect_err("lease grant while NOSPACE is raised");
        assert!(err.to_string().contains(NOSPACE), "member {i}: {err}");
        let txn = Txn::new()
            .when([Compare::version("keep/0", CompareOp::Greater, 0)])
            .and_then([TxnOp::put("keep/0", "changed", None)]);
        let err = client.txn(txn).await.expect_err("txn with a put while NOSPACE is raised");
        assert!(err.to_string().contains(NOSPACE), "member {i}: {err}");
        // Reads still work.
        let kept = client.get("keep/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(kept.kvs().len(), 10);
    }
    // Deletes still work, alone and in a transaction.
    let mut other: Client = cluster.client(2).await;
    let txn = Txn::new().and_then([TxnOp::delete("fill/000", None)]);
    assert!(other.txn(txn).await.unwrap().succeeded());
    let deleted = other.delete("fill/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    assert!(deleted.deleted() > 0);

    // Deleting alone does not lower the alarm: it stays until an operator disarms it.
    let err = writer.put("small", "x", None).await.expect_err("put before disarm");
    assert!(err.to_string().contains(NOSPACE), "{err}");

    // The documented recovery: compact away the history, defragment every member, disarm.
    let ctl = Ctl::new(&all);
    let revision = other.get("keep/0", None).await.unwrap().header().unwrap().revision();
    ctl.ok(&["compact", &revision.to_string(), "--physical"]);
    ctl.ok(&["defrag", "--cluster"]);
    let disarmed = ctl.ok(&["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "disarm printed {disarmed:?}");
    for endpoint in &all {
        wait_for_alarms(&Ctl::new(std::slice::from_ref(endpoint)), |out| out.trim().is_empty()).await;
    }
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        client.put(format!("after/{i}"), "x", None).await.unwrap_or_else(|err| panic!("member {i}: {err}"));
        client.lease_grant(30, None).await.unwrap();
    }
    // Nothing that was not deleted was lost.
    let kept = writer.get("keep/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let kept: Vec<(String, String)> =
        kept.kvs().iter().map(|kv| (kv.key_str().unwrap().into(), kv.value_str().unwrap().into())).collect();
    let expected: Vec<(String, String)> = (0..10).map(|i| (format!("keep/{i}"), format!("value {i}"))).collect();
    assert_eq!(kept, expected);
    cluster.converged().await;
}
