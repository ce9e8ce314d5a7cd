//! Failover: SIGKILL the leader of a 3- or 5-member cluster during a stream of writes. A new leader
//! is elected, the stream continues, and afterwards every acknowledged write is present on every
//! member, the killed one included once it restarts. A leader killed and restarted at once leads
//! again only by winning a new term. And a leader cut off from its quorum renews no lease.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::READY_BOUND;
use support::cluster::Cluster;

const WRITERS: usize = 4;
const WRITES_BEFORE_KILL: usize = 150;
const WRITES_AFTER_KILL: usize = 150;

async fn wait_for(acked: &Mutex<BTreeMap<String, String>>, count: usize) {
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    while acked.lock().unwrap().len() < count {
        assert!(tokio::time::Instant::now() < deadline, "the write stream stalled below {count} acknowledged writes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_kill_loses_no_acknowledged_write(n: usize) {
    let mut cluster = Cluster::start(n, &[]).await;
    let old_leader = cluster.leader().await;
    let everyone: Vec<usize> = (0..n).collect();

    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // Each writer talks to a different member first, so some writes are forwarded.
        let mut order = everyone.clone();
        order.rotate_left(w % n);
        let mut client = cluster.client_for(&order).await;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("w{w}/{i:06}"), format!("{w}-{i}"));
                i += 1;
                match client.put(key.as_str(), value.as_str(), None).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    // Unacknowledged: it may or may not have landed; the next write uses a new key.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }

    wait_for(&acked, WRITES_BEFORE_KILL).await;
    cluster.kill(old_leader);
    let at_kill = acked.lock().unwrap().len();
    wait_for(&acked, at_kill + WRITES_AFTER_KILL).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader, "a new leader took over");

    cluster.spawn(old_leader, "new");
    cluster.process(old_leader).ready().await;
    cluster.converged().await;
    let acked = acked.lock().unwrap().clone();
    for i in 0..n {
        let data = cluster.local_data(i).await;
        for (key, value) in &acked {
            assert_eq!(data.get(key), Some(value), "member {i} lacks acknowledged write {key}");
        }
    }
    eprintln!("{n} members: {} acknowledged writes on every member after killing the leader", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_survives_a_leader_kill_without_losing_acknowledged_writes() {
    leader_kill_loses_no_acknowledged_write(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_member_cluster_survives_a_leader_kill_without_losing_acknowledged_writes() {
    leader_kill_loses_no_acknowledged_write(5).await;
}

/// A leader that no quorum answers must not renew leases: a leader elected meanwhile among the
/// others restarted every lease's TTL at its election and would expire the lease before the TTL
/// this one promised. With both followers paused the leader still runs and hears its client,
/// but a keep-alive through it gets no positive answer; once they resume, keep-alives work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_renews_no_lease() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let mut client = cluster.client_for(&[leader]).await;
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &followers {
        cluster.process(i).signal("STOP");
    }
    let renewed = async {
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
        keeper.keep_alive().await?;
        answers.message().await
    };
    // Nothing can confirm the leadership while the followers are stopped, so a positive answer
    // can only come from renewing without that confirmation. 10 s is longer than the member's
    // request timeout (5 s and two election timeouts), after which a correct member has answered
    // with an error.
    if let Ok(Ok(Some(answer))) = tokio::time::timeout(Duration::from_secs(10), renewed).await {
        assert!(answer.ttl() <= 0, "renewed for {}s by a leader without a quorum", answer.ttl());
    }
    for &i in &followers {
        cluster.process(i).signal("CONT");
    }
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    loop {
        let mut client = cluster.client_for(&[0, 1, 2]).await;
        if let Ok((mut keeper, mut answers)) = client.lease_keep_alive(lease).await
            && keeper.keep_alive().await.is_ok()
            && let Ok(Ok(Some(answer))) = tokio::time::timeout(Duration::from_secs(5), answers.message()).await
            && answer.ttl() > 0
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "keep-alives did not work again after the followers resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A killed leader that restarts before the followers notice does not resume leading from its
/// saved vote: the end of its log and its commit index may have died in its unsynced WAL buffer, so
/// leading on in the same term could overwrite entries a quorum holds and answer reads from before
/// writes it acknowledged. Leadership after the restart, whoever holds it, is won in a newer term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_leads_again_only_after_winning_a_newer_term() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let mut client = cluster.client(leader).await;
    let before = client.put("before", "1", None).await.expect("a put on the leader");
    let term = before.header().expect("a response header").raft_term();

    cluster.kill(leader);
    cluster.spawn(leader, "new");
    cluster.process(leader).ready().await;
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    let after = loop {
        let now_leading = cluster.leader().await;
        let mut client = cluster.client(now_leading).await;
        match client.put("after", "1", None).await {
            Ok(put) => break put,
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "no write succeeded after the restart: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let new_term = after.header().expect("a response header").raft_term();
    assert!(
        new_term > term,
        "member {leader} led term {term} until it was killed; after its restart a leader answers in term {new_term}"
    );
}
