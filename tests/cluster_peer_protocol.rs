//! The peer API's pipelined replication stream (`StreamAppend`) refuses what is not its own
//! cluster's Raft traffic: a request stamped with another cluster id or protocol version, or one
//! that does not decode, ends the stream with an error naming the reason, and the member's data
//! and the cluster's progress are untouched. Proposals a follower forwards in batches
//! (`ProposeMany`) each get their own answer, and a foreign or malformed batch is refused. The
//! leader's heartbeats, which confirm every linearizable read, travel on one call per follower
//! kept open between them, and a call that a follower's restart ended is opened again; a
//! follower too slow to answer in time (paused past the heartbeat timeout) keeps its call. A dead
//! member is dialled about once per heartbeat interval, not in a busy loop.

mod support;

use keel_proto::keelpeer::PeerRequest;
use keel_proto::keelpeer::peer_client::PeerClient;
use support::cluster::Cluster;
use tokio_stream::StreamExt;

/// Sends `requests` on one `StreamAppend` call to `peer_url` and returns the status that ended
/// the answers (every request here is refused, so no answer comes before it).
async fn refusal(peer_url: &str, requests: Vec<PeerRequest>) -> tonic::Status {
    let mut client = PeerClient::connect(peer_url.to_string()).await.expect("connecting to the peer URL");
    let mut answers =
        client.stream_append(tokio_stream::iter(requests)).await.expect("the stream is accepted").into_inner();
    match answers.next().await {
        Some(Err(status)) => status,
        other => panic!("expected the stream to end with a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_append_from_another_cluster_or_malformed_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(leader).await;
    client.put("before", "1", None).await.unwrap();
    let cluster_id = client.status().await.unwrap().header().expect("a response header").cluster_id();
    let before = cluster.converged().await;

    let peer_url = cluster.peer_url(follower);
    let foreign = refusal(
        &peer_url,
        vec![PeerRequest { version: 1, cluster_id: cluster_id ^ 1, payload: b"not an append request".to_vec() }],
    )
    .await;
    assert_eq!(foreign.code(), tonic::Code::FailedPrecondition, "{foreign:?}");
    assert!(foreign.message().contains("cluster ID mismatch"), "{foreign:?}");

    let future_version = refusal(&peer_url, vec![PeerRequest { version: 99, cluster_id, payload: Vec::new() }]).await;
    assert!(future_version.message().contains("peer protocol 99 is not supported"), "{future_version:?}");

    let malformed = refusal(&peer_url, vec![PeerRequest { version: 1, cluster_id, payload: vec![0xff; 7] }]).await;
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed:?}");
    assert!(malformed.message().contains("malformed append request"), "{malformed:?}");

    // Nothing was appended by the refused streams, and replication to that follower still works.
    assert_eq!(cluster.converged().await, before);
    client.put("after", "2", None).await.unwrap();
    cluster.converged().await;
    let data = cluster.local_data(follower).await;
    assert_eq!(data.get("before").map(String::as_str), Some("1"));
    assert_eq!(data.get("after").map(String::as_str), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let client = cluster.client(follower).await;

    // Enough concurrent writes that the follower forwards them several to a call; every other
    // one names a lease that does not exist and must fail, alone.
    const WRITES: usize = 200;
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..WRITES {
        let mut kv = client.kv_client();
        writes.spawn(async move {
            let options = (i % 2 == 1).then(|| etcd_client::PutOptions::new().with_lease(0x7fff_0000 + i as i64));
            (i, kv.put(format!("w/{i:03}"), format!("v{i}"), options).await)
        });
    }
    let mut revisions = std::collections::BTreeSet::new();
    while let Some(joined) = writes.join_next().await {
        let (i, answer) = joined.expect("the write task");
        match answer {
            Ok(put) if i % 2 == 0 => {
                let revision = put.header().expect("a response header").revision();
                assert!(revisions.insert(revision), "write {i} got revision {revision}, which another write had");
            }
            Ok(_) => panic!("write {i} named a missing lease and still succeeded"),
            Err(err) if i % 2 == 1 => assert!(err.to_string().contains("lease not found"), "write {i}: {err}"),
            Err(err) => panic!("write {i} failed: {err}"),
        }
    }
    assert_eq!(revisions.len(), WRITES / 2);

    cluster.converged().await;
    for member in 0..3 {
        let data = cluster.local_data(member).await;
        for i in 0..WRITES {
            let expected = (i % 2 == 0).then(|| format!("v{i}"));
            assert_eq!(data.get(&format!("w/{i:03}")), expected.as_ref(), "member {member}, write {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_propose_many_from_another_cluster_or_malformed_is_refused() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let mut client = cluster.client(leader).await;
    client.put("before", "1", None).await.unwrap();
    let cluster_id = client.status().await.unwrap().header().expect("a response header").cluster_id();
    let before = cluster.converged().await;

    let mut peer = PeerClient::connect(cluster.peer_url(leader)).await.expect("connecting to the peer URL");
    let foreign = peer
        .propose_many(PeerRequest { version: 1, cluster_id: cluster_id ^ 1, payload: vec![0] })
        .await
        .expect_err("a batch from another cluster");
    assert_eq!(foreign.code(), tonic::Code::FailedPrecondition, "{foreign:?}");
    assert!(foreign.message().contains("cluster ID mismatch"), "{foreign:?}");

    let malformed = peer
        .propose_many(PeerRequest { version: 1, cluster_id, payload: vec![0xff; 7] })
        .await
        .expect_err("an undecodable batch");
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed:?}");
    assert!(malformed.message().contains("malformed peer request"), "{malformed:?}");

    assert_eq!(cluster.converged().await, before, "nothing was proposed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_on_the_leader_reuse_one_heartbeat_call_per_follower() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut client = cluster.client(leader).await;
    client.put("k", "v", None).await.unwrap();
    const CALLS: &str = "keel_peer_append_calls_total";
    let before: Vec<f64> = followers.iter().map(|&f| cluster.metric(f, CALLS)).collect();

    // Every linearizable read on the leader needs a quorum round: heartbeats to both followers.
    const READS: usize = 200;
    for _ in 0..READS {
        let got = client.get("k", None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v");
    }
    for (&f, before) in followers.iter().zip(before) {
        let opened = cluster.metric(f, CALLS) - before;
        assert!(
            opened < (READS / 10) as f64,
            "member {f} accepted {opened} StreamAppend calls during {READS} linearizable reads on the leader: \
             heartbeats should share one open call"
        );
    }

    // Restarting a follower ends the leader's open call to it; once the other follower is gone,
    // reads are confirmed only through the restarted one, on a call opened anew.
    let (restarted, other) = (followers[0], followers[1]);
    cluster.kill(restarted);
    cluster.spawn(restarted, "new");
    cluster.process(restarted).ready().await;
    cluster.converged().await;
    cluster.kill(other);
    let got = client.get("k", None).await.expect("a linearizable read confirmed by the restarted follower");
    assert_eq!(got.kvs()[0].value(), b"v");
}

/// A follower that stalls (SIGSTOP) longer than the heartbeat timeout leaves the leader's
/// heartbeats to it unanswered in time; its answers arrive once it resumes and are skipped by the
/// next heartbeat, so the call stays open instead of a new one being opened per late heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_answers_heartbeats_late_keeps_its_heartbeat_call() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let stalled = (0..3).find(|&i| i != leader).expect("a follower");
    let mut client = cluster.client(leader).await;
    client.put("k", "v", None).await.unwrap();
    const CALLS: &str = "keel_peer_append_calls_total";
    // Reads until the leader has heartbeated the follower on the call it keeps open.
    for _ in 0..20 {
        client.get("k", None).await.unwrap();
    }
    let before = cluster.metric(stalled, CALLS);

    // Each stall is several heartbeat timeouts (100 ms) long; the other follower keeps the quorum,
    // so reads go on meanwhile and every one of them sends the stalled follower a heartbeat.
    const STALLS: usize = 5;
    for _ in 0..STALLS {
        cluster.process(stalled).signal("STOP");
        let stall_ends = tokio::time::Instant::now() + std::time::Duration::from_millis(350);
        while tokio::time::Instant::now() < stall_ends {
            let got = client.get("k", None).await.expect("a read confirmed by the follower still running");
            assert_eq!(got.kvs()[0].value(), b"v");
        }
        cluster.process(stalled).signal("CONT");
        for _ in 0..20 {
            client.get("k", None).await.unwrap();
        }
    }
    let opened = cluster.metric(stalled, CALLS) - before;
    assert!(
        opened < STALLS as f64,
        "member {stalled} accepted {opened} StreamAppend calls over {STALLS} stalls: late heartbeat answers \
         should be skipped on the call kept open"
    );
}

/// A leader dials a dead member's peer URL about once per heartbeat interval, not as fast as it
/// can: openraft backs off only while producing an append request, which a call that cannot
/// connect never asks for, and redialling in a busy loop starved the live members of a loaded
/// two-core machine (writes stalled after a leader kill). Here the dead member's peer port
/// accepts each connection and closes it at once, counting them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dials_a_dead_member_about_once_per_heartbeat_interval() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let dead = (leader + 1) % 3;
    cluster.kill(dead);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", cluster.peer_ports[dead]))
        .await
        .expect("the dead member's peer port is free again");
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(3);
    let window_ends = tokio::time::Instant::now() + WINDOW;
    let mut dials = 0u32;
    while let Ok(Ok((connection, _))) = tokio::time::timeout_at(window_ends, listener.accept()).await {
        dials += 1;
        drop(connection);
    }
    eprintln!("the leader dialled the dead member {dials} times in {WINDOW:?}");
    // Replication and heartbeats each dial at most once per 100 ms heartbeat interval (TIMING):
    // 60 over the window, allowed half as many again; a slower machine dials less, never more.
    assert!(dials > 0, "the leader never probed the dead member");
    assert!(dials <= 90, "the leader dialled the dead member {dials} times in {WINDOW:?}");
    // The survivors still make progress.
    let mut client = cluster.client(leader).await;
    client.put("after", "1", None).await.expect("a write with one member dead");
}
