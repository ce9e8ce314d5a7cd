//! The rules on locks and their fencing tokens: `duplicate-fence`, `fence-order`,
//! `overlapping-holders` and `write-after-release` (see [`check`](super::check) for their precise
//! statements).
//!
//! Invariants:
//! - Every rule judges only revisions reported by `ok` completions, so every anomaly is a real
//!   violation; a release is held against a newer holder only when its revision must be that of
//!   deleting the older holder's key.
//! - Each rule looks at one lock at a time and reports each offending holder at most once, so that
//!   one bug does not flood its kind.
//! - The work is O(n log n): sorts, sweeps, binary searches and a Fenwick tree (`MinTree`) over
//!   the operations of one lock.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ops::{Collected, Holder, Release, Write};
use super::{DUPLICATE_FENCE, FENCE_ORDER, Findings, OVERLAPPING_HOLDERS, WRITE_AFTER_RELEASE, ttl_ns, who};
use crate::history::Process;

/// `duplicate-fence`: per (lock, fence), every holder after the first that differs from it in
/// key or process is reported once, with the first.
pub(super) fn duplicate_fences(data: &Collected<'_>, findings: &mut Findings) {
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
pub(super) fn fence_order(data: &Collected<'_>, findings: &mut Findings) {
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
pub(super) struct MinTree {
    slots: Vec<Option<(u64, usize)>>,
}

impl MinTree {
    pub(super) fn new(n: usize) -> Self {
        Self { slots: vec![None; n + 1] }
    }

    /// Lowers the value at `position` to `value` if that is less.
    pub(super) fn lower(&mut self, position: usize, value: (u64, usize)) {
        let mut i = position + 1;
        while i < self.slots.len() {
            if self.slots[i].is_none_or(|v| value < v) {
                self.slots[i] = Some(value);
            }
            i += i & i.wrapping_neg();
        }
    }

    /// The least value among positions `0..len`.
    pub(super) fn prefix_min(&self, len: usize) -> Option<(u64, usize)> {
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

/// `overlapping-holders`; see [`check`](super::check). Each older holder (lock, fence) is reported
/// at most once: by its latest write if that came after a newer holder was granted, else by its
/// release.
pub(super) fn overlapping_holders(data: &Collected<'_>, findings: &mut Findings) {
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
pub(super) fn writes_after_release(data: &Collected<'_>, findings: &mut Findings) {
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
