//! Leases and watches across failures:
//! - a lease kept alive through a follower survives the leader's death (the new leader extends
//!   every lease by its TTL), while an abandoned lease expires, exactly once;
//! - keep-alives sent to a follower at the same time (forwarded to the leader together) renew
//!   each known lease for its own TTL and answer TTL 0 for unknown ones;
//! - a watcher whose member dies resumes on another member from the next revision and sees every
//!   event exactly once, in order.

mod support;

use std::time::Duration;

use etcd_client::{EventType, PutOptions, WatchOptions};
use support::cluster::Cluster;

const TTL: i64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_lease_survives_a_leader_kill_and_an_abandoned_one_expires_once() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(follower).await;

    let kept = client.lease_grant(TTL, None).await.unwrap().id();
    let abandoned = client.lease_grant(TTL, None).await.unwrap().id();
    client.put("kept", "1", Some(PutOptions::new().with_lease(kept))).await.unwrap();
    let put = client.put("abandoned", "1", Some(PutOptions::new().with_lease(abandoned))).await.unwrap();
    // Watch from just after the put: the follower may not have applied it yet, and a watch from
    // "now" there would report the put itself.
    let after_put = put.header().unwrap().revision() + 1;
    let (_watcher, mut deletes) =
        client.watch("abandoned", Some(WatchOptions::new().with_start_revision(after_put))).await.unwrap();

    // Keep-alives go to a follower, which forwards them to whoever leads.
    let keeper = tokio::spawn({
        let mut client = client.clone();
        async move {
            let (mut keeper, mut replies) = client.lease_keep_alive(kept).await.unwrap();
            for _ in 0..(4 * TTL) {
                keeper.keep_alive().await.unwrap();
                let reply =
                    tokio::time::timeout(Duration::from_secs(30), replies.message()).await.unwrap().unwrap().unwrap();
                assert_eq!(reply.ttl(), TTL, "the kept lease stays alive");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(leader);
    keeper.await.unwrap();

    // By now the abandoned lease (TTL 5 s, last renewed never) has long expired: one delete event.
    let first = tokio::time::timeout(Duration::from_secs(30), deletes.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events().len(), 1);
    assert_eq!(first.events()[0].event_type(), EventType::Delete);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), deletes.message()).await.is_err(),
        "the abandoned lease expired exactly once"
    );
    assert!(client.get("abandoned", None).await.unwrap().kvs().is_empty());
    assert_eq!(client.lease_time_to_live(abandoned, None).await.unwrap().ttl(), -1);
    assert_eq!(client.get("kept", None).await.unwrap().kvs().len(), 1, "the kept lease's key survived");
    let ttl = client.lease_time_to_live(kept, None).await.unwrap().ttl();
    assert!(ttl > 0 && ttl <= TTL, "remaining TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keep_alives_through_a_follower_each_get_their_own_leases_answer() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let client = cluster.client((leader + 1) % 3).await;

    // Distinct TTLs, so an answer handed to the wrong keep-alive shows.
    let mut expected = Vec::new();
    for i in 0..24 {
        let ttl = 20 + i;
        let id = client.clone().lease_grant(ttl, None).await.unwrap().id();
        expected.push((id, ttl));
    }
    // Leases nobody granted: etcd answers a keep-alive for one with TTL 0.
    expected.extend((1..=8).map(|i| (0x7eed_0000_0000 + i, 0)));

    let keepers: Vec<_> = expected
        .iter()
        .map(|&(id, ttl)| {
            let mut client = client.clone();
            tokio::spawn(async move {
                // The etcd client sends the first keep-alive itself and turns a TTL 0 answer
                // into an error.
                let (mut keeper, mut replies) = match client.lease_keep_alive(id).await {
                    Err(err) if ttl == 0 => {
                        assert!(err.to_string().contains("lease not found"), "lease {id:x}: {err}");
                        return;
                    }
                    started => started.unwrap(),
                };
                assert_ne!(ttl, 0, "the keep-alive of unknown lease {id:x} was answered");
                for _ in 0..5 {
                    keeper.keep_alive().await.unwrap();
                    let reply = tokio::time::timeout(Duration::from_secs(30), replies.message())
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    assert_eq!((reply.id(), reply.ttl()), (id, ttl), "the keep-alive of lease {id:x}");
                }
            })
        })
        .collect();
    for keeper in keepers {
        keeper.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_on_another_member_without_gap_or_duplicate() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let watched = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    let mut writer_client = cluster.client_for(&[leader, other]).await;
    let start = writer_client.put("w/start", "0", None).await.unwrap().header().unwrap().revision() + 1;
    const WRITES: usize = 300;
    let writer = tokio::spawn(async move {
        let mut revisions = Vec::new();
        for i in 0..WRITES {
            revisions.push(put_retrying(&mut writer_client, format!("w/{i:04}"), i.to_string()).await);
        }
        revisions
    });

    let mut seen: Vec<i64> = Vec::new();
    let mut client = cluster.client(watched).await;
    let (_w, mut stream) =
        client.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start))).await.unwrap();
    while seen.len() < WRITES / 3 {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("member {watched} sent nothing for 30 s after {} events", seen.len()))
            .unwrap()
            .unwrap();
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    cluster.kill(watched);
    // Drain whatever the dead member's stream still delivers, then resume elsewhere.
    while let Ok(Ok(Some(resp))) = tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    let resume = seen.last().copied().unwrap_or(start - 1) + 1;
    let mut client = cluster.client(other).await;
    let (_w, mut stream) =
        client.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(resume))).await.unwrap();
    let acknowledged = writer.await.unwrap();
    let last = *acknowledged.last().unwrap();
    while seen.last().is_none_or(|&r| r < last) {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .unwrap_or_else(|_| panic!("member {other} sent nothing for 30 s; resumed at {resume}, waiting for {last}"))
            .unwrap()
            .unwrap();
        seen.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }

    // The history itself, replayed from storage on a live member, is what the watcher should have
    // seen; every acknowledged write is in it (a retried write may add one whose answer was lost).
    let history = history_revisions(&mut client, start, last).await;
    let mut unmatched = acknowledged.iter().filter(|r| history.binary_search(r).is_err()).peekable();
    assert!(
        unmatched.peek().is_none(),
        "acknowledged writes missing from the history: {:?}",
        unmatched.collect::<Vec<_>>()
    );
    assert_eq!(seen, history, "every event exactly once, in order, across the member switch");
}

/// Puts `key`, retrying while the cluster has no reachable leader (a loaded machine can stall
/// long enough for an election); returns the acknowledged revision.
async fn put_retrying(client: &mut etcd_client::Client, key: String, value: String) -> i64 {
    const ATTEMPTS: usize = 50;
    for attempt in 1..=ATTEMPTS {
        match client.put(key.clone(), value.clone(), None).await {
            Ok(resp) => return resp.header().unwrap().revision(),
            Err(err) if attempt < ATTEMPTS => {
                eprintln!("put {key} failed (attempt {attempt}), retrying: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("put {key} failed {ATTEMPTS} times: {err}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// The mod revisions of every event under `w/` from `start` through `last`, read by a fresh
/// watcher (which replays them from storage).
async fn history_revisions(client: &mut etcd_client::Client, start: i64, last: i64) -> Vec<i64> {
    let (_w, mut stream) =
        client.watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(start))).await.unwrap();
    let mut history: Vec<i64> = Vec::new();
    while history.last().is_none_or(|&r| r < last) {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("the history replay stalled")
            .unwrap()
            .unwrap();
        history.extend(resp.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert!(history.windows(2).all(|pair| pair[0] < pair[1]), "the replayed history is in order: {history:?}");
    history
}
