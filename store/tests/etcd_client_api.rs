//! The client API exercised through the `etcd-client` crate, a client Keel did not write: every
//! KV, Watch, Lease, Maintenance and Cluster RPC this build serves, and etcd's errors for bad input.

mod common;

use std::time::Duration;

use common::{TestServer, status};
use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions,
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

async fn revision(client: &mut etcd_client::Client) -> i64 {
    client.get("\0", None).await.expect("get").header().expect("header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_reads_writes_and_history() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    assert_eq!(revision(&mut client).await, 1, "a new store is at revision 1, like etcd");

    let put = client.put("foo", "bar", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);
    assert_eq!(put.header().unwrap().member_id(), server.member.member_id());
    assert_eq!(put.header().unwrap().cluster_id(), server.member.cluster_id());
    assert!(put.header().unwrap().raft_term() >= 1);
    let put = client.put("foo", "baz", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(put.prev_key().unwrap().value(), b"bar");
    for (k, v) in [("foo/a", "1"), ("foo/b", "2"), ("foo/c", "3"), ("zzz", "4")] {
        client.put(k, v, None).await.unwrap();
    }

    let get = client.get("foo", None).await.unwrap();
    let kv = &get.kvs()[0];
    assert_eq!((kv.value(), kv.create_revision(), kv.mod_revision(), kv.version()), (&b"baz"[..], 2, 3, 2));

    let prefix = client.get("foo/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(prefix.count(), 3);
    let keys: Vec<&[u8]> = prefix.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![&b"foo/a"[..], b"foo/b", b"foo/c"]);

    let limited = client.get("foo/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!((limited.kvs().len(), limited.more(), limited.count()), (2, true, 3));
    let sorted = client
        .get("foo/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(sorted.kvs()[0].key(), b"foo/c");
    let keys_only = client.get("foo/", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()) && keys_only.kvs().len() == 3);
    let count_only = client.get("foo/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert_eq!((count_only.count(), count_only.kvs().len()), (3, 0));
    let all = client.get("\0", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(all.count(), 5);
    let serializable = client.get("foo", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(serializable.kvs()[0].value(), b"baz");
    let filtered = client
        .get("foo/", Some(GetOptions::new().with_prefix().with_min_mod_revision(5).with_max_mod_revision(5)))
        .await
        .unwrap();
    assert_eq!(filtered.kvs().len(), 1);
    assert_eq!(filtered.kvs()[0].key(), b"foo/b");
    let created = client.get("foo/", Some(GetOptions::new().with_prefix().with_min_create_revision(6))).await.unwrap();
    assert_eq!(created.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(), vec![&b"foo/c"[..]]);

    // History: the first version is readable at its revision.
    let old = client.get("foo", Some(GetOptions::new().with_revision(2))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"bar");
    assert_eq!(old.header().unwrap().revision(), 7, "the header reports the current revision");

    let deleted = client.delete("foo/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
    assert_eq!(deleted.deleted(), 3);
    assert_eq!(deleted.prev_kvs().len(), 3);
    assert_eq!(deleted.header().unwrap().revision(), 8, "one revision for the whole delete");
    let nothing = client.delete("missing", None).await.unwrap();
    assert_eq!(
        (nothing.deleted(), nothing.header().unwrap().revision()),
        (0, 8),
        "deleting nothing creates no revision"
    );

    // ignore_value keeps the value; ignore_lease keeps the lease.
    client.put("foo", "", Some(PutOptions::new().with_ignore_value())).await.unwrap();
    let kept = client.get("foo", None).await.unwrap();
    assert_eq!((kept.kvs()[0].value(), kept.kvs()[0].version()), (&b"baz"[..], 3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_compare_branch_and_nest() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put("k", "v1", None).await.unwrap();

    let txn = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "v1"), Compare::version("k", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("k", "v2", None), TxnOp::put("other", "x", None), TxnOp::get("k", None)])
        .or_else([TxnOp::put("failed", "1", None)]);
    let resp = client.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 3, "a whole transaction is one revision");
    match &resp.op_responses()[2] {
        TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"v2", "later ops see earlier writes"),
        other => panic!("unexpected {other:?}"),
    }
    let both = client.get("other", None).await.unwrap();
    assert_eq!((both.kvs()[0].mod_revision(), both.kvs()[0].create_revision()), (3, 3));

    let txn = Txn::new()
        .when([Compare::mod_revision("k", CompareOp::Less, 3)])
        .and_then([TxnOp::put("never", "1", None)])
        .or_else([TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision("k", CompareOp::Equal, 2)])
                .and_then([TxnOp::delete("other", None)]),
        )]);
    let resp = client.txn(txn).await.unwrap();
    assert!(!resp.succeeded());
    assert!(client.get("other", None).await.unwrap().kvs().is_empty(), "the nested transaction ran");
    assert!(client.get("never", None).await.unwrap().kvs().is_empty());

    // A missing key compares as zero, except on value.
    let resp = client
        .txn(Txn::new().when([Compare::version("missing", CompareOp::Equal, 0)]).and_then([TxnOp::get("k", None)]))
        .await
        .unwrap();
    assert!(resp.succeeded());
    let resp = client.txn(Txn::new().when([Compare::value("missing", CompareOp::Equal, "")])).await.unwrap();
    assert!(!resp.succeeded());
    let resp = client.txn(Txn::new().when([Compare::lease("k", CompareOp::Equal, 0)])).await.unwrap();
    assert!(resp.succeeded());

    // A read-only transaction creates no revision.
    let before = revision(&mut client).await;
    client.txn(Txn::new().and_then([TxnOp::get("k", None)])).await.unwrap();
    assert_eq!(revision(&mut client).await, before);

    // Writing a key twice is refused with etcd's error, and nothing changes.
    let err =
        client.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)])).await.unwrap_err();
    let err = status(err);
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "etcdserver: duplicate key given in txn request"));
    assert_eq!(revision(&mut client).await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_discards_history_and_errors_like_etcd() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 0..10 {
        client.put("key", format!("v{i}"), None).await.unwrap();
    }
    client.delete("key", None).await.unwrap();
    client.put("key", "again", None).await.unwrap();
    let current = revision(&mut client).await;

    client.compact(6, Some(CompactionOptions::new().with_physical())).await.unwrap();
    let err = status(client.get("key", Some(GetOptions::new().with_revision(5))).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let at = client.get("key", Some(GetOptions::new().with_revision(6))).await.unwrap();
    assert_eq!(at.kvs()[0].value(), b"v4", "the compaction revision itself stays readable");
    let err = status(client.compact(6, None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    let err = status(client.compact(current + 10, None).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    );
    let err = status(client.get("key", Some(GetOptions::new().with_revision(current + 1))).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: mvcc: required revision is a future revision");

    // HashKV is stable and accounts for the compaction.
    let a = client.hash_kv(0).await.unwrap();
    let b = client.hash_kv(0).await.unwrap();
    assert_eq!((a.hash(), a.compact_version()), (b.hash(), 6));
    assert_ne!(client.hash().await.unwrap().hash(), 0);

    // A watch from a compacted revision is canceled with the compaction revision.
    let (_watcher, mut stream) = client.watch("key", Some(WatchOptions::new().with_start_revision(2))).await.unwrap();
    let resp = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert!(resp.canceled());
    assert_eq!(resp.compact_revision(), 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_history_and_follow_live_changes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put("w/a", "1", None).await.unwrap();
    client.put("w/b", "2", None).await.unwrap();
    client.delete("w/a", None).await.unwrap();

    // Replay from an old revision, with previous values.
    let (mut watcher, mut stream) = client
        .watch("w/", Some(WatchOptions::new().with_prefix().with_start_revision(2).with_prev_key()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
        for event in resp.events() {
            let kv = event.kv().unwrap();
            seen.push((
                event.event_type(),
                kv.key().to_vec(),
                kv.mod_revision(),
                event.prev_kv().map(|p| p.value().to_vec()),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, b"w/a".to_vec(), 2, None),
            (EventType::Put, b"w/b".to_vec(), 3, None),
            (EventType::Delete, b"w/a".to_vec(), 4, Some(b"1".to_vec())),
        ]
    );

    // Live events, and one revision's events arrive together.
    client.txn(Txn::new().and_then([TxnOp::put("w/x", "x", None), TxnOp::put("w/y", "y", None)])).await.unwrap();
    let resp = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.events().len(), 2);
    assert!(resp.events().iter().all(|e| e.kv().unwrap().mod_revision() == 5));

    // Progress requests report the current revision once everything before it was delivered.
    watcher.request_progress().await.unwrap();
    let resp = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert!(resp.events().is_empty() && !resp.canceled());
    assert_eq!(resp.header().unwrap().revision(), 5);

    watcher.cancel().await.unwrap();
    let resp = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
    assert!(resp.canceled());

    // Filters drop event kinds.
    let (_w, mut deletes) =
        client.watch("f", Some(WatchOptions::new().with_filters([WatchFilterType::NoPut]))).await.unwrap();
    client.put("f", "1", None).await.unwrap();
    client.delete("f", None).await.unwrap();
    let resp = tokio::time::timeout(WAIT, deletes.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.events().len(), 1);
    assert_eq!(resp.events()[0].event_type(), EventType::Delete);

    // An empty range is refused at creation.
    let (_w, mut bad) = client.watch("b", Some(WatchOptions::new().with_range("a"))).await.unwrap();
    let _ = &mut bad;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_share_a_stream_and_a_slow_one_catches_up() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (mut watcher, mut stream) = client.watch("slow", None).await.unwrap();
    for key in ["s1", "s2", "s3"] {
        watcher.watch(key, None).await.unwrap();
    }
    // Write far more than the stream buffer holds while nobody reads, so watchers fall back to
    // replaying from storage; every event must still arrive, once, in order.
    let writes = 600;
    for i in 0..writes {
        client.put(["slow", "s1", "s2", "s3"][i % 4], i.to_string(), None).await.unwrap();
    }
    let mut per_watch: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    let mut total = 0;
    while total < writes {
        let resp = tokio::time::timeout(WAIT, stream.message()).await.unwrap().unwrap().unwrap();
        for event in resp.events() {
            per_watch.entry(resp.watch_id()).or_default().push(event.kv().unwrap().mod_revision());
            total += 1;
        }
    }
    assert_eq!(per_watch.len(), 4);
    for revisions in per_watch.values() {
        assert_eq!(revisions.len(), writes / 4);
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "ordered without duplicates");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_attach_keep_alive_and_revoke() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let lease = client.lease_grant(60, None).await.unwrap();
    assert!(lease.id() > 0);
    assert_eq!(lease.ttl(), 60);
    let chosen = client.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap();
    assert_eq!(chosen.id(), 0x1234);
    let err = status(client.lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "etcdserver: lease already exists"));
    let err = status(client.lease_grant(9_000_000_001, None).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::OutOfRange, "etcdserver: too large lease TTL"));

    client.put("leased/a", "1", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    client.put("leased/b", "2", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    let ttl = client.lease_time_to_live(lease.id(), Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60);
    assert_eq!(ttl.keys(), &[b"leased/a".to_vec(), b"leased/b".to_vec()]);
    let ids: Vec<i64> = client.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    assert!(ids.contains(&lease.id()) && ids.contains(&0x1234));

    let (mut keeper, mut responses) = client.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let resp = tokio::time::timeout(WAIT, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((resp.id(), resp.ttl()), (lease.id(), 60));

    let before = revision(&mut client).await;
    client.lease_revoke(lease.id()).await.unwrap();
    assert_eq!(revision(&mut client).await, before + 1, "revoking deletes every attached key in one revision");
    assert_eq!(client.get("leased/", Some(GetOptions::new().with_prefix())).await.unwrap().count(), 0);
    let gone = client.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(gone.ttl(), -1, "a missing lease reports TTL -1, like etcd");
    keeper.keep_alive().await.unwrap();
    let resp = tokio::time::timeout(WAIT, responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.ttl(), 0, "keep-alive of a missing lease answers TTL 0");
    let err = status(client.lease_revoke(lease.id()).await.unwrap_err());
    assert_eq!((err.code(), err.message()), (Code::NotFound, "etcdserver: requested lease not found"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_through_the_log() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let lease = client.lease_grant(1, None).await.unwrap();
    client.put("ephemeral", "x", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    let (_watcher, mut stream) = client.watch("ephemeral", None).await.unwrap();
    // The leader revokes the lease once it expires; the delete arrives as a watch event.
    let resp = tokio::time::timeout(WAIT, stream.message()).await.expect("expiry within the bound").unwrap().unwrap();
    assert_eq!(resp.events()[0].event_type(), EventType::Delete);
    assert!(client.get("ephemeral", None).await.unwrap().kvs().is_empty());
    assert_eq!(client.lease_time_to_live(lease.id(), None).await.unwrap().ttl(), -1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcds_errors_and_changes_nothing() {
    let server = TestServer::start_with(|c| c.max_request_bytes = 64 * 1024).await;
    let mut client = server.client().await;
    client.put("stable", "1", None).await.unwrap();
    let before = revision(&mut client).await;

    let cases: Vec<(Result<(), etcd_client::Error>, Code, &str)> = vec![
        (client.put("", "v", None).await.map(|_| ()), Code::InvalidArgument, "etcdserver: key is not provided"),
        (client.get("", None).await.map(|_| ()), Code::InvalidArgument, "etcdserver: key is not provided"),
        (client.delete("", None).await.map(|_| ()), Code::InvalidArgument, "etcdserver: key is not provided"),
        (
            client.put("k", "v", Some(PutOptions::new().with_lease(999))).await.map(|_| ()),
            Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            client.put("k", "v", Some(PutOptions::new().with_ignore_value())).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: value is provided",
        ),
        (
            client.put("absent", "", Some(PutOptions::new().with_ignore_value())).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            client.put("big", vec![b'x'; 100 * 1024], None).await.map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: request is too large",
        ),
        (
            client
                .txn(Txn::new().and_then((0..129).map(|i| TxnOp::put(format!("t{i}"), "v", None)).collect::<Vec<_>>()))
                .await
                .map(|_| ()),
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        ),
    ];
    for (result, code, message) in cases {
        let err = status(result.expect_err(message));
        assert_eq!((err.code(), err.message()), (code, message));
    }
    // A range whose end is before its start is empty, as in etcd.
    assert_eq!(client.get("z", Some(GetOptions::new().with_range("a"))).await.unwrap().count(), 0);
    assert_eq!(revision(&mut client).await, before, "no refused request changed anything");
    assert_eq!(client.get("stable", None).await.unwrap().kvs()[0].value(), b"1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_cluster_report_the_member() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.put("a", "1", None).await.unwrap();
    let status = client.status().await.unwrap();
    assert!(status.version().starts_with("3.5."), "version {}", status.version());
    assert_eq!(status.leader(), server.member.member_id());
    assert!(status.raft_index() >= 2 && status.raft_term() >= 1);
    assert!(status.db_size() > 0);
    let members = client.member_list().await.unwrap();
    let member = &members.members()[0];
    assert_eq!(member.id(), server.member.member_id());
    assert_eq!(member.name(), "test");
    assert_eq!(member.client_urls(), std::slice::from_ref(&server.endpoint));
    assert!(!member.is_learner());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_and_fragments() {
    let server = TestServer::start_with(|c| {
        c.watch_progress_notify_interval = Duration::from_millis(200);
        c.max_request_bytes = 64 * 1024;
    })
    .await;
    let mut client = server.client().await;

    // An idle watcher that asked for progress notifications gets one with the current revision.
    client.put("p", "1", None).await.unwrap();
    let (_w, mut quiet) = client.watch("idle", Some(WatchOptions::new().with_progress_notify())).await.unwrap();
    let resp = tokio::time::timeout(WAIT, quiet.message()).await.unwrap().unwrap().unwrap();
    assert!(resp.events().is_empty() && !resp.canceled());
    assert_eq!(resp.header().unwrap().revision(), 2);

    // A revision whose events (with previous values) exceed --max-request-bytes is split into
    // fragments for a watcher that accepts them; together they carry every event, in order.
    let value = vec![b'v'; 20 * 1024];
    for i in 0..3 {
        client.put(format!("big/{i}"), value.clone(), None).await.unwrap();
    }
    let (_w, mut big) =
        client.watch("big/", Some(WatchOptions::new().with_prefix().with_prev_key().with_fragment())).await.unwrap();
    let puts: Vec<TxnOp> = (0..3).map(|i| TxnOp::put(format!("big/{i}"), value.clone(), None)).collect();
    client.txn(Txn::new().and_then(puts)).await.unwrap();
    let mut keys = Vec::new();
    let mut responses = 0;
    while keys.len() < 3 {
        let resp = tokio::time::timeout(WAIT, big.message()).await.unwrap().unwrap().unwrap();
        responses += 1;
        for event in resp.events() {
            assert_eq!(event.prev_kv().map(|p| p.value().len()), Some(value.len()));
            keys.push(event.kv().unwrap().key().to_vec());
        }
    }
    assert!(responses > 1, "the revision was fragmented");
    assert_eq!(keys, (0..3).map(|i| format!("big/{i}").into_bytes()).collect::<Vec<_>>());
    server.stop().await;
}
