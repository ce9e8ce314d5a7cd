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
//!
//! The `ops` submodule sorts the history's operations out by kind; the rules on locks and
//! fences (`duplicate-fence`, `fence-order`, `overlapping-holders`, `write-after-release`) live in
//! `locks`, and the rules on lease expiry (`lease-expired-early`, `lease-never-expired`,
//! `no-final-listing`) in `expiry`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::checker::{Anomaly, CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, History, Op, Process};

mod expiry;
mod locks;
mod ops;
#[cfg(test)]
mod tests;

use expiry::{early_expiry, final_listing};
use locks::{duplicate_fences, fence_order, overlapping_holders, writes_after_release};
use ops::collect;

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
        Err(err) => return CheckResult::unreadable(CHECKER, &err),
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
