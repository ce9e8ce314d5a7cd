//! The anomaly reported for a non-linearizable key: its minimal proof (see the `minimize`
//! submodule) and an explanation of what the culprit observed and what, given the other
//! operations of the proof, it could have observed.
//!
//! Invariants:
//! - An anomaly's operations are the proof's, each named by its completion when `ok` and by its
//!   invocation otherwise, in history order.
//! - The values the culprit could have observed are found by searching, within a budget of
//!   `Limits::max_states_per_key` configurations; when a probe runs out of it, the explanation
//!   names no possible value.
//! - An explanation lists at most `MAX_LISTED` operations and summarises the rest.

use super::minimize::{cut, shrink};
use super::search::{Budget, Verdict};
use super::{KeyOp, Kind, Limits};
use crate::checker::Anomaly;
use crate::history::{Event, EventType, Pair};

/// How many operations an explanation lists before it summarises the rest.
const MAX_LISTED: usize = 12;

/// Builds the anomaly for a key whose operations are not linearizable, given the completion
/// where its search stopped making progress (see [`Outcome`](super::search::Outcome)): cuts the
/// history there, shrinks the operations before it to a minimal set that still is not
/// linearizable, and says what the operation completing there should have seen.
pub(super) fn explain(key: u64, ops: &[KeyOp], furthest: usize, pairs: &[Pair<'_>], limits: &Limits) -> Anomaly {
    let (proof, explanation) = match ops.iter().find(|op| op.ret == Some(furthest)) {
        Some(culprit) => {
            let mut budget = Budget { remaining: limits.max_states_per_key };
            let proof = shrink(cut(ops, furthest), culprit, &mut budget);
            let mut probes = Budget { remaining: limits.max_states_per_key };
            let explanation = describe(key, &proof, culprit, pairs, &mut probes);
            (proof, explanation)
        }
        None => (ops.to_vec(), format!("key {key}: no order of its operations is consistent with the register")),
    };
    let mut events: Vec<Event> = proof.iter().map(|op| reported_event(&pairs[op.pair]).clone()).collect();
    events.sort_by_key(|event| event.index);
    Anomaly { kind: "nonlinearizable".into(), explanation, ops: events }
}

/// The event that stands for an operation in a report: its completion when `ok`, else its
/// invocation.
fn reported_event<'a>(pair: &Pair<'a>) -> &'a Event {
    match pair.complete {
        Some(complete) if complete.kind == EventType::Ok => complete,
        _ => pair.invoke,
    }
}

/// A register value as explanations show it.
fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "nil".to_owned(), |value| value.to_string())
}

/// The explanation of a minimal proof: what the culprit observed, what it could have observed
/// given the other operations (found by replacing its expectation with each value some operation
/// of the proof sets, or nil), and those operations with their timing relative to it.
fn describe(key: u64, proof: &[KeyOp], culprit: &KeyOp, pairs: &[Pair<'_>], budget: &mut Budget) -> String {
    let index = |op: &KeyOp| reported_event(&pairs[op.pair]).index;
    let at = index(culprit);
    let observed = match culprit.kind {
        Kind::Read(value) => format!("read at index {at} returned {}", show(value)),
        Kind::Write(value) => format!("write {value} at index {at} completed"),
        Kind::Cas { from, to } => format!("cas {from}->{to} at index {at} succeeded"),
    };
    let others: Vec<&KeyOp> = proof.iter().filter(|op| op.pair != culprit.pair).collect();
    let mut text = format!("key {key}: {observed}, but ");
    match culprit.step.requires {
        None => text.push_str(&format!(
            "it cannot have taken effect between its invocation (index {}) and its completion",
            culprit.call
        )),
        Some(required) => {
            let mut values: Vec<Option<u64>> = others.iter().filter_map(|op| op.step.sets.map(Some)).collect();
            values.push(None);
            values.sort_unstable();
            values.dedup();
            values.retain(|&value| value != required);
            let mut possible = Vec::new();
            let mut sure = true;
            for value in values {
                let probe: Vec<KeyOp> = proof
                    .iter()
                    .map(|op| {
                        let mut op = *op;
                        if op.pair == culprit.pair {
                            op.step.requires = Some(value);
                        }
                        op
                    })
                    .collect();
                match budget.verdict(&probe) {
                    Verdict::Linearizable => possible.push(show(value)),
                    Verdict::NotLinearizable => {}
                    Verdict::Unknown => sure = false,
                }
            }
            if !sure {
                text.push_str("no order of the operations below allows that");
            } else if possible.is_empty() {
                text.push_str("no value it could have seen is consistent with the operations below");
            } else {
                let what = match culprit.kind {
                    Kind::Read(_) => "it could only have returned",
                    _ => "the register could only have held",
                };
                text.push_str(&format!("{what} {}", possible.join(" or ")));
            }
            if let Some(value) = required
                && !others.iter().any(|op| op.step.sets == Some(value))
            {
                text.push_str(&format!("; no write or cas invoked before it completed could have set {value}"));
            }
        }
    }
    if !others.is_empty() {
        let listed: Vec<String> = others
            .iter()
            .take(MAX_LISTED)
            .map(|op| {
                let what = match op.kind {
                    Kind::Read(value) => format!("read of {}", show(value)),
                    Kind::Write(value) => format!("write {value}"),
                    Kind::Cas { from, to } => format!("cas {from}->{to}"),
                };
                match op.ret {
                    Some(ret) if ret < culprit.call => {
                        format!("{what} (index {}, completed before it began)", index(op))
                    }
                    Some(_) => format!("{what} (index {}, concurrent with it)", index(op)),
                    None => format!("{what} (invoked at index {}, may have taken effect at any time after)", op.call),
                }
            })
            .collect();
        text.push_str("; given ");
        text.push_str(&listed.join(", "));
        if others.len() > MAX_LISTED {
            text.push_str(&format!(" and {} more", others.len() - MAX_LISTED));
        }
    }
    text
}
