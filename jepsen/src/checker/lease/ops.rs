//! The lease workload's operations sorted out by kind: every lease with its grant, refreshes,
//! observations that it is gone, keep-alives and revokes; every holder, applied guarded write and
//! release of a lock; and the final listing.
//!
//! Invariants:
//! - Arguments come from invocations and results from `ok` completions only (the lease id from
//!   any completion that carries one); `fail` operations add no evidence, and operations of
//!   unknown outcome are kept only where they may excuse (an unknown keep-alive may have
//!   refreshed its lease, an unknown revoke may have ended its lease, an unknown release its lock
//!   key).
//! - An `ok` completion lacking the results it must carry is counted in `Tally::malformed`
//!   rather than guessed at, and makes the verdict at best `unknown`.

use std::collections::{BTreeMap, HashMap};

use crate::history::{Event, EventType, Op, Pair, Process};

/// A moment a lease was certainly alive and, by its TTL, promised to live on: its grant, or a
/// keep-alive answering TTL > 0.
#[derive(Clone, Copy)]
pub(super) struct Refresh<'a> {
    /// When the request was sent: the refresh happened no earlier, so the lease must live at
    /// least until this plus its TTL.
    pub(super) invoked: u64,
    /// When the answer arrived: the refresh happened no later.
    pub(super) completed: u64,
    /// The completion.
    pub(super) event: &'a Event,
}

/// An observation that a lease no longer exists: a keep-alive answering TTL <= 0, or a guarded
/// write refused because the lock key attached to the lease vanished.
#[derive(Clone, Copy)]
pub(super) struct Observation<'a> {
    pub(super) invoked: u64,
    pub(super) completed: u64,
    /// The completion.
    pub(super) event: &'a Event,
}

/// The grant that named a lease.
#[derive(Clone, Copy)]
pub(super) struct Grant<'a> {
    /// The TTL asked for, in seconds.
    pub(super) ttl_s: i64,
    /// The completion that carried the lease's id.
    pub(super) event: &'a Event,
}

/// Everything the history says about one lease.
#[derive(Default)]
pub(super) struct Lease<'a> {
    /// The first grant that named the lease (a store handing one id out twice would be broken in
    /// other ways; its later grants still count as refreshes).
    pub(super) grant: Option<Grant<'a>>,
    /// Acknowledged refreshes, in no particular order.
    pub(super) refreshes: Vec<Refresh<'a>>,
    /// Observations that the lease is gone, in no particular order.
    pub(super) gone: Vec<Observation<'a>>,
    /// The largest TTL a keep-alive answered: the server may grant more than was asked for.
    pub(super) answered_ttl: Option<i64>,
    /// The keep-alive completion (`ok` with any answer, or `info`) that came last in time.
    pub(super) last_keepalive: Option<&'a Event>,
    /// A keep-alive whose completion the history lacks: it may refresh the lease at any time.
    pub(super) keepalive_outstanding: Option<&'a Event>,
    /// The earliest invocation of a revoke that did not fail: from then on the lease may be gone.
    pub(super) revoke_invoked: Option<&'a Event>,
    /// The earliest `ok` revoke completion: from then on the lease must be gone.
    pub(super) revoked: Option<&'a Event>,
}

/// An `ok` acquisition: a holder of a lock.
pub(super) struct Holder<'a> {
    pub(super) lock: u64,
    pub(super) lease: i64,
    pub(super) key: &'a str,
    pub(super) fence: i64,
    /// The revision at which the lock was granted.
    pub(super) granted: i64,
    pub(super) process: Process,
    /// The completion.
    pub(super) event: &'a Event,
}

/// An `ok` guarded write whose guard held.
pub(super) struct Write<'a> {
    pub(super) lock: u64,
    pub(super) key: &'a str,
    pub(super) fence: i64,
    pub(super) revision: i64,
    /// The completion.
    pub(super) event: &'a Event,
}

/// An `ok` release.
pub(super) struct Release<'a> {
    pub(super) lock: u64,
    pub(super) key: &'a str,
    pub(super) fence: i64,
    pub(super) revision: i64,
    /// The completion.
    pub(super) event: &'a Event,
}

/// The final listing of leases.
pub(super) struct Listing<'a> {
    pub(super) invoke: &'a Event,
    pub(super) done: &'a Event,
    pub(super) ids: &'a [i64],
}

/// Counts for the stats that no rule needs.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) grants: usize,
    pub(super) keepalives_ok: usize,
    pub(super) abandoned: usize,
    /// `ok` guarded writes whose guard failed (also observations that their lease is gone).
    pub(super) fenced_refused: usize,
    /// `ok` completions lacking the results they must carry.
    pub(super) malformed: usize,
}

/// The workload's operations, sorted out by kind.
#[derive(Default)]
pub(super) struct Collected<'a> {
    /// Every lease the history mentions, by id.
    pub(super) leases: BTreeMap<i64, Lease<'a>>,
    pub(super) holders: Vec<Holder<'a>>,
    pub(super) writes: Vec<Write<'a>>,
    pub(super) releases: Vec<Release<'a>>,
    /// Per (lock, key, fence), the earliest invocation of a release of unknown outcome: from then
    /// on the key may be gone.
    pub(super) unsure_releases: HashMap<(u64, &'a str, i64), u64>,
    /// The last `ok` listing that carries its leases.
    pub(super) listing: Option<Listing<'a>>,
    /// The last listing invoked, whatever its outcome.
    pub(super) listing_tried: Option<&'a Event>,
    /// How many lease-workload operations there are.
    pub(super) lease_ops: usize,
    pub(super) tally: Tally,
}

/// Sorts the lease-workload operations out; arguments come from invocations, results from `ok`
/// completions (and the lease id from any completion that carries one).
pub(super) fn collect<'a>(pairs: &[Pair<'a>]) -> Collected<'a> {
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
