//! The rules on lease expiry: `lease-expired-early`, `lease-never-expired` and
//! `no-final-listing` (see [`check`](super::check) for their precise statements).
//!
//! Invariants:
//! - A lease is judged early only against refreshes answered before the observation was sent,
//!   and not at all when a revoke of it was invoked before the observation completed, so every
//!   report is a real violation.
//! - A listed lease is judged never expired when it was revoked before the listing, or against
//!   the longest TTL in force from the latest of its own refreshes and the last fault, plus the
//!   expiry bound, so slow expiry after faults is tolerated; leases whose TTL is unknown or with a
//!   keep-alive still outstanding are only counted.
//! - Without an `ok` final listing the expiry rules cannot be judged, which makes the verdict at
//!   best `unknown` (`no-final-listing`).

use std::collections::BTreeSet;
use std::time::Duration;

use super::ops::{Collected, Refresh};
use super::{Findings, LEASE_EXPIRED_EARLY, LEASE_NEVER_EXPIRED, NO_FINAL_LISTING, at, ttl_ns};
use crate::history::Event;

/// `lease-expired-early`; see [`check`](super::check). Each lease is reported at most once, by its
/// first observation (in history order) that came too soon.
pub(super) fn early_expiry(data: &Collected<'_>, findings: &mut Findings) {
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
pub(super) struct ListingTally {
    pub(super) listed: usize,
    pub(super) unknown: usize,
    pub(super) unjudged: usize,
}

/// `lease-never-expired` and `no-final-listing`; see [`check`](super::check).
pub(super) fn final_listing(
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
