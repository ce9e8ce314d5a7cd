//! Checker for the watch workload: etcd's watch guarantees, judged against a reference watch.
//!
//! Writer processes put unique values to a few numbered keys and delete them; watcher processes
//! open watch streams (`Op::Watch`) on key ranges and record every response they receive. At the
//! end, once the cluster has recovered, one watch marked `reference` reads every change from
//! revision 1; its events are taken as the true sequence of changes. The checker works in two
//! steps, following the watch validation of etcd's robustness tests:
//!
//! 1. The reference is checked on its own and against the writes (`reference-mismatch`,
//!    `lost-write`, `garbage-event`, `aborted-write`), and replayed to learn every key's state just
//!    before each change; see the `reference` submodule.
//! 2. Every other watch stream that completed `ok` with its responses is checked by the rules
//!    `filter`, `unordered`, `duplicate-event`, `non-atomic`, `progress-regression`,
//!    `event-before-progress`, `not-resumable`, `missed-event`, `bad-prev-kv` and `bad-event`
//!    (see [`check`], and the `stream` submodule). Comparing every watcher with the same reference
//!    is what makes watchers agree with each other.
//!
//! The `ops` submodule gathers the workload's writes and watches from the history, and `findings`
//! keeps the anomalies and the counts for the stats.
//!
//! Invariants:
//! - The verdict is `valid` only when there is a usable reference and it covers every revision
//!   the checks need. Without one the verdict is at best `unknown` (`no-reference`); an
//!   acknowledged write or a received event beyond the reference's last revision makes it at best
//!   `unknown` too (`reference-incomplete`), because the reference may simply have stopped early.
//! - Every violation is counted under exactly one kind (see the `stream` submodule for how
//!   overlapping rules are kept apart).
//! - The work is linear in the events received after one sort per stream.

use serde_json::{Map, Value};

use crate::checker::CheckResult;
use crate::history::{EventType, History};

mod findings;
mod ops;
mod reference;
mod stream;

use findings::{Findings, Tally};
use ops::{WatchOp, Writes};
use reference::{build_reference, check_writes};
use stream::{Stream, check_stream};

/// The checker's name, as it appears in its result.
const CHECKER: &str = "watch";

/// The reference's events are out of order, repeated, or inconsistent with each other.
const REFERENCE_MISMATCH: &str = "reference-mismatch";
/// An acknowledged put or delete is not in the reference where its completion said it was.
const LOST_WRITE: &str = "lost-write";
/// The reference holds a change that no invoked operation could have made.
const GARBAGE_EVENT: &str = "garbage-event";
/// The reference holds the value of a put that failed.
const ABORTED_WRITE: &str = "aborted-write";
/// A watcher received an event outside its key range or of a type it filtered out.
const FILTER: &str = "filter";
/// A watcher's events (or its responses' header revisions) went back in revision.
const UNORDERED: &str = "unordered";
/// A watcher received the same change twice.
const DUPLICATE_EVENT: &str = "duplicate-event";
/// A watcher received one revision's changes split across responses, or only some of them.
const NON_ATOMIC: &str = "non-atomic";
/// A progress notification went below an earlier one or below an event already received.
const PROGRESS_REGRESSION: &str = "progress-regression";
/// An event arrived after a progress notification that promised it had been delivered.
const EVENT_BEFORE_PROGRESS: &str = "event-before-progress";
/// A watch with a start revision did not begin with the first matching change at or after it.
const NOT_RESUMABLE: &str = "not-resumable";
/// A watcher never received a matching change within the revisions it covered.
const MISSED_EVENT: &str = "missed-event";
/// An event's previous value is wrong, or present although `prev_kv` was not requested.
const BAD_PREV_KV: &str = "bad-prev-kv";
/// An event's fields differ from the change the reference shows, or the reference has no such
/// change.
const BAD_EVENT: &str = "bad-event";
/// There is no usable reference watch, so nothing that needs one was checked.
const NO_REFERENCE: &str = "no-reference";
/// Some writes or received events lie outside the revisions the reference covers.
const REFERENCE_INCOMPLETE: &str = "reference-incomplete";

/// Checks the watch workload's operations in `history` against etcd's watch guarantees.
///
/// The reference is the first watch with `spec.reference` that completed `ok` with responses;
/// any other reference watch is checked like an ordinary one. Every other watch that completed
/// `ok` with responses is checked by these rules, each violation an anomaly of the named kind:
/// - `filter`: every event's key is in `[from_key, to_key)` and its type is not filtered out;
/// - `unordered`: event revisions never decrease along the stream, and the header revisions of
///   event-carrying responses never decrease and are never below their own events;
/// - `duplicate-event`: no (revision, key) arrives twice;
/// - `non-atomic`: a response never starts with the revision the previous one ended with, and a
///   revision the watcher saw is received whole;
/// - `progress-regression`: progress notifications never go below an earlier notification or an
///   event already received;
/// - `event-before-progress`: no event arrives at or below the last progress revision;
/// - `not-resumable`: with a start revision, the first event is at the revision of the first
///   matching change at or after it;
/// - `missed-event`: every matching change from the first expected revision (the start revision;
///   for a watch from "now", one past a leading progress notification, else the lowest revision
///   received) up to the last revision received or promised by a progress notification arrived;
/// - `bad-prev-kv`: with `prev_kv`, previous values and mod revisions are the key's state just
///   before the change (absent values are tolerated on a stream canceled for compaction); without
///   it, there are none;
/// - `bad-event`: value, create revision and version are those of the reference's change.
///
/// A response with no events that was not canceled is a progress notification; the response
/// acknowledging a watch's creation must therefore not be recorded. Watches that are `info` or
/// carry no responses, nemesis events and register or transaction operations are ignored. A
/// malformed history is `unknown`, with the reason in `stats.error`.
pub fn check(history: &History) -> CheckResult {
    let pairs = match history.client_pairs() {
        Ok(pairs) => pairs,
        Err(err) => return CheckResult::unreadable(CHECKER, &err),
    };
    let writes = Writes::collect(&pairs);
    let watches: Vec<WatchOp<'_>> = pairs.iter().filter_map(WatchOp::of).collect();
    let mut findings = Findings::default();
    let mut tally = Tally::default();

    let chosen = watches.iter().position(|w| w.spec.reference && w.responses.is_some());
    let reference = match chosen {
        Some(i) => match build_reference(&watches[i], &writes, &mut findings) {
            Ok(reference) => Some(reference),
            Err(reason) => {
                let watch = &watches[i];
                findings.report(NO_REFERENCE, || {
                    let text = format!("the reference watch at index {} is unusable: {reason}", watch.event.index);
                    (text, vec![watch.event])
                });
                None
            }
        },
        None => {
            let unusable = watches.iter().find(|w| w.spec.reference);
            findings.report(NO_REFERENCE, || match unusable {
                Some(watch) => (
                    format!(
                        "the reference watch at index {} did not complete ok with its responses, so the changes \
                         are unknown and nothing that needs them was checked",
                        watch.event.index
                    ),
                    vec![watch.event],
                ),
                None => (
                    "there is no reference watch, so the changes are unknown and nothing that needs them was \
                     checked"
                        .into(),
                    Vec::new(),
                ),
            });
            None
        }
    };
    if let Some(reference) = &reference {
        check_writes(reference, &writes, &mut findings, &mut tally);
    }

    for (i, watch) in watches.iter().enumerate() {
        if Some(i) == chosen {
            continue;
        }
        let Some(responses) = watch.responses else {
            tally.watches_ignored += 1;
            continue;
        };
        let before = findings.total;
        check_stream(
            &Stream { event: watch.event, spec: watch.spec, responses },
            reference.as_ref(),
            &mut findings,
            &mut tally,
        );
        tally.watches_checked += 1;
        if findings.total > before {
            tally.watches_invalid += 1;
        }
    }

    if let Some(reference) = &reference
        && (tally.writes_unverified > 0 || tally.events_unverified > 0)
    {
        findings.report(REFERENCE_INCOMPLETE, || {
            let text = format!(
                "the reference watch at index {} covers revisions {} to {} only; {} acknowledged writes and {} \
                 received events lie outside them and were not checked (the reference stopped early, or the \
                 store lost its latest revisions)",
                reference.event.index,
                reference.from,
                reference.coverage,
                tally.writes_unverified,
                tally.events_unverified
            );
            (text, vec![reference.event])
        });
    }

    let mut stats = Map::new();
    stats.insert("puts_ok".into(), Value::from(writes.count(&writes.puts, EventType::Ok)));
    stats.insert("puts_info".into(), Value::from(writes.count(&writes.puts, EventType::Info)));
    stats.insert("puts_fail".into(), Value::from(writes.count(&writes.puts, EventType::Fail)));
    stats.insert("deletes_ok".into(), Value::from(writes.count(&writes.deletes, EventType::Ok)));
    stats.insert("deletes_info".into(), Value::from(writes.count(&writes.deletes, EventType::Info)));
    stats.insert("deletes_fail".into(), Value::from(writes.count(&writes.deletes, EventType::Fail)));
    stats.insert("watches_checked".into(), Value::from(tally.watches_checked));
    stats.insert("watches_ignored".into(), Value::from(tally.watches_ignored));
    stats.insert("watches_compacted".into(), Value::from(tally.watches_compacted));
    stats.insert("watches_invalid".into(), Value::from(tally.watches_invalid));
    stats.insert("events_received".into(), Value::from(tally.events_received));
    stats.insert("progress_notifications".into(), Value::from(tally.progress_notifications));
    stats.insert("reference_index".into(), reference.as_ref().map_or(Value::Null, |r| Value::from(r.event.index)));
    stats.insert("reference_events".into(), Value::from(reference.as_ref().map_or(0, |r| r.changes.len())));
    stats.insert("reference_revision".into(), reference.as_ref().map_or(Value::Null, |r| Value::from(r.coverage)));
    stats.insert("writes_unverified".into(), Value::from(tally.writes_unverified));
    stats.insert("events_unverified".into(), Value::from(tally.events_unverified));
    let counts: Map<String, Value> = findings.counts.iter().map(|(k, n)| ((*k).to_string(), Value::from(*n))).collect();
    stats.insert("anomalies".into(), Value::Object(counts));
    CheckResult { checker: CHECKER.into(), valid: findings.valid, anomalies: findings.anomalies, stats }
}

#[cfg(test)]
mod tests;
