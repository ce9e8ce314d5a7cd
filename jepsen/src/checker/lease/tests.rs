//! Tests of the lease module: each named after the property it protects.
//!
//! Histories are written out event by event with explicit times (in milliseconds), so that each
//! test shows exactly which order and timing of operations it is about.

use std::time::Instant;

use super::locks::MinTree;
use super::*;
use crate::history::{EventType, Fault};
use EventType::{Fail, Info, Ok as Done};

/// A TTL used throughout, in seconds.
const TTL: i64 = 5;

/// Builds histories event by event, numbering them.
#[derive(Default)]
struct Builder {
    events: Vec<Event>,
}

impl Builder {
    fn push(&mut self, process: Process, ms: u64, kind: EventType, op: Op) -> usize {
        let index = self.events.len();
        let time_ns = ms * 1_000_000;
        self.events.push(Event { index, time_ns, process, kind, op, node: None, error: None });
        index
    }

    fn invoke(&mut self, process: u64, ms: u64, op: Op) -> usize {
        self.push(Process::Client(process), ms, EventType::Invoke, op)
    }

    fn complete(&mut self, process: u64, ms: u64, kind: EventType, op: Op) -> usize {
        self.push(Process::Client(process), ms, kind, op)
    }

    /// An operation invoked at `from` and completed at `to` with nothing in between; returns the
    /// completion's index.
    fn op(&mut self, process: u64, (from, to): (u64, u64), kind: EventType, invoked: Op, completed: Op) -> usize {
        self.invoke(process, from, invoked);
        self.complete(process, to, kind, completed)
    }

    /// A fault from `from` to `to`; returns the index of the last event (the heal's `ok`).
    fn fault(&mut self, from: u64, to: u64) -> usize {
        let fault = Fault { kind: "partition".into(), targets: vec!["n1".into()], detail: String::new() };
        self.push(Process::Nemesis, from, EventType::Invoke, Op::Start(fault.clone()));
        self.push(Process::Nemesis, from + 1, EventType::Ok, Op::Start(fault.clone()));
        self.push(Process::Nemesis, to, EventType::Invoke, Op::Stop(fault.clone()));
        self.push(Process::Nemesis, to + 1, EventType::Ok, Op::Stop(fault))
    }

    /// A grant of `lease` (TTL [`TTL`]) answered `ok`.
    fn grant(&mut self, process: u64, span: (u64, u64), lease: i64) -> usize {
        self.op(process, span, Done, grant(None), grant(Some(lease)))
    }

    /// A keep-alive of `lease` answered `ok` with `ttl`.
    fn keepalive(&mut self, process: u64, span: (u64, u64), lease: i64, ttl: i64) -> usize {
        self.op(process, span, Done, keepalive(lease, None), keepalive(lease, Some(ttl)))
    }

    /// An acquisition answered `ok`.
    fn acquire(&mut self, process: u64, span: (u64, u64), lock: u64, lease: i64, held: (&str, i64, i64)) -> usize {
        let (key, fence, revision) = held;
        self.op(process, span, Done, acquire(lock, lease, None), acquire(lock, lease, Some((key, fence, revision))))
    }

    /// A guarded write answered `ok`, applied or not, at `revision`.
    fn fenced(
        &mut self,
        process: u64,
        span: (u64, u64),
        holder: (u64, i64, &str, i64),
        applied: bool,
        revision: i64,
    ) -> usize {
        let (lock, lease, key, fence) = holder;
        self.op(process, span, Done, fenced(holder, None), fenced((lock, lease, key, fence), Some((applied, revision))))
    }

    /// A release answered `ok` at `revision`.
    fn release(&mut self, process: u64, span: (u64, u64), lock: u64, key: &str, fence: i64, revision: i64) -> usize {
        self.op(process, span, Done, release(lock, key, fence, None), release(lock, key, fence, Some(revision)))
    }

    fn revoke(&mut self, process: u64, span: (u64, u64), kind: EventType, lease: i64) -> usize {
        self.op(process, span, kind, Op::Revoke { lease }, Op::Revoke { lease })
    }

    fn abandon(&mut self, process: u64, ms: u64, lease: i64) -> usize {
        self.op(process, (ms, ms), Done, Op::Abandon { lease }, Op::Abandon { lease })
    }

    /// The final listing, answered `ok` with `ids`.
    fn listing(&mut self, process: u64, span: (u64, u64), ids: &[i64]) -> usize {
        self.op(process, span, Done, Op::Leases { ids: None }, Op::Leases { ids: Some(ids.to_vec()) })
    }

    fn history(self) -> History {
        History { events: self.events }
    }
}

fn grant(lease: Option<i64>) -> Op {
    Op::Grant { ttl_s: TTL, lease }
}

fn keepalive(lease: i64, ttl: Option<i64>) -> Op {
    Op::KeepAlive { lease, ttl }
}

fn acquire(lock: u64, lease: i64, held: Option<(&str, i64, i64)>) -> Op {
    Op::Acquire {
        lock,
        lease,
        key: held.map(|(key, _, _)| key.to_string()),
        fence: held.map(|(_, fence, _)| fence),
        revision: held.map(|(_, _, revision)| revision),
    }
}

fn fenced((lock, lease, key, fence): (u64, i64, &str, i64), result: Option<(bool, i64)>) -> Op {
    Op::Fenced {
        lock,
        lease,
        key: key.into(),
        fence,
        applied: result.map(|(applied, _)| applied),
        revision: result.map(|(_, revision)| revision),
    }
}

fn release(lock: u64, key: &str, fence: i64, revision: Option<i64>) -> Op {
    Op::Release { lock, key: key.into(), fence, revision }
}

/// The expiry bound used throughout.
const BOUND: Duration = Duration::from_secs(10);

fn kinds(result: &CheckResult) -> Vec<&str> {
    result.anomalies.iter().map(|a| a.kind.as_str()).collect()
}

fn op_indices(anomaly: &Anomaly) -> Vec<usize> {
    anomaly.ops.iter().map(|e| e.index).collect()
}

/// Asserts the result is invalid with exactly these anomalies, in order: (kind, indices cited).
fn expect_invalid(result: &CheckResult, expected: &[(&str, &[usize])]) {
    assert_eq!(result.valid, Validity::Invalid, "{result:#?}");
    let found: Vec<(&str, Vec<usize>)> = result.anomalies.iter().map(|a| (a.kind.as_str(), op_indices(a))).collect();
    let expected: Vec<(&str, Vec<usize>)> = expected.iter().map(|(k, ops)| (*k, ops.to_vec())).collect();
    assert_eq!(found, expected, "{result:#?}");
}

fn expect_valid(result: &CheckResult) {
    assert_eq!(result.valid, Validity::Valid, "{result:#?}");
    assert!(result.anomalies.is_empty(), "{result:#?}");
}

fn stat(result: &CheckResult, name: &str) -> u64 {
    result.stats[name].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn a_clean_history_with_handoffs_expiry_and_a_final_listing_is_valid() {
    let mut b = Builder::default();
    let (k1, k2, k3) = ("lock/0/1", "lock/0/2", "lock/1/3");
    // Worker 1 holds lock 0 (fence 10); worker 2 waits for it (its key is created at revision
    // 12) and gets it when worker 1 releases at revision 16.
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    b.fenced(1, (40, 50), (0, 1, k1, 10), true, 11);
    b.grant(2, (60, 70), 2);
    b.invoke(2, 80, acquire(0, 2, None));
    // Worker 3 holds lock 1 on lease 3.
    b.grant(3, (95, 100), 3);
    b.acquire(3, (110, 120), 1, 3, (k3, 13, 13));
    b.fenced(1, (130, 140), (0, 1, k1, 10), true, 14);
    b.fenced(3, (150, 160), (1, 3, k3, 13), true, 15);
    b.keepalive(101, (1600, 1610), 1, TTL);
    b.keepalive(103, (1700, 1705), 3, TTL);
    b.release(1, (1700, 1710), 0, k1, 10, 16);
    b.complete(2, 1720, Done, acquire(0, 2, Some((k2, 12, 16))));
    b.revoke(1, (1730, 1740), Done, 1);
    b.fenced(2, (1750, 1760), (0, 2, k2, 12), true, 17);
    b.keepalive(102, (1800, 1810), 2, TTL);
    // Worker 2 walks away from lease 2, which must now expire by itself.
    b.abandon(2, 1900, 2);
    // A partition cuts worker 3 off; its keep-alives stop working and lease 3 expires (at
    // revision 18), which worker 3 and its keep-alive process see only later than its TTL.
    b.fault(2000, 4000);
    b.invoke(103, 3400, keepalive(3, None));
    b.complete(103, 5400, Info, keepalive(3, None));
    b.keepalive(203, (7000, 7010), 3, 0);
    b.fenced(3, (7100, 7110), (1, 3, k3, 13), false, 18);
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_valid(&result);
    assert_eq!(result.checker, "lease");
    for (name, n) in [
        ("grants", 3),
        ("acquisitions", 3),
        ("fenced_applied", 4),
        ("fenced_refused", 1),
        ("releases", 1),
        ("keepalives_ok", 4),
        ("leases_observed_gone", 1),
        ("abandoned", 1),
        ("leases_listed", 0),
        ("unknown_leases_listed", 0),
        ("malformed", 0),
    ] {
        assert_eq!(stat(&result, name), n, "{name}: {:?}", result.stats);
    }
}

#[test]
fn two_holders_given_one_fence_are_caught() {
    let mut b = Builder::default();
    b.grant(1, (0, 10), 1);
    b.grant(2, (20, 30), 2);
    let first = b.acquire(1, (40, 50), 0, 1, ("lock/0/1", 10, 10));
    let second = b.acquire(2, (60, 70), 0, 2, ("lock/0/2", 10, 11));
    // The same holder told its fence twice is no anomaly, nor is the same fence on another lock.
    b.acquire(1, (80, 90), 0, 1, ("lock/0/1", 10, 10));
    b.acquire(3, (100, 110), 1, 2, ("lock/1/2", 10, 10));
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_invalid(&result, &[(DUPLICATE_FENCE, &[first, second])]);
    assert!(result.anomalies[0].explanation.contains("fence 10"), "{}", result.anomalies[0].explanation);
}

#[test]
fn an_older_holder_writing_after_a_newer_one_is_caught() {
    let mut b = Builder::default();
    let (k1, k2) = ("lock/0/1", "lock/0/2");
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    b.fenced(1, (40, 50), (0, 1, k1, 10), true, 11);
    b.grant(2, (60, 70), 2);
    // The store grants worker 2 while worker 1's key still exists.
    let granted = b.acquire(2, (80, 90), 0, 2, (k2, 12, 13));
    let newer = b.fenced(2, (100, 110), (0, 2, k2, 12), true, 14);
    let stale = b.fenced(1, (120, 130), (0, 1, k1, 10), true, 15);
    b.fenced(1, (140, 150), (0, 1, k1, 10), true, 16);
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    // The stale writes break both properties, each reported once for the stale holder: by its
    // first write after the newer one's, and by its latest write after the newer grant.
    let latest = stale + 2;
    expect_invalid(&result, &[(FENCE_ORDER, &[newer, stale]), (OVERLAPPING_HOLDERS, &[granted, latest])]);
    assert_eq!(result.stats["anomalies"][FENCE_ORDER], 1);
}

#[test]
fn a_holder_acting_after_the_next_was_granted_is_caught() {
    let mut b = Builder::default();
    let (k1, k2) = ("lock/0/1", "lock/0/2");
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    b.fenced(1, (40, 50), (0, 1, k1, 10), true, 11);
    b.grant(2, (60, 70), 2);
    let granted = b.acquire(2, (80, 90), 0, 2, (k2, 12, 13));
    // Worker 1 writes at revision 14, after worker 2 was granted at 13; worker 2 has not written.
    let write = b.fenced(1, (100, 110), (0, 1, k1, 10), true, 14);
    b.release(1, (120, 130), 0, k1, 10, 15);
    b.revoke(1, (140, 150), Done, 1);
    // Lock 1: the older holder's last write is at the very revision the newer one was granted
    // at; the rule asks for a later revision, so this is not judged.
    let (k3, k4) = ("lock/1/3", "lock/1/4");
    b.grant(3, (200, 210), 3);
    b.acquire(3, (220, 230), 1, 3, (k3, 20, 20));
    b.grant(4, (240, 250), 4);
    b.acquire(4, (260, 270), 1, 4, (k4, 21, 22));
    b.fenced(3, (280, 290), (1, 3, k3, 20), true, 22);
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    // One violation of one holder, reported once (by the write, not again by the release).
    expect_invalid(&result, &[(OVERLAPPING_HOLDERS, &[granted, write])]);
}

#[test]
fn a_holder_releasing_after_the_next_was_granted_is_caught() {
    let mut b = Builder::default();
    let (k1, k2) = ("lock/0/1", "lock/0/2");
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    b.fenced(1, (40, 50), (0, 1, k1, 10), true, 11);
    b.grant(2, (60, 70), 2);
    // Worker 2 is granted at revision 13 while lease 1 (granted at 0 ms, TTL 5 s) is certain to
    // live on, and worker 1's release deletes its key only at revision 14.
    let granted = b.acquire(2, (80, 200), 0, 2, (k2, 12, 13));
    let released = b.release(1, (250, 300), 0, k1, 10, 14);
    b.revoke(1, (310, 320), Done, 1);
    // Lock 1: lease 3's grant alone promises 6 s, but a keep-alive sent at 4 s promises 9 s, so
    // the newer holder, granted by 6 s, was granted while lease 3 was certain to live.
    b.grant(3, (1000, 1010), 3);
    b.acquire(3, (1020, 1030), 1, 3, ("lock/1/3", 20, 20));
    b.keepalive(103, (4000, 4010), 3, TTL);
    b.grant(4, (1040, 1050), 4);
    let granted_late = b.acquire(4, (1060, 6000), 1, 4, ("lock/1/4", 21, 22));
    let released_late = b.release(3, (6100, 6110), 1, "lock/1/3", 20, 23);
    b.revoke(3, (6200, 6210), Done, 3);
    // Lock 2: of two newer holders granted before the release, the first answered only after
    // lease 5's promise (7 s) ran out, the second well within it: the second proves the overlap.
    b.grant(5, (2000, 2010), 5);
    b.acquire(5, (2020, 2030), 2, 5, ("lock/2/5", 30, 30));
    b.grant(6, (2040, 2050), 6);
    b.acquire(6, (2060, 9000), 2, 6, ("lock/2/6", 31, 32));
    b.grant(7, (2100, 2110), 7);
    let granted_second = b.acquire(7, (2120, 2200), 2, 7, ("lock/2/7", 33, 34));
    let released_second = b.release(5, (2300, 2310), 2, "lock/2/5", 30, 35);
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_invalid(
        &result,
        &[
            (OVERLAPPING_HOLDERS, &[granted, released]),
            (OVERLAPPING_HOLDERS, &[granted_late, released_late]),
            (OVERLAPPING_HOLDERS, &[granted_second, released_second]),
        ],
    );
}

#[test]
fn a_release_after_signs_of_a_lost_key_is_not_an_overlap() {
    let mut b = Builder::default();
    // Lock 0: lease 1's keep-alives fail, so it may expire from 5 s on; worker 2 is granted at
    // 8 s, and worker 1's release, sent before, deletes nothing and answers the current revision.
    let (k1, k2) = ("lock/0/1", "lock/0/2");
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    b.fenced(1, (40, 50), (0, 1, k1, 10), true, 11);
    b.grant(2, (60, 70), 2);
    b.op(101, (1600, 3600), Fail, keepalive(1, None), keepalive(1, None));
    b.invoke(1, 4000, release(0, k1, 10, None));
    b.acquire(2, (7900, 8000), 0, 2, (k2, 12, 13));
    b.complete(1, 8100, Done, release(0, k1, 10, Some(14)));
    // Lock 1: lease 3 is certain to live until 19 s (a keep-alive sent at 14 s), but worker 3
    // saw its key gone (a refused write) before it released, so the release's revision says
    // nothing about when its key was deleted.
    let (k3, k4) = ("lock/1/3", "lock/1/4");
    b.grant(3, (10_000, 10_010), 3);
    b.acquire(3, (10_020, 10_030), 1, 3, (k3, 20, 20));
    b.invoke(103, 14_000, keepalive(3, None));
    b.fenced(3, (15_500, 15_510), (1, 3, k3, 20), false, 21);
    b.grant(4, (15_520, 15_530), 4);
    b.acquire(4, (15_540, 15_600), 1, 4, (k4, 22, 23));
    b.release(3, (15_700, 15_710), 1, k3, 20, 24);
    b.complete(103, 16_000, Done, keepalive(3, Some(TTL)));
    // Lock 2: the same with a keep-alive answering that lease 5 is gone as the sign of loss.
    b.grant(5, (20_000, 20_010), 5);
    b.acquire(5, (20_020, 20_030), 2, 5, ("lock/2/5", 40, 40));
    b.invoke(105, 24_000, keepalive(5, None));
    b.keepalive(205, (25_500, 25_510), 5, 0);
    b.grant(6, (25_520, 25_530), 6);
    b.acquire(6, (25_540, 25_600), 2, 6, ("lock/2/6", 41, 42));
    b.release(5, (25_700, 25_710), 2, "lock/2/5", 40, 43);
    b.complete(105, 26_000, Done, keepalive(5, Some(TTL)));
    // Lock 3: lease 7 may have been revoked (outcome unknown) before the newer holder was
    // granted.
    b.grant(7, (30_000, 30_010), 7);
    b.acquire(7, (30_020, 30_030), 3, 7, ("lock/3/7", 50, 50));
    b.revoke(17, (30_040, 30_050), Info, 7);
    b.grant(8, (30_060, 30_070), 8);
    b.acquire(8, (30_080, 30_090), 3, 8, ("lock/3/8", 51, 52));
    b.release(7, (30_100, 30_110), 3, "lock/3/7", 50, 53);
    // Lock 4: a release of unknown outcome may have deleted the key before the newer holder was
    // granted; the worker's second release, as a new process, then deleted nothing.
    b.grant(9, (40_000, 40_010), 9);
    b.acquire(9, (40_020, 40_030), 4, 9, ("lock/4/9", 60, 60));
    b.op(9, (40_040, 40_050), Info, release(4, "lock/4/9", 60, None), release(4, "lock/4/9", 60, None));
    b.grant(10, (40_060, 40_070), 10);
    b.acquire(10, (40_080, 40_090), 4, 10, ("lock/4/10", 61, 62));
    b.release(19, (40_100, 40_110), 4, "lock/4/9", 60, 63);
    // Lock 5: the key was released (revision 71) before the newer holder was granted (73); a
    // second release answering a later revision deleted nothing.
    b.grant(21, (50_000, 50_010), 11);
    b.acquire(21, (50_020, 50_030), 5, 11, ("lock/5/11", 70, 70));
    b.release(21, (50_040, 50_050), 5, "lock/5/11", 70, 71);
    b.grant(22, (50_060, 50_070), 12);
    b.acquire(22, (50_080, 50_090), 5, 12, ("lock/5/12", 72, 73));
    b.release(21, (50_100, 50_110), 5, "lock/5/11", 70, 74);
    b.listing(99, (90_000, 90_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_valid(&result);
}

#[test]
fn a_write_after_release_is_caught() {
    let mut b = Builder::default();
    let k1 = "lock/0/1";
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    b.fenced(1, (40, 50), (0, 1, k1, 10), true, 11);
    let released = b.release(1, (60, 70), 0, k1, 10, 12);
    let write = b.fenced(1, (80, 90), (0, 1, k1, 10), true, 13);
    // The same key acquired again is a new holder (a new fence): its writes are no anomaly.
    b.acquire(1, (100, 110), 0, 1, (k1, 14, 14));
    b.fenced(1, (120, 130), (0, 1, k1, 14), true, 15);
    b.release(1, (140, 150), 0, k1, 14, 16);
    b.revoke(1, (160, 170), Done, 1);
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_invalid(&result, &[(WRITE_AFTER_RELEASE, &[released, write])]);
}

#[test]
fn a_lease_gone_before_its_ttl_from_an_acknowledged_keepalive_is_caught() {
    let mut b = Builder::default();
    // Lease 1: refreshed by a keep-alive sent at 1.6 s, so alive until at least 6.6 s; gone at
    // 3.31 s.
    b.grant(1, (0, 10), 1);
    let refresh = b.keepalive(101, (1600, 1610), 1, TTL);
    let gone = b.keepalive(101, (3300, 3310), 1, 0);
    b.keepalive(101, (3400, 3410), 1, 0);
    // Lease 2: its grant, sent at 0.1 s, promises 5.1 s; worker 2's write is refused at 2.01 s
    // because its lock key vanished.
    let granted = b.grant(2, (100, 110), 2);
    b.acquire(2, (120, 130), 0, 2, ("lock/0/2", 10, 10));
    let refused = b.fenced(2, (2000, 2010), (0, 2, "lock/0/2", 10), false, 11);
    // Lease 3 was revoked (outcome unknown) before it was seen gone: no anomaly.
    b.grant(3, (200, 210), 3);
    b.revoke(3, (1000, 1500), Info, 3);
    b.keepalive(103, (2000, 2010), 3, 0);
    // Lease 4: the revoke that failed excuses nothing.
    let granted4 = b.grant(4, (300, 310), 4);
    b.revoke(4, (1000, 1010), Fail, 4);
    let gone4 = b.keepalive(104, (2000, 2010), 4, 0);
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_invalid(
        &result,
        &[
            (LEASE_EXPIRED_EARLY, &[refresh, gone]),
            (LEASE_EXPIRED_EARLY, &[granted, refused]),
            (LEASE_EXPIRED_EARLY, &[granted4, gone4]),
        ],
    );
    assert_eq!(stat(&result, "leases_observed_gone"), 4);
}

#[test]
fn a_lease_gone_after_keepalives_failed_is_not_an_anomaly() {
    let mut b = Builder::default();
    // Lease 1: the keep-alives fail or time out, so only the grant (sent at 0 s) counts; the
    // lease seen gone at 5.41 s is past its TTL.
    b.grant(1, (0, 10), 1);
    b.op(101, (1600, 1700), Fail, keepalive(1, None), keepalive(1, None));
    b.op(101, (3300, 5300), Info, keepalive(1, None), keepalive(1, None));
    b.keepalive(201, (5400, 5410), 1, 0);
    // Lease 2: a keep-alive sent at 1.7 s is answered only at 5 s, after the refused write was
    // sent (4 s), so it does not certainly precede the observation; the grant (sent at 0.1 s)
    // alone promises only 5.1 s, and the observation completed at 5.2 s.
    b.grant(2, (100, 110), 2);
    b.acquire(2, (120, 130), 0, 2, ("lock/0/2", 10, 10));
    b.invoke(102, 1700, keepalive(2, None));
    b.invoke(2, 4000, fenced((0, 2, "lock/0/2", 10), None));
    b.complete(102, 5000, Done, keepalive(2, Some(TTL)));
    b.complete(2, 5200, Done, fenced((0, 2, "lock/0/2", 10), Some((false, 11))));
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    expect_valid(&result);
    assert_eq!(stat(&result, "leases_observed_gone"), 2);
}

#[test]
fn an_abandoned_lease_still_listed_long_after_its_ttl_is_caught() {
    let mut b = Builder::default();
    let granted = b.grant(1, (0, 10), 1);
    let refresh = b.keepalive(101, (1600, 1610), 1, TTL);
    b.abandon(1, 2000, 1);
    // The last fault ends at 4.001 s: the lease should be gone by 4.001 + 5 + 10 s.
    let healed = b.fault(3000, 4000);
    // Lease 999 is nothing this history made: counted, not judged.
    let listed = b.listing(9, (30_000, 30_010), &[1, 999]);
    let result = check(&b.history(), BOUND);
    expect_invalid(&result, &[(LEASE_NEVER_EXPIRED, &[granted, refresh, healed, listed])]);
    assert_eq!(stat(&result, "leases_listed"), 2);
    assert_eq!(stat(&result, "unknown_leases_listed"), 1);
}

#[test]
fn a_lease_listed_within_the_bound_after_the_last_fault_is_not_an_anomaly() {
    let mut b = Builder::default();
    // Abandoned early, but a fault lasting until 20 s may have kept it alive (a new leader
    // extends every lease by its TTL); 20 + 5 + 10 s is after the listing.
    b.grant(1, (0, 10), 1);
    b.keepalive(101, (1600, 1610), 1, TTL);
    b.abandon(1, 2000, 1);
    b.fault(3000, 20_000);
    b.listing(9, (30_000, 30_010), &[1]);
    let result = check(&b.history(), BOUND);
    expect_valid(&result);
    assert_eq!(stat(&result, "leases_listed"), 1);
    assert_eq!(stat(&result, "leases_unjudged"), 0);

    // Without a fault, but the server answered a 30 s TTL to the 5 s asked for: the longer TTL is
    // the one in force, and 1.71 + 30 + 10 s is after the listing.
    let mut b = Builder::default();
    b.grant(2, (100, 110), 2);
    b.keepalive(102, (1700, 1710), 2, 30);
    b.abandon(2, 2000, 2);
    b.listing(9, (30_000, 30_010), &[2]);
    expect_valid(&check(&b.history(), BOUND));
}

#[test]
fn a_revoked_lease_still_listed_is_caught() {
    let mut b = Builder::default();
    b.grant(1, (0, 10), 1);
    let revoked = b.revoke(1, (2000, 2010), Done, 1);
    // Lease 2's revoke completed only after the listing was sent: the listing may precede it.
    b.grant(2, (100, 110), 2);
    b.invoke(2, 2400, Op::Revoke { lease: 2 });
    b.invoke(9, 2500, Op::Leases { ids: None });
    b.complete(2, 2505, Done, Op::Revoke { lease: 2 });
    let listed = b.complete(9, 2510, Done, Op::Leases { ids: Some(vec![1, 2]) });
    let result = check(&b.history(), BOUND);
    expect_invalid(&result, &[(LEASE_NEVER_EXPIRED, &[revoked, listed])]);
}

#[test]
fn without_a_final_listing_the_verdict_is_unknown() {
    let mut b = Builder::default();
    b.grant(1, (0, 10), 1);
    b.abandon(1, 100, 1);
    let history = b.history();
    let result = check(&history, BOUND);
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert_eq!(kinds(&result), [NO_FINAL_LISTING]);
    assert!(result.anomalies[0].ops.is_empty());

    // A listing that timed out is no listing either; it is cited.
    let mut b = Builder { events: history.events };
    let tried = b.invoke(9, 30_000, Op::Leases { ids: None });
    b.complete(9, 31_000, Info, Op::Leases { ids: Some(vec![]) });
    let result = check(&b.history(), BOUND);
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert_eq!(kinds(&result), [NO_FINAL_LISTING]);
    assert_eq!(op_indices(&result.anomalies[0]), [tried]);

    // A history without the lease workload needs no listing.
    let mut b = Builder::default();
    b.op(1, (0, 10), Done, Op::Read { key: 1, value: None }, Op::Read { key: 1, value: None });
    expect_valid(&check(&b.history(), BOUND));
}

#[test]
fn an_anomaly_without_a_final_listing_is_invalid() {
    let mut b = Builder::default();
    b.grant(1, (0, 10), 1);
    let refresh = b.keepalive(101, (1000, 1010), 1, TTL);
    let gone = b.keepalive(101, (2000, 2010), 1, 0);
    let result = check(&b.history(), BOUND);
    expect_invalid(&result, &[(LEASE_EXPIRED_EARLY, &[refresh, gone]), (NO_FINAL_LISTING, &[])]);
}

#[test]
fn info_operations_do_not_count_as_evidence() {
    let mut b = Builder::default();
    let (k1, k2) = ("lock/0/1", "lock/0/2");
    b.grant(1, (0, 10), 1);
    b.acquire(1, (20, 30), 0, 1, (k1, 10, 10));
    // An unknown acquisition claiming the same fence proves nothing.
    b.op(2, (40, 50), Info, acquire(0, 2, None), acquire(0, 2, Some((k2, 10, 11))));
    // An unknown write of an older fence at a later revision proves nothing.
    b.fenced(1, (60, 70), (0, 1, k1, 10), true, 12);
    b.op(3, (80, 90), Info, fenced((0, 3, "lock/0/3", 8), None), fenced((0, 3, "lock/0/3", 8), Some((true, 13))));
    // Nor does an unknown release before an applied write.
    b.op(1, (100, 110), Info, release(0, k1, 10, None), release(0, k1, 10, Some(11)));
    b.fenced(11, (120, 130), (0, 1, k1, 10), true, 14);
    // Nor an unknown keep-alive answering that the lease is gone.
    b.op(101, (200, 210), Info, keepalive(1, None), keepalive(1, Some(0)));
    // Nor an unknown revoke of a lease listed later, nor an unknown listing.
    b.revoke(11, (300, 310), Info, 1);
    b.op(9, (20_000, 20_010), Info, Op::Leases { ids: None }, Op::Leases { ids: Some(vec![1]) });
    // The keep-alive of unknown outcome may have refreshed lease 1 up to 20 s.
    b.op(201, (19_000, 20_000), Info, keepalive(1, None), keepalive(1, None));
    b.listing(10, (30_000, 30_010), &[1]);
    let result = check(&b.history(), BOUND);
    expect_valid(&result);
    assert_eq!(stat(&result, "acquisitions"), 1);
    assert_eq!(stat(&result, "fenced_applied"), 2);
    assert_eq!(stat(&result, "releases"), 0);
    assert_eq!(stat(&result, "keepalives_ok"), 0);
    assert_eq!(stat(&result, "leases_observed_gone"), 0);
}

#[test]
fn a_keepalive_still_outstanding_leaves_its_lease_unjudged() {
    let mut b = Builder::default();
    b.grant(1, (0, 10), 1);
    b.invoke(101, 1000, keepalive(1, None));
    b.listing(9, (30_000, 30_010), &[1]);
    let result = check(&b.history(), BOUND);
    expect_valid(&result);
    assert_eq!(stat(&result, "leases_unjudged"), 1);
}

#[test]
fn malformed_completions_do_not_panic_and_make_the_verdict_unknown() {
    let mut b = Builder::default();
    b.op(1, (0, 10), Done, grant(None), grant(None));
    b.op(1, (20, 30), Done, acquire(0, 1, None), acquire(0, 1, None));
    b.op(1, (40, 50), Done, fenced((0, 1, "k", 1), None), fenced((0, 1, "k", 1), None));
    b.op(1, (60, 70), Done, fenced((0, 1, "k", 1), None), fenced((0, 1, "k", 1), Some((true, 1))));
    if let Some(Event { op: Op::Fenced { revision, .. }, .. }) = b.events.last_mut() {
        *revision = None;
    }
    b.op(1, (80, 90), Done, release(0, "k", 1, None), release(0, "k", 1, None));
    b.op(101, (100, 110), Done, keepalive(1, None), keepalive(1, None));
    // Negative and absurd values are data, not reasons to panic.
    b.op(2, (120, 130), Done, Op::Grant { ttl_s: -5, lease: None }, Op::Grant { ttl_s: -5, lease: Some(-1) });
    b.op(
        2,
        (140, 150),
        Done,
        Op::Grant { ttl_s: i64::MAX, lease: None },
        Op::Grant { ttl_s: i64::MAX, lease: Some(2) },
    );
    b.keepalive(102, (160, 170), 2, 0);
    b.keepalive(102, (180, 190), -1, i64::MIN);
    let tried = b.invoke(9, 30_000, Op::Leases { ids: None });
    b.complete(9, 30_010, Done, Op::Leases { ids: None });
    let history = b.history();
    let result = check(&history, BOUND);
    // Lease 2's TTL runs to the end of time, so seeing it gone is early.
    assert_eq!(kinds(&result), [LEASE_EXPIRED_EARLY, NO_FINAL_LISTING], "{result:#?}");
    assert_eq!(op_indices(&result.anomalies[1]), [tried]);
    assert_eq!(stat(&result, "malformed"), 7);

    let mut events = history.events;
    events.retain(|e| !matches!(e.op, Op::Grant { ttl_s: i64::MAX, .. }));
    for (i, event) in events.iter_mut().enumerate() {
        event.index = i;
    }
    let result = check(&History { events }, BOUND);
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert_eq!(kinds(&result), [NO_FINAL_LISTING]);

    // One malformed completion in an otherwise clean history: unknown, not valid.
    let mut b = Builder::default();
    b.grant(1, (0, 10), 1);
    b.op(1, (20, 30), Done, acquire(0, 1, None), acquire(0, 1, Some(("k", 1, 1))));
    if let Some(Event { op: Op::Acquire { fence, .. }, .. }) = b.events.last_mut() {
        *fence = None;
    }
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert!(result.anomalies.is_empty(), "{result:#?}");
    assert_eq!(stat(&result, "malformed"), 1);

    // A completion nobody invoked breaks the pairing: unknown, with the reason.
    let mut b = Builder::default();
    b.complete(1, 0, Done, acquire(0, 1, Some(("k", 1, 1))));
    let result = check(&b.history(), BOUND);
    assert_eq!(result.valid, Validity::Unknown);
    assert!(result.anomalies.is_empty());
    assert!(result.stats["error"].as_str().is_some_and(|e| e.contains("nothing outstanding")), "{:?}", result.stats);
}

#[test]
fn anomalies_beyond_the_bound_are_counted_not_listed() {
    let mut b = Builder::default();
    for lock in 0..20u64 {
        let t = lock * 100;
        b.acquire(1, (t, t + 10), lock, 1, ("a", 10, 10));
        b.acquire(2, (t + 20, t + 30), lock, 2, ("b", 10, 11));
    }
    b.listing(9, (30_000, 30_010), &[]);
    let result = check(&b.history(), BOUND);
    assert_eq!(result.valid, Validity::Invalid);
    assert_eq!(result.anomalies.len(), MAX_ANOMALIES);
    assert_eq!(result.stats["anomalies"][DUPLICATE_FENCE], 20);
}

#[test]
fn a_history_of_fifty_thousand_events_is_checked_quickly() {
    let mut b = Builder::default();
    let mut revision = 0i64;
    let mut ms = 0u64;
    let mut round = 0u64;
    let mut leases = Vec::new();
    while b.events.len() < 50_000 {
        // Workers hand four locks over in turn; every tenth one abandons its lease.
        let (worker, lease, lock) = (1000 + round, i64::try_from(round).unwrap_or(0) + 1, round % 4);
        let key = format!("lock/{lock}/{lease}");
        b.grant(worker, (ms, ms + 1), lease);
        b.keepalive(worker + 1_000_000, (ms + 2, ms + 3), lease, TTL);
        revision += 1;
        let fence = revision;
        b.acquire(worker, (ms + 4, ms + 5), lock, lease, (&key, fence, fence));
        for step in 0..3 {
            revision += 1;
            b.fenced(worker, (ms + 6 + step, ms + 7 + step), (lock, lease, &key, fence), true, revision);
        }
        if round % 10 == 9 {
            b.abandon(worker, ms + 10, lease);
            leases.push(lease);
            revision += 1;
        } else {
            revision += 1;
            b.release(worker, (ms + 10, ms + 11), lock, &key, fence, revision);
            b.revoke(worker, (ms + 12, ms + 13), Done, lease);
        }
        ms += 20;
        round += 1;
    }
    b.listing(9, (ms + 100_000, ms + 100_010), &[]);
    let history = b.history();
    let started = Instant::now();
    let result = check(&history, BOUND);
    let took = started.elapsed();
    expect_valid(&result);
    assert_eq!(stat(&result, "acquisitions"), round);
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // The same history with every abandoned lease still listed: all caught, a few listed.
    let mut events = history.events;
    if let Some(Event { op: Op::Leases { ids }, .. }) = events.last_mut() {
        *ids = Some(leases.clone());
    }
    let result = check(&History { events }, BOUND);
    assert_eq!(result.valid, Validity::Invalid);
    assert_eq!(result.anomalies.len(), MAX_ANOMALIES);
    assert_eq!(result.stats["anomalies"][LEASE_NEVER_EXPIRED], leases.len());
}

#[test]
fn the_min_tree_agrees_with_a_scan() {
    // SplitMix64, so the test is a function of its seed.
    let mut state = 0x5eed_u64;
    let mut next = move |bound: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound
    };
    for n in 1..40usize {
        let mut tree = MinTree::new(n);
        let mut plain: Vec<Option<(u64, usize)>> = vec![None; n];
        for step in 0..200 {
            let position = usize::try_from(next(n as u64)).unwrap_or(0);
            let value = (next(1000), step);
            tree.lower(position, value);
            plain[position] = plain[position].min(Some(value)).or(Some(value));
            let len = usize::try_from(next(n as u64 + 2)).unwrap_or(0);
            let expected = plain.iter().take(len).flatten().min().copied();
            assert_eq!(tree.prefix_min(len), expected, "n {n}, step {step}, len {len}");
        }
    }
}
