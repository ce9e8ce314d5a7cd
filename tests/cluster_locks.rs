//! Locks and elections on a 3-member cluster of real processes, across a leader kill.
//!
//! Contention: 20 clients fight over one lock for 30 s through the Lock service while the Raft
//! leader is killed, and a "victim" keeps queueing with a lease that is revoked while it waits.
//! Every holder increments a shared counter with a read followed by a write fenced by its token.
//! Afterwards the lock's own history (every put and delete under its prefix, read back from the
//! store) is replayed to find, revision by revision, which key was the oldest, and the test
//! checks: every grant a client received was that key at some revision; the successive holders'
//! fencing tokens strictly increase and their hold intervals [became oldest, deleted) do not
//! overlap; every fenced write landed inside its writer's interval; no increment was lost; and no
//! victim was granted after its lease was revoked.
//!
//! Observe: an observer on a follower sees every change of leader in order while the Raft leader is
//! killed, and a new observer on another member (what a client that lost its member opens) first
//! gets the current leader.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, LockOptions, Txn, TxnOp, WatchOptions};
use support::cluster::Cluster;

const CLIENTS: usize = 20;
const RUN: Duration = Duration::from_secs(30);
const KILL_AFTER: Duration = Duration::from_secs(10);
const LOCK: &str = "contended";
const COUNTER: &str = "counter";
const LEASE_TTL: i64 = 10;
/// Longest a client waits for the lock before giving up (its key then leaves the queue).
const LOCK_PATIENCE: Duration = Duration::from_secs(20);
const BOUND: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
struct Grant {
    client: usize,
    key: Vec<u8>,
    token: i64,
}

#[derive(Debug, Clone)]
struct FencedWrite {
    token: i64,
    revision: i64,
}

#[derive(Default)]
struct Record {
    grants: Vec<Grant>,
    writes: Vec<FencedWrite>,
    /// (key, token, unlock revision) for every Unlock that succeeded.
    unlocks: Vec<(Vec<u8>, i64, i64)>,
    /// Victim leases revoked while their Lock call was in flight, with the revoke's revision.
    victims_revoked: Vec<(i64, i64)>,
    /// Victims whose Lock call failed (as it must once the lease is gone).
    victims_refused: usize,
}

/// A lease kept alive by a background task until dropped.
struct KeptLease {
    id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

async fn keep_lease(client: &Client) -> Option<KeptLease> {
    let mut granting = client.clone();
    let id = granting.lease_grant(LEASE_TTL, None).await.ok()?.id();
    let client = client.clone();
    let keeper = tokio::spawn(async move {
        let mut client = client;
        // Each round opens a keep-alive stream and renews every 2 s until the stream fails (its
        // member died); then a new stream, possibly on another member.
        loop {
            if let Ok((mut keeper, mut responses)) = client.lease_keep_alive(id).await {
                loop {
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(3), responses.message()).await {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                        // The lease is gone (expired during the failover): nothing left to keep.
                        Ok(Ok(Some(_))) => return,
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Some(KeptLease { id, keeper })
}

/// One contender: lock, increment the counter under the fence, unlock; until `stop`.
async fn contend(client_index: usize, mut client: Client, stop: Arc<AtomicBool>, record: Arc<Mutex<Record>>) {
    let mut lease: Option<KeptLease> = None;
    while !stop.load(Ordering::Relaxed) {
        if lease.is_none() {
            lease = keep_lease(&client).await;
            if lease.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let id = lease.as_ref().map_or(0, |l| l.id);
        let locked =
            tokio::time::timeout(LOCK_PATIENCE, client.lock(LOCK, Some(LockOptions::new().with_lease(id)))).await;
        let resp = match locked {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => {
                // A lost lease (expired while its member was down) needs a new one; anything else
                // (a dead member, no leader yet) is retried with the same lease.
                let text = err.to_string();
                if text.contains("session expired") || text.contains("lease not found") {
                    lease = None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => continue,
        };
        let token = resp.header().map_or(0, |h| h.revision());
        let key = resp.key().to_vec();
        record.lock().unwrap().grants.push(Grant { client: client_index, key: key.clone(), token });

        // Critical section: read, then write +1 only while still holding (fenced by the token).
        if let Ok(current) = client.get(COUNTER, None).await {
            let n: u64 = current.kvs().first().map_or(0, |kv| kv.value_str().unwrap().parse().unwrap());
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, token)])
                .and_then([TxnOp::put(COUNTER, (n + 1).to_string(), None)]);
            if let Ok(done) = client.txn(txn).await
                && done.succeeded()
            {
                let revision = done.header().map_or(0, |h| h.revision());
                record.lock().unwrap().writes.push(FencedWrite { token, revision });
            }
        }
        if let Ok(unlocked) = client.unlock(key.clone()).await {
            let revision = unlocked.header().map_or(0, |h| h.revision());
            record.lock().unwrap().unlocks.push((key, token, revision));
        }
    }
}

/// Queues with a fresh lease, then revokes that lease while the call waits.
async fn victim(mut client: Client, mut revoker: Client, stop: Arc<AtomicBool>, record: Arc<Mutex<Record>>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(granted) = revoker.lease_grant(LEASE_TTL, None).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let id = granted.id();
        let mut call = Box::pin(client.lock(LOCK, Some(LockOptions::new().with_lease(id))));
        // Let the call queue (it returns early only if it was granted before the revoke).
        let early = tokio::time::timeout(Duration::from_millis(300), &mut call).await;
        let revoked = revoker.lease_revoke(id).await.ok().and_then(|r| r.header().map(|h| h.revision()));
        let result = match early {
            Ok(result) => result,
            Err(_) => match tokio::time::timeout(LOCK_PATIENCE, &mut call).await {
                Ok(result) => result,
                Err(_) => continue,
            },
        };
        let mut record = record.lock().unwrap();
        if let Some(revision) = revoked {
            record.victims_revoked.push((id, revision));
        }
        match result {
            Ok(resp) => record.grants.push(Grant {
                client: usize::MAX,
                key: resp.key().to_vec(),
                token: resp.header().map_or(0, |h| h.revision()),
            }),
            Err(_) => record.victims_refused += 1,
        }
    }
}

/// One put or delete, as the store's history holds it.
#[derive(Debug, Clone)]
struct Change {
    kind: EventType,
    key: Vec<u8>,
    create: i64,
    revision: i64,
    value: Vec<u8>,
}

/// Every put and delete under `prefix` from revision 1 through `until`, in revision order. The
/// end is known from a progress notification: the store sends one only after every earlier event.
async fn history(client: &mut Client, prefix: &str, until: i64) -> Vec<Change> {
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let (mut watcher, mut stream) = client.watch(prefix, Some(options)).await.expect("watch history");
    watcher.request_progress().await.expect("progress request");
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let resp = tokio::time::timeout(remaining, stream.message())
            .await
            .expect("history replays in time")
            .expect("watch")
            .expect("watch open");
        if resp.created() || resp.events().is_empty() {
            if !resp.created() && resp.header().map_or(0, |h| h.revision()) >= until {
                return events;
            }
            watcher.request_progress().await.expect("progress request");
            continue;
        }
        for event in resp.events() {
            let kv = event.kv().expect("kv");
            events.push(Change {
                kind: event.event_type(),
                key: kv.key().to_vec(),
                create: kv.create_revision(),
                revision: kv.mod_revision(),
                value: kv.value().to_vec(),
            });
        }
    }
}

/// A lock key's life: created at `create`, the oldest key from `oldest_from`, deleted at `deleted`.
#[derive(Debug, Default, Clone)]
struct Incarnation {
    oldest_from: Option<i64>,
    deleted: Option<i64>,
}

/// Replays the lock's history: for each incarnation (key, create revision), when it became the
/// oldest key and when it was deleted.
fn replay(events: &[Change]) -> BTreeMap<(Vec<u8>, i64), Incarnation> {
    let mut lives: BTreeMap<(Vec<u8>, i64), Incarnation> = BTreeMap::new();
    let mut live: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
    let mut create_of: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut i = 0;
    while i < events.len() {
        let revision = events[i].revision;
        while i < events.len() && events[i].revision == revision {
            let Change { kind, key, create, .. } = &events[i];
            match kind {
                EventType::Put => {
                    if !create_of.contains_key(key) {
                        create_of.insert(key.clone(), *create);
                        live.insert(*create, key.clone());
                        lives.entry((key.clone(), *create)).or_default();
                    }
                }
                EventType::Delete => {
                    let create = create_of.remove(key).expect("a deleted lock key existed");
                    live.remove(&create);
                    lives.get_mut(&(key.clone(), create)).expect("known incarnation").deleted = Some(revision);
                }
            }
            i += 1;
        }
        if let Some((&create, key)) = live.iter().next() {
            let life = lives.get_mut(&(key.clone(), create)).expect("known incarnation");
            life.oldest_from.get_or_insert(revision);
        }
    }
    lives
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_lock_across_a_leader_kill_keeps_tokens_increasing_and_holds_disjoint() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let record: Arc<Mutex<Record>> = Arc::default();

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut order = vec![0, 1, 2];
        order.rotate_left(c % 3);
        let client = cluster.client_for(&order).await;
        tasks.push(tokio::spawn(contend(c, client, stop.clone(), record.clone())));
    }
    let victim_client = cluster.client_for(&[1, 2, 0]).await;
    let revoker = cluster.client_for(&[2, 0, 1]).await;
    tasks.push(tokio::spawn(victim(victim_client, revoker, stop.clone(), record.clone())));

    tokio::time::sleep(KILL_AFTER).await;
    let grants_before_kill = record.lock().unwrap().grants.len();
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(RUN - KILL_AFTER).await;
    // Liveness, not speed: wait (bounded) until the lock changed hands after the kill.
    let deadline = tokio::time::Instant::now() + BOUND;
    while record.lock().unwrap().grants.len() <= grants_before_kill + 1 {
        assert!(tokio::time::Instant::now() < deadline, "the lock was never granted after the leader kill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        // A contender in a lock wait returns within its patience; bounded either way.
        let _ = tokio::time::timeout(BOUND, task).await.expect("contenders stop");
    }

    let live = cluster.live();
    let mut client = cluster.client_for(&live).await;
    let until = client.get("\0", None).await.expect("revision").header().unwrap().revision();
    let events = history(&mut client, &format!("{LOCK}/"), until).await;
    let counter_history = history(&mut client, COUNTER, until).await;
    let lives = replay(&events);
    let record = std::mem::take(&mut *record.lock().unwrap());
    assert!(grants_before_kill > 0, "no grant before the kill");

    // 1. Every grant was, at some revision, the oldest key: never granted to a dead waiter.
    let mut held: BTreeMap<i64, (Vec<u8>, i64, Option<i64>)> = BTreeMap::new();
    for grant in &record.grants {
        let life = lives
            .get(&(grant.key.clone(), grant.token))
            .unwrap_or_else(|| panic!("grant {grant:?} names no key incarnation in the store's history"));
        let from = life.oldest_from.unwrap_or_else(|| panic!("grant {grant:?} went to a key that never held the lock"));
        held.insert(from, (grant.key.clone(), grant.token, life.deleted));
    }
    // 2. In the store's revision order, tokens strictly increase and hold intervals are disjoint.
    let intervals: Vec<(i64, i64, Option<i64>)> =
        held.iter().map(|(from, (_, token, deleted))| (*from, *token, *deleted)).collect();
    for pair in intervals.windows(2) {
        let ((from_a, token_a, deleted_a), (from_b, token_b, _)) = (pair[0], pair[1]);
        assert!(token_a < token_b, "tokens must increase: {pair:?}");
        let deleted_a =
            deleted_a.unwrap_or_else(|| panic!("a holder followed by another was never released: {pair:?}"));
        assert!(from_a < deleted_a && deleted_a <= from_b, "hold intervals overlap: {pair:?}");
    }
    // 3. Every fenced write landed inside its writer's hold interval.
    let by_token: HashMap<i64, (i64, Option<i64>)> = held.iter().map(|(from, (_, t, d))| (*t, (*from, *d))).collect();
    for write in &record.writes {
        let (from, deleted) = by_token[&write.token];
        assert!(write.revision >= from && deleted.is_none_or(|d| write.revision < d), "{write:?} outside its hold");
    }
    // 4. No increment was lost: the counter's history counts 1, 2, 3, ... without a repeat (an
    //    increment whose reply was lost during the failover still shows up here).
    let counted: Vec<u64> =
        counter_history.iter().map(|c| String::from_utf8_lossy(&c.value).parse().expect("a number")).collect();
    assert!(counted.iter().enumerate().all(|(i, v)| *v == i as u64 + 1), "lost or repeated increments: {counted:?}");
    assert!(counted.len() >= record.writes.len());
    let counter_revisions: std::collections::HashSet<i64> = counter_history.iter().map(|c| c.revision).collect();
    assert!(record.writes.iter().all(|w| counter_revisions.contains(&w.revision)));
    // 5. An unlock's revision is the revision that deleted the key.
    for (key, token, revision) in &record.unlocks {
        assert_eq!(lives[&(key.clone(), *token)].deleted, Some(*revision));
    }
    // 6. Revoked victims: any victim grant came before its revoke (checked by 1, since a revoke
    //    deletes the key); and the wait of revoked victims did end in refusals.
    assert!(record.victims_refused > 0, "no victim was refused: {:?}", record.victims_revoked);
    for (lease, revoked) in &record.victims_revoked {
        let key = format!("{LOCK}/{lease:x}").into_bytes();
        for grant in record.grants.iter().filter(|g| g.key == key) {
            let from = lives[&(key.clone(), grant.token)].oldest_from.unwrap();
            assert!(from < *revoked, "victim {lease:x} granted at {from}, after its revoke at {revoked}");
        }
    }
    eprintln!(
        "{} grants ({} before the kill), {} fenced increments, {} unlocks, {} victims refused, {} history events",
        record.grants.len(),
        grants_before_kill,
        record.writes.len(),
        record.unlocks.len(),
        record.victims_refused,
        events.len()
    );
    let contenders_granted: std::collections::BTreeSet<usize> = record.grants.iter().map(|g| g.client).collect();
    assert!(contenders_granted.len() > 1, "only one contender ever held the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn observe_on_a_follower_follows_every_leader_across_a_leader_kill() {
    let mut cluster = Cluster::start(3, &[]).await;
    let raft_leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != raft_leader).collect();
    let (watcher_member, candidate_member) = (followers[0], followers[1]);

    let mut observer = cluster.client(watcher_member).await.observe("pilot").await.expect("observe");
    let mut candidates = cluster.client(candidate_member).await;
    let seen = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let reader = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(Some(resp)) = observer.message().await {
                let value = resp.kv().unwrap().value_str().unwrap().to_string();
                seen.lock().unwrap().push((value, resp.header().unwrap().revision()));
            }
        }
    });

    let leases: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(candidates.lease_grant(60, None).await.unwrap().id());
        }
        ids
    };
    let first = candidates.campaign("pilot", "one", leases[0]).await.expect("campaign").leader().unwrap().clone();
    let mut waiting = Vec::new();
    for (i, lease) in leases.iter().enumerate().skip(1) {
        let mut client = candidates.clone();
        let lease = *lease;
        let value = ["one", "two", "three", "four"][i];
        waiting.push(tokio::spawn(async move {
            client.campaign("pilot", value, lease).await.map(|mut r| r.take_leader().unwrap())
        }));
        // Queue strictly in order: wait until this candidacy's key exists.
        let key = format!("pilot/{lease:x}");
        let deadline = tokio::time::Instant::now() + BOUND;
        while candidates.get(key.as_str(), None).await.map(|r| r.count()).unwrap_or(0) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "candidate {value} never queued");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    cluster.kill(raft_leader);
    cluster.leader().await;
    let mut current = first;
    for next in waiting {
        // Resign is retried across the failover: the first attempts may find no leader.
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            match candidates.resign(Some(etcd_client::ResignOptions::new().with_leader(current.clone()))).await {
                Ok(_) => break,
                Err(err) => {
                    assert!(tokio::time::Instant::now() < deadline, "resign never succeeded: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        current = tokio::time::timeout(BOUND, next).await.expect("next leads").unwrap().expect("campaign");
    }
    let deadline = tokio::time::Instant::now() + BOUND;
    while seen.lock().unwrap().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "observer saw only {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    let values: Vec<&str> = seen.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(values, ["one", "two", "three", "four"]);
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "revision order: {seen:?}");
    reader.abort();

    // A new observer, as a client that lost its member opens on another one, first hears the
    // current leader.
    let mut fresh = cluster.client(candidate_member).await.observe("pilot").await.expect("observe again");
    let resp = tokio::time::timeout(BOUND, fresh.message()).await.expect("current leader").unwrap().unwrap();
    assert_eq!(resp.kv().unwrap().value(), b"four");
    assert_eq!(resp.kv().unwrap().create_revision(), current.rev());
}
