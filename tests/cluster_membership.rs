//! Membership changes on a live cluster, checked with Debian's etcdctl at every step: add a learner,
//! start it, promote it, remove the old leader, all while writes continue. Bad membership requests
//! get etcd's errors and change nothing.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::MemberAddOptions;
use support::READY_BOUND;
use support::cluster::Cluster;
use tonic::Code;

fn etcdctl(endpoints: &[String], args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .output()
        .expect("run etcdctl (Debian's etcd-client)");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `etcdctl member list` as `id → (status, name, learner)`.
fn member_list(endpoints: &[String]) -> BTreeMap<String, (String, String, bool)> {
    etcdctl(endpoints, &["member", "list"])
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split(", ").collect();
            (f[0].to_string(), (f[1].to_string(), f[2].to_string(), f[5] == "true"))
        })
        .collect()
}

/// `etcdctl member list` once it satisfies `check` (bounded wait). etcdctl 3.4 asks for a
/// serializable list, which a follower serves from its own applied state: right after a change it
/// may still show the previous membership for a moment, as etcd's followers do.
async fn members_once(
    endpoints: &[String],
    what: &str,
    check: impl Fn(&BTreeMap<String, (String, String, bool)>) -> bool,
) -> BTreeMap<String, (String, String, bool)> {
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    loop {
        let members = member_list(endpoints);
        if check(&members) {
            return members;
        }
        assert!(tokio::time::Instant::now() < deadline, "member list never showed {what}: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_added_promoted_and_old_leader_removed_while_writes_continue() {
    let mut cluster = Cluster::start(3, &[]).await;
    let old_leader = cluster.leader().await;
    let old_leader_id = format!("{:x}", cluster.member_id(old_leader).await);

    // A writer that keeps going through every step.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = cluster.client_for(&[0, 1, 2]).await;
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("m/{i:06}");
                i += 1;
                if client.put(key.as_str(), "v", None).await.is_ok() {
                    acked.lock().unwrap().insert(key, "v".into());
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    // Add a learner: listed as unstarted.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    let endpoints: Vec<String> = survivors.iter().map(|&i| cluster.url(i)).collect();
    let new = cluster.reserve_member();
    let added = etcdctl(
        &endpoints,
        &["member", "add", &cluster.names[new], &format!("--peer-urls={}", cluster.peer_url(new)), "--learner"],
    );
    let new_id = added.split_whitespace().nth(1).expect("member id").to_string();
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{added}");
    let unstarted = ("unstarted".to_string(), String::new(), true);
    members_once(&endpoints, "the unstarted learner", |m| m.get(&new_id) == Some(&unstarted)).await;

    // Start it: it joins as a started learner and catches up.
    cluster.spawn(new, "existing");
    cluster.process(new).ready().await;
    let started = ("started".to_string(), cluster.names[new].clone(), true);
    members_once(&endpoints, "the started learner", |m| m.get(&new_id) == Some(&started)).await;

    // Promote it (refused until it has caught up).
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    loop {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["member", "promote", &new_id])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("can only promote a learner member which is in sync with leader"), "{stderr}");
        assert!(tokio::time::Instant::now() < deadline, "the learner never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let voter = ("started".to_string(), cluster.names[new].clone(), false);
    members_once(&endpoints, "the promoted member", |m| m.get(&new_id) == Some(&voter)).await;

    // Remove the old leader: it leaves (its process exits) and the others carry on.
    let removed = etcdctl(&endpoints, &["member", "remove", &old_leader_id]);
    // etcdctl prints ids as `%16x`: space-padded when shorter than 16 digits.
    assert!(removed.contains(&format!("Member {old_leader_id:>16} removed")), "{removed}");
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    while cluster.process(old_leader).is_running() {
        assert!(tokio::time::Instant::now() < deadline, "the removed member kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members = members_once(&endpoints, "three members without the old leader", |m| m.len() == 3).await;
    assert!(!members.contains_key(&old_leader_id));
    assert!(members.values().all(|(status, _, learner)| status == "started" && !learner));
    let leader = cluster.leader().await;
    assert_ne!(leader, old_leader);

    let before = acked.lock().unwrap().len();
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    while acked.lock().unwrap().len() < before + 50 {
        assert!(tokio::time::Instant::now() < deadline, "writes stopped after the membership changes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    cluster.converged().await;
    let acked = acked.lock().unwrap().clone();
    for &i in survivors.iter().chain([&new]) {
        let data = cluster.local_data(i).await;
        assert!(acked.keys().all(|k| data.contains_key(k)), "member {i} lacks acknowledged writes");
    }
    eprintln!("{} writes acknowledged across add, promote and leader removal", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_requests_are_refused_and_change_nothing() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut client = cluster.client_for(&[0, 1, 2]).await;
    let before = client.member_list().await.unwrap().members().to_vec();
    let voter = before[0].id();

    let cases: Vec<(Result<(), etcd_client::Error>, Code, &str)> = vec![
        (
            client.member_add(["http://127.0.0.1"], None).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        (
            client.member_add(["not a url"], None).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        (
            client.member_add([cluster.peer_url(1)], None).await.map(|_| ()),
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        (client.member_remove(0x1234).await.map(|_| ()), Code::NotFound, "etcdserver: member not found"),
        (client.member_promote(0x1234).await.map(|_| ()), Code::NotFound, "etcdserver: member not found"),
        (
            client.member_promote(voter).await.map(|_| ()),
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
    ];
    for (result, code, message) in cases {
        let err = status(result.expect_err(message));
        assert_eq!((err.code(), err.message()), (code, message));
    }
    assert_eq!(client.member_list().await.unwrap().members(), before.as_slice(), "membership unchanged");

    // A learner that never started is far behind: promoting it is refused.
    let learner = client
        .member_add(
            [format!("http://127.0.0.1:{}", support::free_port())],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let learner_id = learner.member().unwrap().id();
    let err = status(client.member_promote(learner_id).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: can only promote a learner member which is in sync with leader");
    client.member_remove(learner_id).await.unwrap();
    // The list is served by whichever member the client picks, from its applied state: a follower
    // may show the learner for a moment after the removal.
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    loop {
        let members = client.member_list().await.unwrap().members().to_vec();
        if members == before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "membership never returned to {before:?}: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A member started to join although nobody added it is refused with what to do, once the
    // members had time to apply any add in flight; the membership stays as it was.
    let stranger = cluster.reserve_member();
    cluster.spawn(stranger, "existing");
    let deadline = tokio::time::Instant::now() + READY_BOUND;
    while cluster.process(stranger).is_running() {
        assert!(tokio::time::Instant::now() < deadline, "a member nobody added kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cluster.log(stranger);
    assert!(log.contains("the cluster has no member with peer URLs") && log.contains("add it first"), "{log}");
    assert_eq!(client.member_list().await.unwrap().members(), before.as_slice(), "membership unchanged");
}
