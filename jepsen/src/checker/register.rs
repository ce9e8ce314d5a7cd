//! Linearizability checker for a set of independent registers (the `read`/`write`/`cas`
//! workload).
//!
//! Each key is a register holding an `Option<u64>` that starts absent (`None`). Linearizability is
//! compositional over independent objects, so a history is linearizable exactly when every key's
//! sub-history is, and each key is checked on its own; that is what keeps the search small.
//!
//! How outcomes are read:
//! - `ok`: the operation took effect at one instant between its invocation and its completion;
//! - `fail`: it certainly did not take effect, so it is dropped;
//! - `info`, or no completion at all: it may have taken effect at any instant after its
//!   invocation, or never. An unknown read is dropped, since it constrains nothing.
//!
//! Real time is history order: operation A precedes B when A's completion comes before B's
//! invocation in the history.
//!
//! Per key the checker runs the Wing & Gong / Lowe search, as knossos and porcupine do (see the
//! `search` submodule). An invalid key is explained by a small set of its operations that is not
//! linearizable by itself, found by cutting the history where the search got stuck and weakening
//! what is left (the `minimize` submodule); the explanation says what the operation completing at
//! the cut observed and what it could have observed (the `explain` submodule).
//!
//! Invariants:
//! - A key is valid only when its search finished and found a linearization; a search that
//!   reaches [`Limits::max_states_per_key`] makes the key, and at best the whole history,
//!   unknown. The result is invalid as soon as one key is.
//! - The operations reported for an anomaly are by themselves not linearizable, and they prove
//!   the whole history is not (see the `minimize` submodule for why).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::checker::{CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{EventType, History, Op, Pair};

mod explain;
mod minimize;
mod search;

use explain::explain;
use search::{Verdict, search};

/// The checker's name, as it appears in its result.
const CHECKER: &str = "linearizable-register";

/// Bounds on the work the checker may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most distinct search configurations explored for one key before the key is declared
    /// unknown. Each invalid key may spend this much again on finding a minimal explanation.
    pub max_states_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_states_per_key: 2_000_000 }
    }
}

/// Checks that the register operations (`read`, `write`, `cas`) of `history` are linearizable,
/// key by key. Transactions and nemesis events are ignored. A malformed history is `unknown`,
/// with the reason in `stats.error`.
pub fn check(history: &History, limits: &Limits) -> CheckResult {
    let pairs = match history.client_pairs() {
        Ok(pairs) => pairs,
        Err(err) => return CheckResult::unreadable(CHECKER, &err),
    };
    let collected = collect(&pairs);
    let mut valid = Validity::Valid;
    let mut anomalies = Vec::new();
    let mut keys_invalid = 0usize;
    let mut unknown_keys = Vec::new();
    let mut states = 0usize;
    for (&key, ops) in &collected.keys {
        let outcome = search(ops, limits.max_states_per_key);
        states += outcome.states;
        match outcome.verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown => {
                unknown_keys.push(key);
                valid = valid.and(Validity::Unknown);
            }
            Verdict::NotLinearizable => {
                keys_invalid += 1;
                valid = Validity::Invalid;
                if anomalies.len() < MAX_ANOMALIES {
                    anomalies.push(explain(key, ops, outcome.furthest, &pairs, limits));
                }
            }
        }
    }
    let mut stats = Map::new();
    stats.insert("ops_checked".into(), Value::from(collected.keys.values().map(Vec::len).sum::<usize>()));
    stats.insert("keys".into(), Value::from(collected.keys.len()));
    stats.insert("keys_invalid".into(), Value::from(keys_invalid));
    stats.insert("keys_unknown".into(), Value::from(unknown_keys.len()));
    stats.insert("info_ops".into(), Value::from(collected.info));
    stats.insert("states_explored".into(), Value::from(states));
    stats.insert("dropped_failed".into(), Value::from(collected.failed));
    stats.insert("dropped_info_reads".into(), Value::from(collected.info_reads));
    stats.insert("unknown_keys".into(), Value::from(unknown_keys));
    CheckResult { checker: CHECKER.into(), valid, anomalies, stats }
}

/// What an operation did to its register, as the history reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Read this value.
    Read(Option<u64>),
    /// Wrote this value.
    Write(u64),
    /// Replaced `from` by `to`.
    Cas { from: u64, to: u64 },
}

/// An operation as the register model sees it: the value it needs the register to hold, if any,
/// and the value it leaves there, if it changes it. Reads only require, writes only set, a cas
/// does both. Every operation that requires something observes the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    requires: Option<Option<u64>>,
    sets: Option<u64>,
}

impl Step {
    fn of(kind: Kind) -> Self {
        match kind {
            Kind::Read(value) => Step { requires: Some(value), sets: None },
            Kind::Write(value) => Step { requires: None, sets: Some(value) },
            Kind::Cas { from, to } => Step { requires: Some(Some(from)), sets: Some(to) },
        }
    }

    /// The register's next value, or `None` when the operation is illegal in `state`.
    fn apply(self, state: Option<u64>) -> Option<Option<u64>> {
        if self.requires.is_some_and(|required| required != state) {
            return None;
        }
        Some(self.sets.or(state))
    }
}

/// One register operation of one key.
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// Position of its pair in the client pairs: the operation's identity.
    pair: usize,
    kind: Kind,
    step: Step,
    /// History index of the invocation.
    call: usize,
    /// History index of the `ok` completion; `None` when the outcome is unknown.
    ret: Option<usize>,
}

/// The register operations of a history, by key, with the counts of what was dropped.
struct Collected {
    keys: BTreeMap<u64, Vec<KeyOp>>,
    info: usize,
    failed: usize,
    info_reads: usize,
}

/// Sorts the register operations by key, dropping failed operations and unknown reads.
fn collect(pairs: &[Pair<'_>]) -> Collected {
    let mut collected = Collected { keys: BTreeMap::new(), info: 0, failed: 0, info_reads: 0 };
    for (id, pair) in pairs.iter().enumerate() {
        let (key, kind) = match &pair.invoke.op {
            Op::Read { key, .. } => {
                // The invocation carries no value; an `ok` completion carries what was read.
                let value = match pair.complete.map(|complete| &complete.op) {
                    Some(Op::Read { value, .. }) => *value,
                    _ => None,
                };
                (*key, Kind::Read(value))
            }
            Op::Write { key, value } => (*key, Kind::Write(*value)),
            Op::Cas { key, from, to } => (*key, Kind::Cas { from: *from, to: *to }),
            // Every other workload's operations, and the nemesis's, are not register operations.
            _ => {
                continue;
            }
        };
        let ret = match (pair.outcome(), pair.complete) {
            (EventType::Ok, Some(complete)) => Some(complete.index),
            (EventType::Fail, _) => {
                collected.failed += 1;
                continue;
            }
            _ if matches!(kind, Kind::Read(_)) => {
                collected.info_reads += 1;
                continue;
            }
            _ => {
                collected.info += 1;
                None
            }
        };
        let op = KeyOp { pair: id, kind, step: Step::of(kind), call: pair.invoke.index, ret };
        collected.keys.entry(key).or_default().push(op);
    }
    collected
}

#[cfg(test)]
mod tests;
