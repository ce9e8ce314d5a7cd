//! The Lock and Election services through the `etcd-client` crate against one member: waiters are
//! granted in order with increasing fencing tokens, a waiter whose lease ends is never granted, a
//! holder's lease expiry frees the lock in the revision that deletes its key, abandoned waiters
//! leave the queue, Observe reports every leader in revision order, and bad input gets clear
//! errors without changing anything.

mod common;

use std::time::Duration;

use common::{TestServer, status};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions, Txn, TxnOp,
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

async fn revision(client: &mut Client) -> i64 {
    client.get("\0", None).await.expect("get").header().expect("header").revision()
}

async fn lease(client: &mut Client, ttl: i64) -> i64 {
    client.lease_grant(ttl, None).await.expect("lease grant").id()
}

/// Waits (bounded) until `prefix` holds `count` keys.
async fn wait_for_keys(client: &mut Client, prefix: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = client.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("get").kvs().len();
        if n == count {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{prefix} never held {count} keys (has {n})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `value` to `key` only while `lock_key` still has create revision `token`.
async fn fenced_put(client: &mut Client, lock_key: &[u8], token: i64, key: &str, value: &str) -> bool {
    let txn = Txn::new()
        .when([Compare::create_revision(lock_key, CompareOp::Equal, token)])
        .and_then([TxnOp::put(key, value, None)]);
    client.txn(txn).await.expect("txn").succeeded()
}

fn token(resp: &etcd_client::LockResponse) -> i64 {
    resp.header().expect("header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_granted_in_queue_order_with_increasing_fencing_tokens() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (a, b, c) = (lease(&mut client, 60).await, lease(&mut client, 60).await, lease(&mut client, 60).await);

    let first = client.lock("job", Some(LockOptions::new().with_lease(a))).await.expect("uncontended lock");
    assert_eq!(first.key(), format!("job/{a:x}").as_bytes());
    let stored = client.get(first.key(), None).await.unwrap();
    assert_eq!(stored.kvs()[0].create_revision(), token(&first), "the header revision is the key's create revision");
    assert_eq!(stored.kvs()[0].lease(), a);
    // Locking again with the same lease is the same acquisition.
    let again = client.lock("job", Some(LockOptions::new().with_lease(a))).await.unwrap();
    assert_eq!((again.key(), token(&again)), (first.key(), token(&first)));

    let mut waiter_b = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("job", Some(LockOptions::new().with_lease(b))).await }
    });
    wait_for_keys(&mut client, "job/", 2).await;
    let mut waiter_c = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("job", Some(LockOptions::new().with_lease(c))).await }
    });
    wait_for_keys(&mut client, "job/", 3).await;
    assert!(!waiter_b.is_finished() && !waiter_c.is_finished(), "nobody is granted while the lock is held");

    assert!(fenced_put(&mut client, first.key(), token(&first), "resource", "a").await);
    let released = client.unlock(first.key()).await.expect("unlock").header().unwrap().revision();
    let second = tokio::time::timeout(WAIT, &mut waiter_b).await.expect("b granted").unwrap().expect("b's lock");
    assert_eq!(second.key(), format!("job/{b:x}").as_bytes());
    assert!(token(&second) > token(&first));
    assert!(!fenced_put(&mut client, first.key(), token(&first), "resource", "stale a").await, "a's token is dead");
    assert!(fenced_put(&mut client, second.key(), token(&second), "resource", "b").await);
    assert!(client.get(first.key(), None).await.unwrap().kvs().is_empty());
    assert!(released > token(&second), "a released after b queued");
    assert!(!waiter_c.is_finished());

    client.unlock(second.key()).await.expect("unlock b");
    let third = tokio::time::timeout(WAIT, &mut waiter_c).await.expect("c granted").unwrap().expect("c's lock");
    assert!(token(&third) > token(&second));
    assert_eq!(client.get("resource", None).await.unwrap().kvs()[0].value(), b"b");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_is_revoked_or_expires_is_never_granted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let holder = lease(&mut client, 60).await;
    let held = client.lock("mutex", Some(LockOptions::new().with_lease(holder))).await.unwrap();

    // Revoked while waiting: the wait fails at once, although the lock is still held.
    let victim = lease(&mut client, 60).await;
    let waiter = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("mutex", Some(LockOptions::new().with_lease(victim))).await }
    });
    wait_for_keys(&mut client, "mutex/", 2).await;
    client.lease_revoke(victim).await.unwrap();
    let err = status(tokio::time::timeout(WAIT, waiter).await.expect("wait ends").unwrap().expect_err("never granted"));
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("session expired"), "{}", err.message());

    // Expired while waiting (no keep-alive).
    let short = lease(&mut client, 2).await;
    let waiter = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("mutex", Some(LockOptions::new().with_lease(short))).await }
    });
    let err = status(tokio::time::timeout(WAIT, waiter).await.expect("wait ends").unwrap().expect_err("never granted"));
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Neither left anything behind: the next waiter is granted as soon as the holder unlocks.
    wait_for_keys(&mut client, "mutex/", 1).await;
    let next = lease(&mut client, 60).await;
    let waiter = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("mutex", Some(LockOptions::new().with_lease(next))).await }
    });
    wait_for_keys(&mut client, "mutex/", 2).await;
    client.unlock(held.key()).await.unwrap();
    let granted = tokio::time::timeout(WAIT, waiter).await.expect("granted").unwrap().expect("lock");
    assert_eq!(granted.key(), format!("mutex/{next:x}").as_bytes());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_lease_expiry_frees_the_lock_in_the_revision_that_deletes_its_key() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let holder = lease(&mut client, 2).await;
    let held = client.lock("expiring", Some(LockOptions::new().with_lease(holder))).await.unwrap();
    let next = lease(&mut client, 60).await;
    let granted = tokio::time::timeout(WAIT, client.lock("expiring", Some(LockOptions::new().with_lease(next))))
        .await
        .expect("granted once the holder's lease expires")
        .expect("lock");

    // The history of the lock's keys: the holder's key is deleted in one revision, and at that
    // very revision the next waiter's key is the oldest.
    let mut history = client
        .get("expiring/", Some(GetOptions::new().with_prefix().with_revision(token(&granted))))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key().to_vec())
        .collect::<Vec<_>>();
    history.sort();
    assert_eq!(history.len(), 2, "both keys existed when the waiter queued");
    let (_, mut events) = client
        .watch("expiring/", Some(etcd_client::WatchOptions::new().with_prefix().with_start_revision(token(&held))))
        .await
        .unwrap();
    let mut deleted_at = None;
    while deleted_at.is_none() {
        let resp = tokio::time::timeout(WAIT, events.message()).await.expect("history").unwrap().unwrap();
        for event in resp.events() {
            if event.event_type() == etcd_client::EventType::Delete {
                assert_eq!(event.kv().unwrap().key(), held.key());
                deleted_at = Some(event.kv().unwrap().mod_revision());
            }
        }
    }
    let deleted_at = deleted_at.unwrap();
    let before =
        client.get("expiring/", Some(GetOptions::new().with_prefix().with_revision(deleted_at - 1))).await.unwrap();
    assert_eq!(before.kvs().len(), 2, "the holder's key lived until the deleting revision");
    let at = client.get("expiring/", Some(GetOptions::new().with_prefix().with_revision(deleted_at))).await.unwrap();
    assert_eq!(at.kvs().len(), 1);
    assert_eq!(at.kvs()[0].key(), granted.key(), "the waiter holds from the deleting revision on");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_waiter_leaves_the_queue() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let holder = lease(&mut client, 60).await;
    let held = client.lock("queue", Some(LockOptions::new().with_lease(holder))).await.unwrap();

    // A client that gives up (its call is dropped, as on a deadline or disconnect) takes its key
    // with it, although its lease lives on.
    let quitter = lease(&mut client, 60).await;
    let mut quitting = server.client().await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        quitting.lock("queue", Some(LockOptions::new().with_lease(quitter))),
    )
    .await;
    assert!(gave_up.is_err(), "the lock is held, so the call waits");
    drop(quitting);
    wait_for_keys(&mut client, "queue/", 1).await;
    assert!(client.lease_time_to_live(quitter, None).await.unwrap().ttl() > 0, "the lease lives on");

    // A call with a gRPC deadline (grpc-timeout) ends when the deadline passes, on the server's
    // side, and also leaves the queue.
    let patient = lease(&mut client, 60).await;
    let mut raw = keel_proto::v3lockpb::lock_client::LockClient::connect(server.endpoint.clone()).await.unwrap();
    let mut request =
        tonic::Request::new(keel_proto::v3lockpb::LockRequest { name: b"queue".to_vec(), lease: patient });
    request.set_timeout(Duration::from_millis(300));
    let err = raw.lock(request).await.expect_err("the deadline passes while the lock is held");
    assert!(matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled), "{err}");
    wait_for_keys(&mut client, "queue/", 1).await;

    client.unlock(held.key()).await.unwrap();
    let other = lease(&mut client, 60).await;
    let granted = client.lock("queue", Some(LockOptions::new().with_lease(other))).await.expect("free lock");
    assert_eq!(granted.key(), format!("queue/{other:x}").as_bytes());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_per_member_and_a_refused_call_changes_nothing() {
    let server = TestServer::start_with(|c| c.max_lock_waiters = 1).await;
    let mut client = server.client().await;
    let (a, b, c) = (lease(&mut client, 60).await, lease(&mut client, 60).await, lease(&mut client, 60).await);
    let held = client.lock("bounded", Some(LockOptions::new().with_lease(a))).await.unwrap();
    let waiter = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("bounded", Some(LockOptions::new().with_lease(b))).await }
    });
    wait_for_keys(&mut client, "bounded/", 2).await;
    // One waiter and one observer are within the bound; a second of either is not.
    let _observer = client.observe("bounded").await.expect("first observer");
    let before = revision(&mut client).await;
    let err = status(client.lock("bounded", Some(LockOptions::new().with_lease(c))).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::ResourceExhausted, "etcdserver: too many lock and election waiters on this member")
    );
    let Err(refused) = client.observe("bounded").await else { panic!("a second observer is refused") };
    let err = status(refused);
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(revision(&mut client).await, before, "the refused call queued nothing");

    client.unlock(held.key()).await.unwrap();
    tokio::time::timeout(WAIT, waiter).await.expect("granted").unwrap().expect("lock");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_reports_every_leader_in_revision_order_even_short_lived_ones() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut observer = server.client().await.observe("pilot").await.expect("observe");
    let (a, b, c) = (lease(&mut client, 60).await, lease(&mut client, 60).await, lease(&mut client, 60).await);

    let leader_a = client.campaign("pilot", "a1", a).await.expect("campaign a").leader().unwrap().clone();
    assert_eq!(leader_a.rev(), client.get(leader_a.key(), None).await.unwrap().kvs()[0].create_revision());
    client.proclaim("a2", Some(ProclaimOptions::new().with_leader(leader_a.clone()))).await.expect("proclaim");
    assert_eq!(client.leader("pilot").await.unwrap().kv().unwrap().value(), b"a2");

    let campaign_b = tokio::spawn({
        let mut client = client.clone();
        async move { client.campaign("pilot", "b1", b).await }
    });
    wait_for_keys(&mut client, "pilot/", 2).await;
    let campaign_c = tokio::spawn({
        let mut client = client.clone();
        async move { client.campaign("pilot", "c1", c).await }
    });
    wait_for_keys(&mut client, "pilot/", 3).await;

    // a resigns, then b resigns as soon as it leads: b leads for one revision only, and the
    // observer still reports it.
    client.resign(Some(ResignOptions::new().with_leader(leader_a.clone()))).await.expect("resign a");
    let leader_b = tokio::time::timeout(WAIT, campaign_b).await.expect("b leads").unwrap().expect("campaign b");
    let leader_b = leader_b.leader().unwrap().clone();
    client.resign(Some(ResignOptions::new().with_leader(leader_b))).await.expect("resign b");
    let leader_c = tokio::time::timeout(WAIT, campaign_c).await.expect("c leads").unwrap().expect("campaign c");
    assert!(leader_c.leader().unwrap().rev() > leader_a.rev());

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let resp = tokio::time::timeout(WAIT, observer.message()).await.expect("observed").unwrap().expect("stream");
        let revision = resp.header().unwrap().revision();
        seen.push((String::from_utf8(resp.kv().unwrap().value().to_vec()).unwrap(), revision));
    }
    let values: Vec<&str> = seen.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(values, ["a1", "a2", "b1", "c1"]);
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "revision order: {seen:?}");

    // A stale leader key neither proclaims nor resigns.
    let err =
        status(client.proclaim("late", Some(ProclaimOptions::new().with_leader(leader_a.clone()))).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "etcdserver: election: not leader"));
    let err = status(client.resign(Some(ResignOptions::new().with_leader(leader_a))).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "etcdserver: election: not leader"));
    assert_eq!(client.leader("pilot").await.unwrap().kv().unwrap().value(), b"c1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lock_and_election_input_gets_clear_errors_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let live = lease(&mut client, 60).await;
    client.put("plain", "keep", None).await.unwrap();
    client.put(format!("forged/{live:x}"), "no lease", None).await.unwrap();
    let before = revision(&mut client).await;
    let stale = LeaderKey::new().with_name("e").with_key(format!("e/{live:x}")).with_rev(before).with_lease(live);

    let cases: Vec<(Result<(), etcd_client::Error>, Code, &str)> = vec![
        (
            client.lock("", Some(LockOptions::new().with_lease(live))).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: lock or election name is not provided",
        ),
        (
            client.lock("l", None).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: lease is not provided: a lock or candidacy must be attached to a lease",
        ),
        (
            client.lock("l", Some(LockOptions::new().with_lease(0x7777))).await.map(|_| ()),
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (client.unlock("l/1").await.map(|_| ()), Code::FailedPrecondition, "etcdserver: lock key \"l/1\" is not held"),
        (
            client.unlock("plain").await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: \"plain\" is not a lock or election key (NAME/<lease id in hex>, attached to that lease)",
        ),
        (client.unlock(format!("forged/{live:x}")).await.map(|_| ()), Code::InvalidArgument, ""),
        (client.unlock("").await.map(|_| ()), Code::InvalidArgument, "etcdserver: key is not provided"),
        (
            client.campaign("", "v", live).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: lock or election name is not provided",
        ),
        (client.campaign("e", "v", 0x7777).await.map(|_| ()), Code::NotFound, "etcdserver: requested lease not found"),
        (client.leader("e").await.map(|_| ()), Code::NotFound, "etcdserver: election: no leader"),
        (
            client.proclaim("v", Some(ProclaimOptions::new().with_leader(stale.clone()))).await.map(|_| ()),
            Code::FailedPrecondition,
            "etcdserver: election: not leader",
        ),
        (client.proclaim("v", None).await.map(|_| ()), Code::InvalidArgument, "\"leader\" field must be provided"),
        (
            client.resign(Some(ResignOptions::new().with_leader(stale))).await.map(|_| ()),
            Code::FailedPrecondition,
            "etcdserver: election: not leader",
        ),
        (
            client
                .resign(Some(ResignOptions::new().with_leader(LeaderKey::new().with_name("e").with_key("e/1"))))
                .await
                .map(|_| ()),
            Code::FailedPrecondition,
            "etcdserver: election: not leader",
        ),
    ];
    for (result, code, message) in cases {
        let err = status(result.expect_err(message));
        assert_eq!(err.code(), code, "{}", err.message());
        if !message.is_empty() {
            assert_eq!(err.message(), message);
        }
    }
    assert_eq!(revision(&mut client).await, before, "no refused request changed anything");
    assert_eq!(client.get("plain", None).await.unwrap().kvs()[0].value(), b"keep");
    assert_eq!(client.get(format!("forged/{live:x}"), None).await.unwrap().count(), 1);
    server.stop().await;
}
