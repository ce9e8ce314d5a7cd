//! Checker for the lease/lock workload: fencing tokens name one holder at a time, holders never
//! act after their successor was granted or after they released, and leases expire neither
//! before their TTL nor long after it.
//!
//! The workload: worker processes grant a lease (`Grant`), which a separate keep-alive process
//! refreshes every third of its TTL (`KeepAlive`); the worker acquires a numbered lock with it
//! (`Acquire`, etcd's Lock: the lock key's create revision is the holder's fencing token, the
//! `fence`), writes to the lock's resource several times in transactions guarded by the lock key
//! still having that create revision (`Fenced`), then either releases the lock and revokes the
//! lease (`Release`, `Revoke`) or abandons the lease (`Abandon`), which must then expire by
//! itself. At the very end, after the cluster recovered and every lease went unrefreshed for
//! longer than its TTL, one process lists the leases that still exist (`Leases`).
//!
//! What is checked, each violation an anomaly of the named kind:
//! - `duplicate-fence`: two acquisitions of one lock were given one fence by different holders
//!   (keys or processes);
//! - `fence-order`: on one lock, a guarded write of an older holder (lower fence) was applied at
//!   a later revision than one of a newer holder;
//! - `overlapping-holders`: a holder still wrote, or still held its key (by its release's
//!   revision), after a newer holder of the same lock was granted;
//! - `write-after-release`: a guarded write was applied at a revision after the holder's own
//!   release;
//! - `lease-expired-early`: a lease was seen gone before its TTL ran out from a refresh the
//!   server had acknowledged;
//! - `lease-never-expired`: the final listing holds a lease that was revoked, or that nothing
//!   refreshed for longer than its TTL plus the expiry bound (a parameter of [`check`]) after the
//!   last fault.
//!
//! Invariants:
//! - Only `ok` completions are evidence of what happened. `fail` operations are ignored, and
//!   operations of unknown outcome (`info`, or no completion) only ever excuse: an unknown
//!   keep-alive may have refreshed its lease, an unknown revoke may have ended it, but neither
//!   proves anything.
//! - Every rule is judged from facts the history proves (taking each `ok` completion's results
//!   to mean what [`Op`] documents), so every anomaly is a real violation;
//!   one bug may show under several kinds (a stale holder's write after its successor's usually
//!   breaks both `fence-order` and `overlapping-holders`), each kind being a different property.
//! - The verdict is `valid` only when the expiry rules could be judged: lease-workload operations
//!   without an `ok` final listing make it at best `unknown` (`no-final-listing`), and so does an
//!   `ok` completion lacking the results it must carry (counted in `stats.malformed`).
//! - At most [`MAX_ANOMALIES`] anomalies of each kind are reported; `stats.anomalies` counts all.
//! - The work is O(n log n): every rule is a sort, a sweep and binary searches over the
//!   operations of one lock or one lease.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::checker::{Anomaly, CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, EventType, History, Op, Pair, Process};

#[cfg(test)]
mod tests;

/// The checker's name, as it appears in its result.
const CHECKER: &str = "lease";

/// Two `ok` acquisitions of one lock were given the same fence but different keys or processes:
/// one fencing token names two holders.
const DUPLICATE_FENCE: &str = "duplicate-fence";
/// On one lock, an applied guarded write of fence `F'` came at a later revision than one of a
/// newer fence `F > F'`: an older holder acted after a newer one.
const FENCE_ORDER: &str = "fence-order";
/// A holder wrote at a revision after a newer holder of the same lock was granted, or its release
/// deleted its key after that: two holders at once.
const OVERLAPPING_HOLDERS: &str = "overlapping-holders";
/// A guarded write was applied at a revision after the `ok` release of the same lock key and
/// fence.
const WRITE_AFTER_RELEASE: &str = "write-after-release";
/// A lease was observed gone before its TTL ran out from a refresh the server had acknowledged.
const LEASE_EXPIRED_EARLY: &str = "lease-expired-early";
/// The final listing holds a lease that was revoked, or that outlived its TTL by more than the
/// expiry bound after the last fault.
const LEASE_NEVER_EXPIRED: &str = "lease-never-expired";
/// The lease workload ran but no final listing completed `ok`, so whether leases expired is
/// unknown. Makes the verdict at best `unknown`.
const NO_FINAL_LISTING: &str = "no-final-listing";

/// Nanoseconds per second, for TTLs.
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Checks the lease/lock operations of `history`; see the module documentation. Register,
/// transaction and watch operations are ignored; nemesis events only mark when faults ended. A
/// malformed history (pairing fails) is `unknown`, with the reason in `stats.error`.
///
/// `expiry_bound` is how long after a lease's TTL ran out, once no fault is active, expiry may
/// still take. A lease is not revoked the instant its deadline passes: the primary finds it on
/// its next expiry sweep and must commit the revocation through the log, and a leader elected
/// after the last fault first extends every lease by its full TTL (so that moving leadership
/// never expires a lease early). The bound covers the election, the sweep's period and the
/// commit. It must not exceed how long the workload waits, beyond the TTL, before its final
/// listing, or `lease-never-expired` could never fire; the workload's `EXPIRY_BOUND` is meant.
///
/// The rules, precisely (revisions are those reported by `ok` completions, times are the
/// events' `time_ns`):
/// - `duplicate-fence`: `ok` acquisitions with the same lock and fence have the same key and
///   process.
/// - `fence-order`: on one lock, applied writes sorted by revision have non-decreasing fences.
/// - `overlapping-holders`: for holders A and B of one lock with fence(A) < fence(B), B granted
///   at revision g: no applied write of A at a revision above g; and no `ok` release of A at a
///   revision above g, judged only when the release's revision must be that of deleting A's key:
///   A saw no sign of losing it before the release completed (no refused write, no keep-alive
///   answering TTL <= 0), and A's lease was certain to outlive B's grant (B's acquisition
///   completed before A's lease's latest acknowledged refresh plus its TTL, and before any revoke
///   of that lease was invoked). Otherwise the key may already have been gone, and an unlock
///   that deletes nothing answers the current revision.
/// - `write-after-release`: no applied write of a (lock, key, fence) at a revision above that of
///   an `ok` release of the same (lock, key, fence).
/// - `lease-expired-early`: for each observation that a lease is gone (a keep-alive answering TTL
///   <= 0, or a guarded write refused because the lock key vanished), with invocation time `o_i`
///   and completion time `o_c`: among the lease's acknowledged refreshes (its grant, keep-alives
///   answering TTL > 0) that completed before `o_i`, the latest invocation time `i` satisfies
///   `o_c >= i + TTL`, unless a revoke of the lease was invoked before `o_c`. The TTL is the one
///   asked for, which the server may only raise.
/// - `lease-never-expired`: a lease in the final listing was not revoked `ok` before the listing
///   was invoked, and the listing was invoked before `last + TTL + expiry_bound`, where `last` is
///   the latest of the lease's grant completion, its last keep-alive completion (of any answer, or
///   unknown outcome) and the last nemesis event, and the TTL is the largest of the one asked for
///   and those the keep-alives answered. Leases listed that the history never mentions are
///   counted in `stats.unknown_leases_listed`; leases whose TTL is unknown or with a keep-alive
///   still outstanding are counted in `stats.leases_unjudged`.
///
/// An acquisition's `revision` must be a revision at or after the one that granted the lock,
/// such as the header revision of a linearizable read made once Lock returned: an upper bound
/// keeps every `overlapping-holders` report sound, whereas the lock key's create revision (what a
/// contended Lock's response header may carry) would make a holder that still acts while its
/// successor waits look like an overlap.
pub fn check(history: &History, expiry_bound: Duration) -> CheckResult {
    let pairs = match history.pairs() {
        Ok(pairs) => pairs,
        Err(err) => {
            let mut stats = Map::new();
            stats.insert("error".into(), Value::from(err.to_string()));
            return CheckResult { checker: CHECKER.into(), valid: Validity::Unknown, anomalies: Vec::new(), stats };
        }
    };
    let data = collect(&pairs);
    // Every nemesis event, whatever its type, may be when a fault began or ended; the latest one
    // is the earliest moment the cluster is known to be whole again.
    let last_fault =
        history.events.iter().filter(|e| matches!(e.op, Op::Start(_) | Op::Stop(_))).max_by_key(|e| e.time_ns);

    let mut findings = Findings::default();
    duplicate_fences(&data, &mut findings);
    fence_order(&data, &mut findings);
    overlapping_holders(&data, &mut findings);
    writes_after_release(&data, &mut findings);
    early_expiry(&data, &mut findings);
    let listing = final_listing(&data, last_fault, expiry_bound, &mut findings);

    let tally = &data.tally;
    let mut stats = Map::new();
    stats.insert("grants".into(), Value::from(tally.grants));
    stats.insert("acquisitions".into(), Value::from(data.holders.len()));
    stats.insert("fenced_applied".into(), Value::from(data.writes.len()));
    stats.insert("fenced_refused".into(), Value::from(tally.fenced_refused));
    stats.insert("releases".into(), Value::from(data.releases.len()));
    stats.insert("keepalives_ok".into(), Value::from(tally.keepalives_ok));
    stats.insert("leases".into(), Value::from(data.leases.len()));
    stats.insert(
        "leases_observed_gone".into(),
        Value::from(data.leases.values().filter(|lease| !lease.gone.is_empty()).count()),
    );
    stats.insert("abandoned".into(), Value::from(tally.abandoned));
    stats
        .insert("final_listing_index".into(), data.listing.as_ref().map_or(Value::Null, |l| Value::from(l.done.index)));
    stats.insert("leases_listed".into(), Value::from(listing.listed));
    stats.insert("unknown_leases_listed".into(), Value::from(listing.unknown));
    stats.insert("leases_unjudged".into(), Value::from(listing.unjudged));
    stats.insert("malformed".into(), Value::from(tally.malformed));
    let counts: Map<String, Value> = findings.counts.iter().map(|(k, n)| ((*k).to_string(), Value::from(*n))).collect();
    stats.insert("anomalies".into(), Value::Object(counts));

    // An ok completion without its results means some rule could not be judged on it, so a clean
    // result proves nothing about it.
    let valid = if tally.malformed > 0 { findings.valid.and(Validity::Unknown) } else { findings.valid };
    CheckResult { checker: CHECKER.into(), valid, anomalies: findings.anomalies, stats }
}

/// The anomalies found so far: all counted, at most [`MAX_ANOMALIES`] of each kind kept.
struct Findings {
    anomalies: Vec<Anomaly>,
    counts: BTreeMap<&'static str, usize>,
    valid: Validity,
}

impl Default for Findings {
    fn default() -> Self {
        Self { anomalies: Vec::new(), counts: BTreeMap::new(), valid: Validity::Valid }
    }
}

impl Findings {
    /// Counts a violation of `kind`; `describe` (the explanation and the events proving it) is
    /// only called while the kind is under its bound.
    fn report<'e>(&mut self, kind: &'static str, describe: impl FnOnce() -> (String, Vec<&'e Event>)) {
        let count = self.counts.entry(kind).or_insert(0);
        *count += 1;
        // A missing listing only leaves the expiry rules unjudged; every other kind proves a
        // violation.
        let verdict = if kind == NO_FINAL_LISTING { Validity::Unknown } else { Validity::Invalid };
        self.valid = self.valid.and(verdict);
        if *count <= MAX_ANOMALIES {
            let (explanation, mut ops) = describe();
            ops.sort_by_key(|event| event.index);
            ops.dedup_by_key(|event| event.index);
            let ops = ops.into_iter().cloned().collect();
            self.anomalies.push(Anomaly { kind: kind.into(), explanation, ops });
        }
    }
}

/// A moment a lease was certainly alive and, by its TTL, promised to live on: its grant, or a
/// keep-alive answering TTL > 0.
#[derive(Clone, Copy)]
struct Refresh<'a> {
    /// When the request was sent: the refresh happened no earlier, so the lease must live at
    /// least until this plus its TTL.
    invoked: u64,
    /// When the answer arrived: the refresh happened no later.
    completed: u64,
    /// The completion.
    event: &'a Event,
}

/// An observation that a lease no longer exists: a keep-alive answering TTL <= 0, or a guarded
/// write refused because the lock key attached to the lease vanished.
#[derive(Clone, Copy)]
struct Observation<'a> {
    invoked: u64,
    completed: u64,
    /// The completion.
    event: &'a Event,
}

/// The grant that named a lease.
#[derive(Clone, Copy)]
struct Grant<'a> {
    /// The TTL asked for, in seconds.
    ttl_s: i64,
    /// The completion that carried the lease's id.
    event: &'a Event,
}

/// Everything the history says about one lease.
#[derive(Default)]
struct Lease<'a> {
    /// The first grant that named the lease (a store handing one id out twice would be broken in
    /// other ways; its later grants still count as refreshes).
    grant: Option<Grant<'a>>,
    /// Acknowledged refreshes, in no particular order.
    refreshes: Vec<Refresh<'a>>,
    /// Observations that the lease is gone, in no particular order.
    gone: Vec<Observation<'a>>,
    /// The largest TTL a keep-alive answered: the server may grant more than was asked for.
    answered_ttl: Option<i64>,
    /// The keep-alive completion (`ok` with any answer, or `info`) that came last in time.
    last_keepalive: Option<&'a Event>,
    /// A keep-alive whose completion the history lacks: it may refresh the lease at any time.
    keepalive_outstanding: Option<&'a Event>,
    /// The earliest invocation of a revoke that did not fail: from then on the lease may be gone.
    revoke_invoked: Option<&'a Event>,
    /// The earliest `ok` revoke completion: from then on the lease must be gone.
    revoked: Option<&'a Event>,
}

/// An `ok` acquisition: a holder of a lock.
struct Holder<'a> {
    lock: u64,
    lease: i64,
    key: &'a str,
    fence: i64,
    /// The revision at which the lock was granted.
    granted: i64,
    process: Process,
    /// The completion.
    event: &'a Event,
}

/// An `ok` guarded write whose guard held.
struct Write<'a> {
    lock: u64,
    key: &'a str,
    fence: i64,
    revision: i64,
    /// The completion.
    event: &'a Event,
}

/// An `ok` release.
struct Release<'a> {
    lock: u64,
    key: &'a str,
    fence: i64,
    revision: i64,
    /// The completion.
    event: &'a Event,
}

/// The final listing of leases.
struct Listing<'a> {
    invoke: &'a Event,
    done: &'a Event,
    ids: &'a [i64],
}

/// Counts for the stats that no rule needs.
#[derive(Default)]
struct Tally {
    grants: usize,
    keepalives_ok: usize,
    abandoned: usize,
    /// `ok` guarded writes whose guard failed (also observations that their lease is gone).
    fenced_refused: usize,
    /// `ok` completions lacking the results they must carry.
    malformed: usize,
}

/// The workload's operations, sorted out by kind.
#[derive(Default)]
struct Collected<'a> {
    /// Every lease the history mentions, by id.
    leases: BTreeMap<i64, Lease<'a>>,
    holders: Vec<Holder<'a>>,
    writes: Vec<Write<'a>>,
    releases: Vec<Release<'a>>,
    /// Per (lock, key, fence), the earliest invocation of a release of unknown outcome: from then
    /// on the key may be gone.
    unsure_releases: HashMap<(u64, &'a str, i64), u64>,
    /// The last `ok` listing that carries its leases.
    listing: Option<Listing<'a>>,
    /// The last listing invoked, whatever its outcome.
    listing_tried: Option<&'a Event>,
    /// How many lease-workload operations there are.
    lease_ops: usize,
    tally: Tally,
}

/// Sorts the lease-workload operations out; arguments come from invocations, results from `ok`
/// completions (and the lease id from any completion that carries one).
fn collect<'a>(pairs: &[Pair<'a>]) -> Collected<'a> {
    let mut data = Collected::default();
    for pair in pairs {
        let outcome = pair.outcome();
        let done = if outcome == EventType::Ok { pair.complete } else { None };
        let invoked = pair.invoke.time_ns;
        match &pair.invoke.op {
            Op::Grant { ttl_s, .. } => {
                data.lease_ops += 1;
                let Some(complete) = pair.complete else { continue };
                let Op::Grant { lease: Some(id), .. } = complete.op else {
                    // An unknown grant whose id never came back cannot be tracked.
                    data.tally.malformed += usize::from(outcome == EventType::Ok);
                    continue;
                };
                if outcome == EventType::Fail {
                    continue;
                }
                data.tally.grants += usize::from(outcome == EventType::Ok);
                let lease = data.leases.entry(id).or_default();
                lease.grant.get_or_insert(Grant { ttl_s: *ttl_s, event: complete });
                lease.refreshes.push(Refresh { invoked, completed: complete.time_ns, event: complete });
            }
            Op::KeepAlive { lease: id, .. } => {
                data.lease_ops += 1;
                let lease = data.leases.entry(*id).or_default();
                match (outcome, pair.complete) {
                    (EventType::Fail, _) => {}
                    (_, None) => {
                        lease.keepalive_outstanding.get_or_insert(pair.invoke);
                    }
                    (_, Some(complete)) => {
                        // Any keep-alive not known to have failed may have refreshed the lease up
                        // to its completion; a request still in flight after the client gave up
                        // can only be held up by a fault, and the last fault is counted anyway.
                        if lease.last_keepalive.is_none_or(|last| last.time_ns <= complete.time_ns) {
                            lease.last_keepalive = Some(complete);
                        }
                        if outcome != EventType::Ok {
                            continue;
                        }
                        data.tally.keepalives_ok += 1;
                        let Op::KeepAlive { ttl: Some(ttl), .. } = complete.op else {
                            data.tally.malformed += 1;
                            continue;
                        };
                        if ttl > 0 {
                            lease.answered_ttl = lease.answered_ttl.max(Some(ttl));
                            lease.refreshes.push(Refresh { invoked, completed: complete.time_ns, event: complete });
                        } else {
                            lease.gone.push(Observation { invoked, completed: complete.time_ns, event: complete });
                        }
                    }
                }
            }
            Op::Acquire { lock, lease, .. } => {
                data.lease_ops += 1;
                data.leases.entry(*lease).or_default();
                let Some(complete) = done else { continue };
                let Op::Acquire { key: Some(key), fence: Some(fence), revision: Some(granted), .. } = &complete.op
                else {
                    data.tally.malformed += 1;
                    continue;
                };
                data.holders.push(Holder {
                    lock: *lock,
                    lease: *lease,
                    key,
                    fence: *fence,
                    granted: *granted,
                    process: complete.process,
                    event: complete,
                });
            }
            Op::Fenced { lock, lease, key, fence, .. } => {
                data.lease_ops += 1;
                let entry = data.leases.entry(*lease).or_default();
                let Some(complete) = done else { continue };
                match complete.op {
                    Op::Fenced { applied: Some(true), revision: Some(revision), .. } => {
                        data.writes.push(Write { lock: *lock, key, fence: *fence, revision, event: complete });
                    }
                    Op::Fenced { applied: Some(false), .. } => {
                        data.tally.fenced_refused += 1;
                        entry.gone.push(Observation { invoked, completed: complete.time_ns, event: complete });
                    }
                    _ => data.tally.malformed += 1,
                }
            }
            Op::Release { lock, key, fence, .. } => {
                data.lease_ops += 1;
                if outcome == EventType::Info {
                    let first = data.unsure_releases.entry((*lock, key.as_str(), *fence)).or_insert(invoked);
                    *first = (*first).min(invoked);
                }
                let Some(complete) = done else { continue };
                let Op::Release { revision: Some(revision), .. } = complete.op else {
                    data.tally.malformed += 1;
                    continue;
                };
                data.releases.push(Release { lock: *lock, key, fence: *fence, revision, event: complete });
            }
            Op::Revoke { lease: id } => {
                data.lease_ops += 1;
                let lease = data.leases.entry(*id).or_default();
                if outcome == EventType::Fail {
                    continue;
                }
                if lease.revoke_invoked.is_none_or(|first| first.time_ns > invoked) {
                    lease.revoke_invoked = Some(pair.invoke);
                }
                if let Some(complete) = done
                    && lease.revoked.is_none_or(|first| first.time_ns > complete.time_ns)
                {
                    lease.revoked = Some(complete);
                }
            }
            Op::Abandon { lease } => {
                data.lease_ops += 1;
                data.leases.entry(*lease).or_default();
                data.tally.abandoned += 1;
            }
            Op::Leases { .. } => {
                data.lease_ops += 1;
                data.listing_tried = Some(pair.invoke);
                let Some(complete) = done else { continue };
                let Op::Leases { ids: Some(ids) } = &complete.op else {
                    data.tally.malformed += 1;
                    continue;
                };
                data.listing = Some(Listing { invoke: pair.invoke, done: complete, ids });
            }
            _ => {}
        }
    }
    data
}

/// A TTL in nanoseconds (a non-positive TTL counts as none).
fn ttl_ns(ttl_s: i64) -> u64 {
    u64::try_from(ttl_s).unwrap_or(0).saturating_mul(NANOS_PER_SEC)
}

/// A time since the test began, for explanations.
fn at(ns: u64) -> String {
    format!("{}.{:03}s", ns / NANOS_PER_SEC, ns % NANOS_PER_SEC / 1_000_000)
}

/// A client process, for explanations.
fn who(process: Process) -> String {
    match process {
        Process::Client(n) => format!("process {n}"),
        Process::Nemesis => "the nemesis".into(),
    }
}

/// `duplicate-fence`: per (lock, fence), every holder after the first that differs from it in
/// key or process is reported once, with the first.
fn duplicate_fences(data: &Collected<'_>, findings: &mut Findings) {
    let mut by_fence: BTreeMap<(u64, i64), Vec<&Holder<'_>>> = BTreeMap::new();
    for holder in &data.holders {
        by_fence.entry((holder.lock, holder.fence)).or_default().push(holder);
    }
    for ((lock, fence), mut group) in by_fence {
        group.sort_by_key(|h| h.event.index);
        let Some((first, rest)) = group.split_first() else { continue };
        let mut seen: HashSet<(&str, Process)> = HashSet::from([(first.key, first.process)]);
        for other in rest {
            if !seen.insert((other.key, other.process)) {
                continue;
            }
            findings.report(DUPLICATE_FENCE, || {
                let text = format!(
                    "the acquisitions of lock {lock} completing at index {} ({}, key {:?}) and at index {} ({}, key \
                     {:?}) were both given fence {fence}; a fencing token must name a single holder",
                    first.event.index,
                    who(first.process),
                    first.key,
                    other.event.index,
                    who(other.process),
                    other.key
                );
                (text, vec![first.event, other.event])
            });
        }
    }
}

/// Groups items by lock, keeping the locks in order.
fn by_lock<T>(items: &[T], lock: impl Fn(&T) -> u64) -> BTreeMap<u64, Vec<&T>> {
    let mut groups: BTreeMap<u64, Vec<&T>> = BTreeMap::new();
    for item in items {
        groups.entry(lock(item)).or_default().push(item);
    }
    groups
}

/// `fence-order`: per lock, the applied writes in revision order; a write whose fence is below
/// the highest fence written at a lower revision is reported, once per offending fence, with that
/// highest write.
fn fence_order(data: &Collected<'_>, findings: &mut Findings) {
    for (lock, mut writes) in by_lock(&data.writes, |w| w.lock) {
        writes.sort_by_key(|w| (w.revision, w.event.index));
        let mut newest: Option<&Write<'_>> = None;
        let mut reported: HashSet<i64> = HashSet::new();
        // Writes at one revision are judged against lower revisions only: "later" is strict.
        for same in writes.chunk_by(|a, b| a.revision == b.revision) {
            for &write in same {
                let Some(newer) = newest else { continue };
                if write.fence < newer.fence && reported.insert(write.fence) {
                    findings.report(FENCE_ORDER, || {
                        let text = format!(
                            "on lock {lock}, the write completing at index {} (fence {}) was applied at revision {}, \
                             after the write completing at index {} (fence {}) at revision {}: an older holder \
                             acted after a newer one",
                            write.event.index,
                            write.fence,
                            write.revision,
                            newer.event.index,
                            newer.fence,
                            newer.revision
                        );
                        (text, vec![newer.event, write.event])
                    });
                }
            }
            for &write in same {
                if newest.is_none_or(|n| write.fence > n.fence) {
                    newest = Some(write);
                }
            }
        }
    }
}

/// A Fenwick tree over positions `0..n` answering "the least value among the first `len`
/// positions", for values that only ever decrease.
struct MinTree {
    slots: Vec<Option<(u64, usize)>>,
}

impl MinTree {
    fn new(n: usize) -> Self {
        Self { slots: vec![None; n + 1] }
    }

    /// Lowers the value at `position` to `value` if that is less.
    fn lower(&mut self, position: usize, value: (u64, usize)) {
        let mut i = position + 1;
        while i < self.slots.len() {
            if self.slots[i].is_none_or(|v| value < v) {
                self.slots[i] = Some(value);
            }
            i += i & i.wrapping_neg();
        }
    }

    /// The least value among positions `0..len`.
    fn prefix_min(&self, len: usize) -> Option<(u64, usize)> {
        let mut i = len.min(self.slots.len().saturating_sub(1));
        let mut best: Option<(u64, usize)> = None;
        while i > 0 {
            if let Some(v) = self.slots[i]
                && best.is_none_or(|b| v < b)
            {
                best = Some(v);
            }
            i -= i & i.wrapping_neg();
        }
        best
    }
}

/// `overlapping-holders`; see [`check`]. Each older holder (lock, fence) is reported at most
/// once: by its latest write if that came after a newer holder was granted, else by its release.
fn overlapping_holders(data: &Collected<'_>, findings: &mut Findings) {
    let holders_by_lock = by_lock(&data.holders, |h| h.lock);
    // Each holder's latest write is the one most likely to follow a newer grant.
    let mut latest: BTreeMap<(u64, i64), &Write<'_>> = BTreeMap::new();
    for write in &data.writes {
        let slot = latest.entry((write.lock, write.fence)).or_insert(write);
        if write.revision > slot.revision {
            *slot = write;
        }
    }
    let mut reported: HashSet<(u64, i64)> = HashSet::new();

    // Rule 1: by fence, the earliest grant among the holders with a higher fence.
    for (&lock, holders) in &holders_by_lock {
        let mut by_fence = holders.clone();
        by_fence.sort_by_key(|h| (h.fence, h.granted));
        let mut earliest_after: Vec<&Holder<'_>> = by_fence.clone();
        for i in (0..earliest_after.len().saturating_sub(1)).rev() {
            if earliest_after[i + 1].granted < earliest_after[i].granted {
                earliest_after[i] = earliest_after[i + 1];
            }
        }
        for (&(_, fence), write) in latest.range((lock, i64::MIN)..=(lock, i64::MAX)) {
            let first_newer = by_fence.partition_point(|h| h.fence <= fence);
            let Some(newer) = earliest_after.get(first_newer) else { continue };
            if newer.granted >= write.revision {
                continue;
            }
            reported.insert((lock, fence));
            findings.report(OVERLAPPING_HOLDERS, || {
                let text = format!(
                    "on lock {lock}, the holder of fence {fence} still wrote at revision {} (index {}) after the holder \
                     of fence {} was granted the lock at revision {} (index {}): two holders at once",
                    write.revision, write.event.index, newer.fence, newer.granted, newer.event.index
                );
                (text, vec![write.event, newer.event])
            });
        }
    }

    // Rule 2: releases whose revision must be that of deleting the holder's key.
    let mut holder_of: HashMap<(u64, i64, &str), &Holder<'_>> = HashMap::new();
    for holder in &data.holders {
        holder_of.entry((holder.lock, holder.fence, holder.key)).or_insert(holder);
    }
    // Only a key's first release can have deleted it; a later one deletes nothing.
    let mut first_release: BTreeMap<(u64, &str, i64), &Release<'_>> = BTreeMap::new();
    for release in &data.releases {
        let slot = first_release.entry((release.lock, release.key, release.fence)).or_insert(release);
        if release.revision < slot.revision {
            *slot = release;
        }
    }
    let mut releases_by_lock: BTreeMap<u64, Vec<&Release<'_>>> = BTreeMap::new();
    for release in first_release.into_values() {
        releases_by_lock.entry(release.lock).or_default().push(release);
    }
    for (lock, releases) in releases_by_lock {
        let Some(holders) = holders_by_lock.get(&lock) else { continue };
        // Each candidate: the release, its holder, and the time before which a newer holder's
        // acquisition must have completed for the older lease to be certain to outlive it.
        let mut candidates: Vec<(&Release<'_>, &Holder<'_>, u64)> = Vec::new();
        for release in releases {
            if reported.contains(&(lock, release.fence)) {
                continue;
            }
            let Some(&holder) = holder_of.get(&(lock, release.fence, release.key)) else { continue };
            let Some(lease) = data.leases.get(&holder.lease) else { continue };
            let Some(grant) = lease.grant else { continue };
            // Signs of loss: the holder's lease seen gone (a keep-alive answering TTL <= 0, or one of
            // its guarded writes refused) before the release completed.
            let done = release.event.time_ns;
            if lease.gone.iter().any(|o| o.invoked < done) {
                continue;
            }
            let Some(refreshed) = lease.refreshes.iter().map(|r| r.invoked).max() else { continue };
            let mut deadline = refreshed.saturating_add(ttl_ns(grant.ttl_s));
            // A revoke, or a release of unknown outcome, may have deleted the key from its
            // invocation on.
            if let Some(revoke) = lease.revoke_invoked {
                deadline = deadline.min(revoke.time_ns);
            }
            if let Some(&unsure) = data.unsure_releases.get(&(lock, release.key, release.fence)) {
                deadline = deadline.min(unsure);
            }
            candidates.push((release, holder, deadline));
        }
        if candidates.is_empty() {
            continue;
        }
        // Sweep by revision: when a release is judged, every holder granted at a lower revision is
        // in the tree, at a position that puts higher fences first, with its completion time.
        candidates.sort_by_key(|(release, _, _)| (release.revision, release.event.index));
        let mut fences: Vec<i64> = holders.iter().map(|h| h.fence).collect();
        fences.sort_unstable();
        fences.dedup();
        let mut by_grant = holders.clone();
        by_grant.sort_by_key(|h| (h.granted, h.event.index));
        let mut tree = MinTree::new(fences.len());
        let mut next = 0;
        for (release, holder, deadline) in candidates {
            while let Some(newer) = by_grant.get(next)
                && newer.granted < release.revision
            {
                let rank = fences.partition_point(|&f| f < newer.fence);
                tree.lower(fences.len() - 1 - rank, (newer.event.time_ns, next));
                next += 1;
            }
            let higher = fences.len() - fences.partition_point(|&f| f <= release.fence);
            let Some((completed, slot)) = tree.prefix_min(higher) else { continue };
            let Some(newer) = by_grant.get(slot) else { continue };
            if completed >= deadline || !reported.insert((lock, release.fence)) {
                continue;
            }
            findings.report(OVERLAPPING_HOLDERS, || {
                let text = format!(
                    "on lock {lock}, the holder of fence {} released its key {:?} at revision {} (index {}), after \
                     the holder of fence {} was granted the lock at revision {} (index {}), although the older \
                     holder's lease {} was certain to outlive that grant and it had seen no sign of losing its key: \
                     two holders at once",
                    release.fence,
                    release.key,
                    release.revision,
                    release.event.index,
                    newer.fence,
                    newer.granted,
                    newer.event.index,
                    holder.lease
                );
                (text, vec![release.event, newer.event])
            });
        }
    }
}

/// `write-after-release`: per (lock, key, fence), the latest applied write against the earliest
/// `ok` release.
fn writes_after_release(data: &Collected<'_>, findings: &mut Findings) {
    let mut latest: HashMap<(u64, &str, i64), &Write<'_>> = HashMap::new();
    for write in &data.writes {
        let slot = latest.entry((write.lock, write.key, write.fence)).or_insert(write);
        if write.revision > slot.revision {
            *slot = write;
        }
    }
    let mut earliest: BTreeMap<(u64, &str, i64), &Release<'_>> = BTreeMap::new();
    for release in &data.releases {
        let slot = earliest.entry((release.lock, release.key, release.fence)).or_insert(release);
        if release.revision < slot.revision {
            *slot = release;
        }
    }
    for (key, release) in earliest {
        let Some(write) = latest.get(&key) else { continue };
        if write.revision <= release.revision {
            continue;
        }
        findings.report(WRITE_AFTER_RELEASE, || {
            let text = format!(
                "on lock {}, the holder of key {:?} with fence {} released it at revision {} (index {}), yet its \
                 guarded write was applied at revision {} (index {})",
                release.lock,
                release.key,
                release.fence,
                release.revision,
                release.event.index,
                write.revision,
                write.event.index
            );
            (text, vec![release.event, write.event])
        });
    }
}

/// `lease-expired-early`; see [`check`]. Each lease is reported at most once, by its first
/// observation (in history order) that came too soon.
fn early_expiry(data: &Collected<'_>, findings: &mut Findings) {
    for (&id, lease) in &data.leases {
        let Some(grant) = lease.grant else { continue };
        if lease.gone.is_empty() {
            continue;
        }
        let ttl = ttl_ns(grant.ttl_s);
        let mut refreshes = lease.refreshes.clone();
        refreshes.sort_by_key(|r| (r.completed, r.event.index));
        // latest[k]: among the first k + 1 refreshes by completion, the one invoked last.
        let mut latest: Vec<Refresh<'_>> = Vec::with_capacity(refreshes.len());
        for refresh in &refreshes {
            let best = match latest.last() {
                Some(prev) if prev.invoked >= refresh.invoked => *prev,
                _ => *refresh,
            };
            latest.push(best);
        }
        let mut gone = lease.gone.clone();
        gone.sort_by_key(|o| o.event.index);
        for observation in gone {
            // Only refreshes answered before the observation was sent certainly preceded it.
            let before = refreshes.partition_point(|r| r.completed < observation.invoked);
            let Some(refresh) = before.checked_sub(1).and_then(|k| latest.get(k)) else { continue };
            let promised = refresh.invoked.saturating_add(ttl);
            if observation.completed >= promised {
                continue;
            }
            // A revoke may have ended the lease at any time after its invocation.
            if lease.revoke_invoked.is_some_and(|revoke| revoke.time_ns < observation.completed) {
                continue;
            }
            findings.report(LEASE_EXPIRED_EARLY, || {
                let text = format!(
                    "lease {id} (TTL {}s) was refreshed by the request sent at {} and acknowledged at index {}, so it \
                     must have lived until at least {}; yet the operation completing at index {} ({}) saw it gone",
                    grant.ttl_s,
                    at(refresh.invoked),
                    refresh.event.index,
                    at(promised),
                    observation.event.index,
                    at(observation.completed)
                );
                (text, vec![refresh.event, observation.event])
            });
            break;
        }
    }
}

/// What the final listing showed, for the stats.
#[derive(Default)]
struct ListingTally {
    listed: usize,
    unknown: usize,
    unjudged: usize,
}

/// `lease-never-expired` and `no-final-listing`; see [`check`].
fn final_listing(
    data: &Collected<'_>,
    last_fault: Option<&Event>,
    expiry_bound: Duration,
    findings: &mut Findings,
) -> ListingTally {
    let mut tally = ListingTally::default();
    let Some(listing) = &data.listing else {
        if data.lease_ops > 0 {
            findings.report(NO_FINAL_LISTING, || match data.listing_tried {
                Some(tried) => (
                    format!(
                        "the final listing of leases invoked at index {} did not complete ok with its leases, so \
                         whether leases expired was not checked",
                        tried.index
                    ),
                    vec![tried],
                ),
                None => {
                    ("there is no final listing of leases, so whether leases expired was not checked".into(), vec![])
                }
            });
        }
        return tally;
    };
    let bound = u64::try_from(expiry_bound.as_nanos()).unwrap_or(u64::MAX);
    let asked = listing.invoke.time_ns;
    let listed: BTreeSet<i64> = listing.ids.iter().copied().collect();
    tally.listed = listed.len();
    for id in listed {
        let Some(lease) = data.leases.get(&id) else {
            tally.unknown += 1;
            continue;
        };
        if let Some(revoke) = lease.revoked
            && revoke.time_ns < asked
        {
            findings.report(LEASE_NEVER_EXPIRED, || {
                let text = format!(
                    "lease {id} was revoked (index {}, at {}), yet the final listing invoked at {} (index {}) still \
                     holds it",
                    revoke.index,
                    at(revoke.time_ns),
                    at(asked),
                    listing.done.index
                );
                (text, vec![revoke, listing.done])
            });
            continue;
        }
        // The longest TTL in force is the one that cannot give a false alarm.
        let ttl_s = lease.grant.map(|g| g.ttl_s).max(lease.answered_ttl);
        let (Some(ttl_s), None) = (ttl_s, lease.keepalive_outstanding) else {
            tally.unjudged += 1;
            continue;
        };
        let own = [lease.grant.map(|g| g.event), lease.last_keepalive];
        let refreshed = own.iter().flatten().map(|e| e.time_ns).max().unwrap_or(0);
        let fault_ended = last_fault.map_or(0, |e| e.time_ns);
        let last = refreshed.max(fault_ended);
        let due = last.saturating_add(ttl_ns(ttl_s)).saturating_add(bound);
        if asked < due {
            continue;
        }
        findings.report(LEASE_NEVER_EXPIRED, || {
            let mut ops: Vec<&Event> = own.iter().flatten().copied().collect();
            let mut text = format!("lease {id} (TTL {ttl_s}s) was last refreshed at {}", at(refreshed));
            if let Some(keepalive) = lease.last_keepalive {
                text.push_str(&format!(" (keep-alive completing at index {})", keepalive.index));
            } else if let Some(grant) = lease.grant {
                text.push_str(&format!(" (its grant, index {})", grant.event.index));
            }
            if let Some(fault) = last_fault
                && fault.time_ns > refreshed
            {
                text.push_str(&format!(
                    " and the last fault event was at {} (index {})",
                    at(fault.time_ns),
                    fault.index
                ));
                ops.push(fault);
            }
            ops.push(listing.done);
            text.push_str(&format!(
                ", yet the final listing invoked at {} (index {}) still holds it, more than its TTL plus the {} expiry \
                 bound later",
                at(asked),
                listing.done.index,
                at(bound)
            ));
            (text, ops)
        });
    }
    tally
}
