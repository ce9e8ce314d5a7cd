//! The watch workload's operations as the checker sees them: the puts and deletes, indexed for
//! matching them with the reference's changes, and the watches with their responses.
//!
//! Invariants:
//! - A write's revision and a delete's `deleted` flag are taken only from an `ok` completion; for
//!   any other outcome they are unknown.
//! - A watch carries responses only when it completed `ok` with them; the other watches are not
//!   checked, only counted.

use std::collections::HashMap;

use crate::history::{Event, EventType, Op, Pair, WatchResponse, WatchSpec};

/// A put or delete of the workload, with what its completion reported.
pub(super) struct Write<'a> {
    pair: Pair<'a>,
    pub(super) key: u64,
    /// The value put; `None` for a delete.
    pub(super) value: Option<u64>,
    pub(super) outcome: EventType,
    /// The revision an `ok` completion reported.
    pub(super) revision: Option<i64>,
    /// Whether an `ok` delete removed a key.
    pub(super) deleted: Option<bool>,
}

impl<'a> Write<'a> {
    /// The event that stands for the operation in an anomaly: its completion, or its invocation
    /// when the history ended first.
    pub(super) fn evidence(&self) -> &'a Event {
        self.pair.complete.unwrap_or(self.pair.invoke)
    }
}

/// The workload's writes, indexed for matching them with the reference's changes.
#[derive(Default)]
pub(super) struct Writes<'a> {
    pub(super) puts: Vec<Write<'a>>,
    pub(super) deletes: Vec<Write<'a>>,
    /// Positions in `puts` by value (values are meant to be unique; a repeat is tolerated).
    pub(super) puts_by_value: HashMap<u64, Vec<usize>>,
    /// Positions in `deletes` of `ok` deletes by (revision, key), unless they reported that
    /// nothing was deleted.
    pub(super) ok_deletes_at: HashMap<(i64, u64), usize>,
    /// How many deletes of each key have an unknown outcome: each may have made one change.
    pub(super) uncertain_deletes: HashMap<u64, usize>,
    /// The lowest and highest key written.
    pub(super) key_span: Option<(u64, u64)>,
}

impl<'a> Writes<'a> {
    pub(super) fn collect(pairs: &[Pair<'a>]) -> Self {
        let mut writes = Writes::default();
        for pair in pairs {
            let (key, value) = match &pair.invoke.op {
                Op::Put { key, value, .. } => (*key, Some(*value)),
                Op::Delete { key, .. } => (*key, None),
                _ => continue,
            };
            let outcome = pair.outcome();
            let (revision, deleted) = match pair.complete.map(|c| &c.op) {
                Some(Op::Put { revision, .. }) if outcome == EventType::Ok => (*revision, None),
                Some(Op::Delete { revision, deleted, .. }) if outcome == EventType::Ok => (*revision, *deleted),
                _ => (None, None),
            };
            writes.key_span = Some(writes.key_span.map_or((key, key), |(lo, hi)| (lo.min(key), hi.max(key))));
            let write = Write { pair: *pair, key, value, outcome, revision, deleted };
            match value {
                Some(value) => {
                    writes.puts_by_value.entry(value).or_default().push(writes.puts.len());
                    writes.puts.push(write);
                }
                None => {
                    match (outcome, revision) {
                        (EventType::Ok, Some(revision)) if deleted != Some(false) => {
                            writes.ok_deletes_at.insert((revision, key), writes.deletes.len());
                        }
                        (EventType::Info, _) => *writes.uncertain_deletes.entry(key).or_insert(0) += 1,
                        _ => {}
                    }
                    writes.deletes.push(write);
                }
            }
        }
        writes
    }

    pub(super) fn count(&self, writes: &[Write<'_>], outcome: EventType) -> usize {
        writes.iter().filter(|w| w.outcome == outcome).count()
    }
}

/// A watch operation of the history.
pub(super) struct WatchOp<'a> {
    /// The completion, or the invocation when there is none.
    pub(super) event: &'a Event,
    pub(super) spec: &'a WatchSpec,
    /// The responses, when the watch completed `ok` with them.
    pub(super) responses: Option<&'a [WatchResponse]>,
}

impl<'a> WatchOp<'a> {
    pub(super) fn of(pair: &Pair<'a>) -> Option<Self> {
        let Op::Watch { spec, .. } = &pair.invoke.op else { return None };
        let responses = match pair.complete {
            Some(Event { kind: EventType::Ok, op: Op::Watch { responses: Some(responses), .. }, .. }) => {
                Some(responses.as_slice())
            }
            _ => None,
        };
        Some(WatchOp { event: pair.complete.unwrap_or(pair.invoke), spec, responses })
    }
}
