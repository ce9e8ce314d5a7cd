//! Shrinking a key's non-linearizable operations to a small proof: the history is cut right
//! after the completion where the search got stuck, the front of the cut is trimmed, and the rest
//! is weakened one step at a time while it stays non-linearizable. The operation completing at
//! the cut is the culprit.
//!
//! Invariant: every transformation applied to a key's operations is either an equivalence
//! (dropping an unknown write or cas whose value no operation observes) or a weakening: any
//! linearization of the original is one of the result (dropping a read, turning an `ok` write or
//! cas into one of unknown outcome, cutting the history right after a completion). So the
//! operations reported for an anomaly are by themselves not linearizable, and they prove the
//! whole history is not. Every trimming and weakening step is checked with a search before it is
//! kept, so running out of budget only leaves the proof less small.

use std::collections::HashSet;
use std::ops::Range;

use super::KeyOp;
use super::search::{Budget, prune_unobserved};

/// The key's history cut right after history index `end`: operations invoked later are gone, and
/// operations still pending then are of unknown outcome (pending reads are dropped). A cut of a
/// linearizable history is linearizable: take the operations whose linearization point comes
/// before `end`.
pub(super) fn cut(ops: &[KeyOp], end: usize) -> Vec<KeyOp> {
    ops.iter()
        .filter(|op| op.call < end)
        .filter_map(|op| match op.ret {
            Some(ret) if ret > end => op.step.sets.is_some().then_some(KeyOp { ret: None, ..*op }),
            _ => Some(*op),
        })
        .collect()
}

/// One kind of weakening step of [`shrink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Weakening {
    /// Drop reads.
    DropReads,
    /// Turn completed writes and cas operations into ones of unknown outcome.
    Unconfirm,
}

/// Applies `weakening` to the operations at `range` (except the culprit), then drops the
/// operations of unknown outcome that nothing observes. `None` when there was nothing to weaken.
pub(super) fn weaken(ops: &[KeyOp], range: Range<usize>, culprit: usize, weakening: Weakening) -> Option<Vec<KeyOp>> {
    let mut changed = false;
    let mut weaker = Vec::with_capacity(ops.len());
    for (position, op) in ops.iter().enumerate() {
        let applies = range.contains(&position) && op.pair != culprit;
        match (weakening, op.step.sets, op.ret) {
            (Weakening::DropReads, None, _) if applies => changed = true,
            (Weakening::Unconfirm, Some(_), Some(_)) if applies => {
                weaker.push(KeyOp { ret: None, ..*op });
                changed = true;
            }
            _ => weaker.push(*op),
        }
    }
    changed.then(|| prune_unobserved(&weaker, Some(culprit)))
}

/// Weakens the first `count` operations (by invocation) except the culprit: reads are dropped, and
/// writes and cas operations whose value no later operation observes become unknown, and go if
/// nothing observes them at all. Writes that later operations observe stay as they are, because
/// a confirmed write usually makes a smaller proof than the reads that would pin it otherwise.
fn weaken_front(ops: &[KeyOp], count: usize, culprit: &KeyOp) -> Vec<KeyOp> {
    let (front, back) = ops.split_at(count);
    let observed: HashSet<Option<u64>> = back.iter().chain([culprit]).filter_map(|op| op.step.requires).collect();
    let mut weaker: Vec<KeyOp> = front
        .iter()
        .filter(|op| op.pair == culprit.pair || op.step.sets.is_some())
        .map(|op| match op.step.sets {
            Some(value) if op.pair != culprit.pair && !observed.contains(&Some(value)) => KeyOp { ret: None, ..*op },
            _ => *op,
        })
        .collect();
    weaker.extend_from_slice(back);
    prune_unobserved(&weaker, Some(culprit.pair))
}

/// Cuts off as much of the front of a non-linearizable history (ordered by invocation) as
/// possible with [`weaken_front`], keeping it non-linearizable: tries keeping the last 1, 2, 4,
/// ... operations, then bisects. Short attempts come first because proving a long history
/// non-linearizable is what costs (the search must exhaust it); proving one linearizable usually
/// takes one pass. How much can go is not strictly monotone in the cut, so this finds a good cut,
/// not necessarily the best one; every cut taken is checked.
fn trim_front(ops: Vec<KeyOp>, culprit: &KeyOp, budget: &mut Budget) -> Vec<KeyOp> {
    let total = ops.len();
    let attempt = |keep: usize, budget: &mut Budget| {
        let weaker = weaken_front(&ops, total - keep, culprit);
        budget.refutes(&weaker).then_some(weaker)
    };
    let mut too_few = 0;
    let mut keep = 1;
    let mut best = None;
    while keep < total {
        if let Some(weaker) = attempt(keep, budget) {
            best = Some(weaker);
            break;
        }
        too_few = keep;
        keep *= 2;
    }
    let mut high = keep.min(total);
    while high - too_few > 1 {
        let middle = too_few + (high - too_few) / 2;
        if let Some(weaker) = attempt(middle, budget) {
            best = Some(weaker);
            high = middle;
        } else {
            too_few = middle;
        }
    }
    best.unwrap_or(ops)
}

/// Shrinks a non-linearizable set of operations: after [`trim_front`], greedily weakens it while
/// it stays non-linearizable, first by dropping reads, then by making writes and cas operations
/// unknown (which drops those nothing observes any more), each in chunks that halve down to
/// single operations, as delta debugging does, so that what is left goes in a few searches.
///
/// Reads go first because a read pins down when an unknown write took effect: weakening the
/// writes first tends to keep the reads that pin them, a larger proof than keeping the writes
/// confirmed. Each phase ends one-minimal, and since a step that failed on a stronger history
/// fails on any weaker one, a single pass of each phase is enough. Every accepted step is a
/// checked weakening, so the result is always a proof; running out of budget only leaves it less
/// small.
pub(super) fn shrink(mut ops: Vec<KeyOp>, culprit: &KeyOp, budget: &mut Budget) -> Vec<KeyOp> {
    ops.sort_by_key(|op| op.call);
    let mut current = trim_front(ops, culprit, budget);
    let culprit = culprit.pair;
    for weakening in [Weakening::DropReads, Weakening::Unconfirm] {
        let mut chunk = (current.len() / 2).max(1);
        loop {
            let mut changed = false;
            let mut start = 0;
            while start < current.len() {
                if budget.remaining == 0 {
                    return current;
                }
                let end = (start + chunk).min(current.len());
                match weaken(&current, start..end, culprit, weakening) {
                    // What now sits at `start` has not been tried yet, so the position stays.
                    Some(weaker) if budget.refutes(&weaker) => {
                        current = weaker;
                        changed = true;
                    }
                    _ => start = end,
                }
            }
            if chunk == 1 && !changed {
                break;
            }
            chunk = (chunk / 2).max(1);
        }
    }
    current
}
