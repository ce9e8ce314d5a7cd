//! What the watch checker records as it goes: the anomalies found (bounded per kind), the counts
//! for the stats, and the wording of events and values in explanations.
//!
//! Invariants:
//! - Every violation is counted, in `Findings::counts` and `Findings::total`, whether or not it is
//!   kept: at most [`MAX_ANOMALIES`] anomalies of each kind are kept, and an anomaly's description
//!   is only built while its kind is under that bound.
//! - Only a missing or partial reference (`no-reference`, `reference-incomplete`) makes the verdict
//!   `unknown`; every other kind proves a violation and makes it `invalid`.
//! - An anomaly's operations are listed in history order, each once.

use std::collections::BTreeMap;

use super::{NO_REFERENCE, REFERENCE_INCOMPLETE};
use crate::checker::{Anomaly, MAX_ANOMALIES, Validity};
use crate::history::{Event, WatchEvent};

/// The anomalies found so far: all counted, at most [`MAX_ANOMALIES`] of each kind kept.
pub(super) struct Findings {
    pub(super) anomalies: Vec<Anomaly>,
    pub(super) counts: BTreeMap<&'static str, usize>,
    pub(super) valid: Validity,
    /// Every violation found, of any kind.
    pub(super) total: usize,
}

impl Default for Findings {
    fn default() -> Self {
        Self { anomalies: Vec::new(), counts: BTreeMap::new(), valid: Validity::Valid, total: 0 }
    }
}

impl Findings {
    /// Counts a violation of `kind`; `describe` (the explanation and the operations proving it) is
    /// only called while the kind is under its bound, since cloning a watch's completion is costly.
    pub(super) fn report<'e>(&mut self, kind: &'static str, describe: impl FnOnce() -> (String, Vec<&'e Event>)) {
        let count = self.counts.entry(kind).or_insert(0);
        *count += 1;
        self.total += 1;
        // Missing or partial truth makes the verdict unknown; anything else proves a violation.
        let verdict =
            if kind == NO_REFERENCE || kind == REFERENCE_INCOMPLETE { Validity::Unknown } else { Validity::Invalid };
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

/// Counts for the stats.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) watches_checked: usize,
    pub(super) watches_ignored: usize,
    pub(super) watches_compacted: usize,
    pub(super) watches_invalid: usize,
    pub(super) events_received: usize,
    pub(super) progress_notifications: usize,
    pub(super) writes_unverified: usize,
    pub(super) events_unverified: usize,
}

/// An event as received, for explanations.
pub(super) fn describe_event(e: &WatchEvent) -> String {
    if e.delete {
        format!("delete of key {} at revision {}", e.key, e.mod_revision)
    } else {
        format!(
            "put of key {} = {} at revision {} (create revision {}, version {})",
            e.key,
            show(e.value),
            e.mod_revision,
            e.create_revision,
            e.version
        )
    }
}

pub(super) fn show(value: Option<u64>) -> String {
    value.map_or("nothing".to_string(), |v| v.to_string())
}

/// A previous value and mod revision, for explanations.
pub(super) fn show_prev((value, mod_revision): (Option<u64>, Option<i64>)) -> String {
    match (value, mod_revision) {
        (None, None) => "nothing (key absent)".to_string(),
        (value, Some(m)) => format!("value {} from revision {m}", show(value)),
        (value, None) => format!("value {} with no mod revision", show(value)),
    }
}
