//! A member down while 50 000 writes land catches up by snapshot when it returns (the leader has
//! purged the log it missed), and then serves identical data: HashKV equal on every member.

mod support;

use etcd_client::GetOptions;
use support::cluster::Cluster;

const WRITES: usize = 50_000;
const CONCURRENCY: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_for_50k_writes_catches_up_by_snapshot() {
    // Snapshots every 5000 entries: the leader purges far past the point where the member stopped.
    let mut cluster = Cluster::start(3, &["--snapshot-count", "5000"]).await;
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    cluster.kill(down);
    let up: Vec<usize> = (0..3).filter(|&i| i != down).collect();

    let mut writers = Vec::new();
    for w in 0..CONCURRENCY {
        let mut client = cluster.client_for(&up).await;
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while i < WRITES {
                let key = format!("bulk/{i:06}");
                // A failed write is retried with the same key and value, so the end state is known.
                let mut attempts = 0;
                while client.put(key.as_str(), i.to_string(), None).await.is_err() {
                    attempts += 1;
                    assert!(attempts < 50, "write {key} kept failing");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                i += CONCURRENCY;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    cluster.spawn(down, "new");
    cluster.process(down).ready().await;
    let revision = cluster.converged().await;
    assert!(revision > WRITES as i64, "revision {revision}");
    assert!(cluster.log(down).contains("installed snapshot"), "the returning member caught up by snapshot");
    let mut client = cluster.client(down).await;
    let count = client
        .get("bulk/", Some(GetOptions::new().with_prefix().with_count_only().with_serializable()))
        .await
        .unwrap()
        .count();
    assert_eq!(count, WRITES as i64);
    eprintln!("member caught up by snapshot to revision {revision}; HashKV equal on all 3 members");
}
