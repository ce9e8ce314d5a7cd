//! Checker for the watch workload: etcd's watch guarantees, judged against a reference watch.
//!
//! Writer processes put unique values to a few numbered keys and delete them; watcher processes
//! open watch streams (`Op::Watch`) on key ranges and record every response they receive. At the
//! end, once the cluster has recovered, one watch marked `reference` reads every change from
//! revision 1; its events are taken as the true sequence of changes. The checker works in two
//! steps, following the watch validation of etcd's robustness tests:
//!
//! 1. The reference is checked on its own and against the writes. Its events must come in strictly
//!    increasing revisions, one event per key and revision, with create revisions and versions
//!    that follow from the changes before them (`reference-mismatch`); every `ok` put and every
//!    `ok` delete that removed a key must be in it at the revision its completion reported
//!    (`lost-write`); every event in it must have been made by an operation that was invoked and
//!    did not fail (`garbage-event`, `aborted-write`). Replaying it yields, for every change, the
//!    key's state just before it, which is what `prev_kv`, create revisions and versions are
//!    compared with.
//! 2. Every other watch stream that completed `ok` with its responses is checked by the rules
//!    `filter`, `unordered`, `duplicate-event`, `non-atomic`, `progress-regression`,
//!    `event-before-progress`, `not-resumable`, `missed-event`, `bad-prev-kv` and `bad-event`
//!    (see [`check`]). Comparing every watcher with the same reference is what makes watchers
//!    agree with each other.
//!
//! Invariants:
//! - The verdict is `valid` only when there is a usable reference and it covers every revision
//!   the checks need. Without one the verdict is at best `unknown` (`no-reference`); an
//!   acknowledged write or a received event beyond the reference's last revision makes it at best
//!   `unknown` too (`reference-incomplete`), because the reference may simply have stopped early.
//! - Every violation is counted under exactly one kind: an event that fails the stream's filter,
//!   or repeats an earlier one, is reported as such and not checked further; a change the watcher
//!   should have received but did not is `non-atomic` when it received other changes of the same
//!   revision and `missed-event` otherwise.
//! - The work is linear in the events received after one sort per stream: the reference is an
//!   array sorted by (revision, key), searched by bisection, and each stream's received events are
//!   merged with the reference's matching events in one pass.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::checker::{Anomaly, CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, EventType, History, Op, Pair, WatchEvent, WatchResponse, WatchSpec};

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
        Err(err) => {
            let mut stats = Map::new();
            stats.insert("error".into(), Value::from(err.to_string()));
            return CheckResult { checker: CHECKER.into(), valid: Validity::Unknown, anomalies: Vec::new(), stats };
        }
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

/// Whether an event of the given type on `key` is one the watch asked for.
fn wanted(spec: &WatchSpec, key: u64, delete: bool) -> bool {
    let type_wanted = if delete { !spec.no_delete } else { !spec.no_put };
    spec.from_key <= key && key < spec.to_key && type_wanted
}

/// The anomalies found so far: all counted, at most [`MAX_ANOMALIES`] of each kind kept.
struct Findings {
    anomalies: Vec<Anomaly>,
    counts: BTreeMap<&'static str, usize>,
    valid: Validity,
    /// Every violation found, of any kind.
    total: usize,
}

impl Default for Findings {
    fn default() -> Self {
        Self { anomalies: Vec::new(), counts: BTreeMap::new(), valid: Validity::Valid, total: 0 }
    }
}

impl Findings {
    /// Counts a violation of `kind`; `describe` (the explanation and the operations proving it) is
    /// only called while the kind is under its bound, since cloning a watch's completion is costly.
    fn report<'e>(&mut self, kind: &'static str, describe: impl FnOnce() -> (String, Vec<&'e Event>)) {
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
struct Tally {
    watches_checked: usize,
    watches_ignored: usize,
    watches_compacted: usize,
    watches_invalid: usize,
    events_received: usize,
    progress_notifications: usize,
    writes_unverified: usize,
    events_unverified: usize,
}

/// A put or delete of the workload, with what its completion reported.
struct Write<'a> {
    pair: Pair<'a>,
    key: u64,
    /// The value put; `None` for a delete.
    value: Option<u64>,
    outcome: EventType,
    /// The revision an `ok` completion reported.
    revision: Option<i64>,
    /// Whether an `ok` delete removed a key.
    deleted: Option<bool>,
}

impl<'a> Write<'a> {
    /// The event that stands for the operation in an anomaly: its completion, or its invocation
    /// when the history ended first.
    fn evidence(&self) -> &'a Event {
        self.pair.complete.unwrap_or(self.pair.invoke)
    }
}

/// The workload's writes, indexed for matching them with the reference's changes.
#[derive(Default)]
struct Writes<'a> {
    puts: Vec<Write<'a>>,
    deletes: Vec<Write<'a>>,
    /// Positions in `puts` by value (values are meant to be unique; a repeat is tolerated).
    puts_by_value: HashMap<u64, Vec<usize>>,
    /// Positions in `deletes` of `ok` deletes by (revision, key), unless they reported that
    /// nothing was deleted.
    ok_deletes_at: HashMap<(i64, u64), usize>,
    /// How many deletes of each key have an unknown outcome: each may have made one change.
    uncertain_deletes: HashMap<u64, usize>,
    /// The lowest and highest key written.
    key_span: Option<(u64, u64)>,
}

impl<'a> Writes<'a> {
    fn collect(pairs: &[Pair<'a>]) -> Self {
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

    fn count(&self, writes: &[Write<'_>], outcome: EventType) -> usize {
        writes.iter().filter(|w| w.outcome == outcome).count()
    }
}

/// A watch operation of the history.
struct WatchOp<'a> {
    /// The completion, or the invocation when there is none.
    event: &'a Event,
    spec: &'a WatchSpec,
    /// The responses, when the watch completed `ok` with them.
    responses: Option<&'a [WatchResponse]>,
}

impl<'a> WatchOp<'a> {
    fn of(pair: &Pair<'a>) -> Option<Self> {
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

/// One change of the reference, with what replaying the changes before it implies.
struct Change<'a> {
    revision: i64,
    key: u64,
    delete: bool,
    /// The value put (`None` for a delete).
    value: Option<u64>,
    /// The create revision and version the change must carry (0 for a delete), derived from the
    /// changes before it rather than copied from the reference's event.
    create_revision: i64,
    version: i64,
    /// The key's value and mod revision just before the change; `None` when it did not exist.
    prev: Option<(Option<u64>, i64)>,
    /// The operation that made the change, when it can be named.
    writer: Option<&'a Event>,
}

impl Change<'_> {
    fn describe(&self) -> String {
        if self.delete {
            format!("delete of key {} at revision {}", self.key, self.revision)
        } else {
            format!(
                "put of key {} = {} at revision {} (create revision {}, version {})",
                self.key,
                show(self.value),
                self.revision,
                self.create_revision,
                self.version
            )
        }
    }

    /// The previous value and mod revision a `prev_kv` event of this change carries.
    fn expected_prev(&self) -> (Option<u64>, Option<i64>) {
        self.prev.map_or((None, None), |(value, mod_revision)| (value, Some(mod_revision)))
    }
}

/// The true sequence of changes, from the reference watch.
struct Reference<'a> {
    /// The reference watch's completion.
    event: &'a Event,
    /// Its start revision: nothing is known of the changes before it.
    from: i64,
    /// The highest revision it covers: its last event's, or its last progress notification's.
    coverage: i64,
    /// Sorted by (revision, key), at most one change per (revision, key).
    changes: Vec<Change<'a>>,
}

impl<'a> Reference<'a> {
    fn covers(&self, revision: i64) -> bool {
        self.from <= revision && revision <= self.coverage
    }

    fn find(&self, revision: i64, key: u64) -> Option<&Change<'a>> {
        let at = self.changes.partition_point(|c| (c.revision, c.key) < (revision, key));
        self.changes.get(at).filter(|c| c.revision == revision && c.key == key)
    }

    /// The changes with revisions in `first..=last`.
    fn between(&self, first: i64, last: i64) -> &[Change<'a>] {
        let lo = self.changes.partition_point(|c| c.revision < first);
        let hi = self.changes.partition_point(|c| c.revision <= last).max(lo);
        &self.changes[lo..hi]
    }
}

/// A key's state while the reference is replayed.
#[derive(Clone, Copy)]
struct KeyState {
    value: Option<u64>,
    create_revision: i64,
    version: i64,
    mod_revision: i64,
}

/// Checks the reference on its own, replays it, and names the writer of each change; returns why
/// it cannot serve as the truth when it cannot.
fn build_reference<'a>(
    watch: &WatchOp<'a>,
    writes: &Writes<'a>,
    findings: &mut Findings,
) -> Result<Reference<'a>, String> {
    let spec = watch.spec;
    let responses = watch.responses.unwrap_or_default();
    let event = watch.event;
    if let Some(canceled) = responses.iter().find(|r| r.canceled && r.compact_revision > 0) {
        return Err(format!("its start revision was compacted (compact revision {})", canceled.compact_revision));
    }
    if spec.start_revision <= 0 {
        return Err("it starts from the current revision, not from a fixed one".into());
    }
    if spec.no_put || spec.no_delete {
        return Err("it filters out puts or deletes".into());
    }
    if let Some((lo, hi)) = writes.key_span
        && (lo < spec.from_key || hi >= spec.to_key)
    {
        return Err(format!(
            "its keys [{}, {}) do not include every key written ({lo} to {hi})",
            spec.from_key, spec.to_key
        ));
    }

    // Walk the stream: revisions strictly increase from one response to the next and never
    // decrease within one; the events are gathered with their positions for the replay.
    let mut raw: Vec<&WatchEvent> = Vec::new();
    let mut coverage = spec.start_revision - 1;
    let mut previous_last: Option<i64> = None;
    let mut previous: Option<i64> = None;
    for (i, response) in responses.iter().enumerate() {
        if response.events.is_empty() {
            if !response.canceled {
                coverage = coverage.max(response.revision);
            }
            continue;
        }
        let first = response.events[0].mod_revision;
        if let Some(last) = previous_last
            && first <= last
        {
            findings.report(REFERENCE_MISMATCH, || {
                let text = format!(
                    "the reference watch at index {}: response {i} starts at revision {first}, not after revision \
                     {last} where the previous response ended",
                    event.index
                );
                (text, vec![event])
            });
        }
        for e in &response.events {
            let revision = e.mod_revision;
            if let Some(before) = previous
                && revision < before
            {
                findings.report(REFERENCE_MISMATCH, || {
                    let text = format!(
                        "the reference watch at index {}: response {i} has an event at revision {revision} after \
                         one at revision {before}",
                        event.index
                    );
                    (text, vec![event])
                });
            }
            if revision < spec.start_revision {
                findings.report(REFERENCE_MISMATCH, || {
                    let text = format!(
                        "the reference watch at index {} starts at revision {} but received {}",
                        event.index,
                        spec.start_revision,
                        describe_event(e)
                    );
                    (text, vec![event])
                });
                continue;
            }
            previous = Some(revision);
            coverage = coverage.max(revision);
            raw.push(e);
        }
        previous_last = response.events.last().map(|e| e.mod_revision);
    }

    // The stable sort keeps stream order among repeats, so the first arrival is the one kept.
    raw.sort_by_key(|e| (e.mod_revision, e.key));
    let mut changes: Vec<Change<'a>> = Vec::with_capacity(raw.len());
    let mut state: HashMap<u64, KeyState> = HashMap::new();
    for e in raw {
        let revision = e.mod_revision;
        if changes.last().is_some_and(|c| c.revision == revision && c.key == e.key) {
            findings.report(REFERENCE_MISMATCH, || {
                let text = format!(
                    "the reference watch at index {} has two events for key {} at revision {revision}",
                    event.index, e.key
                );
                (text, vec![event])
            });
            continue;
        }
        let before = state.get(&e.key).copied();
        let prev = before.map(|s| (s.value, s.mod_revision));
        let (create_revision, version) =
            if e.delete { (0, 0) } else { before.map_or((revision, 1), |s| (s.create_revision, s.version + 1)) };
        let mut wrong = Vec::new();
        if e.delete && before.is_none() {
            wrong.push(format!("key {} did not exist", e.key));
        }
        if e.delete && e.value.is_some() {
            wrong.push(format!("a value ({}) on a delete", show(e.value)));
        }
        if !e.delete && e.value.is_none() {
            wrong.push("no value on a put".to_string());
        }
        if e.create_revision != create_revision {
            wrong.push(format!("create revision {} instead of {create_revision}", e.create_revision));
        }
        if e.version != version {
            wrong.push(format!("version {} instead of {version}", e.version));
        }
        let expected_prev = prev.map_or((None, None), |(value, mod_revision)| (value, Some(mod_revision)));
        let got_prev = (e.prev_value, e.prev_mod_revision);
        if spec.prev_kv && got_prev != expected_prev {
            wrong.push(format!("previous {} instead of {}", show_prev(got_prev), show_prev(expected_prev)));
        }
        if !spec.prev_kv && got_prev != (None, None) {
            wrong.push(format!("previous {} without prev_kv", show_prev(got_prev)));
        }
        if !wrong.is_empty() {
            findings.report(REFERENCE_MISMATCH, || {
                let text = format!(
                    "the reference watch at index {} has {} whose changes before it imply otherwise: {}",
                    event.index,
                    describe_event(e),
                    wrong.join("; ")
                );
                (text, vec![event])
            });
        }
        if e.delete {
            state.remove(&e.key);
        } else {
            state.insert(e.key, KeyState { value: e.value, create_revision, version, mod_revision: revision });
        }
        changes.push(Change {
            revision,
            key: e.key,
            delete: e.delete,
            value: e.value,
            create_revision,
            version,
            prev,
            writer: None,
        });
    }
    let mut reference = Reference { event, from: spec.start_revision, coverage, changes };
    attribute(&mut reference, writes, findings);
    Ok(reference)
}

/// Names the operation behind each change of the reference, reporting changes no invoked and
/// unfailed operation could have made.
fn attribute<'a>(reference: &mut Reference<'a>, writes: &Writes<'a>, findings: &mut Findings) {
    let event = reference.event;
    let mut placed: HashMap<u64, i64> = HashMap::new();
    let mut unexplained_deletes: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, change) in reference.changes.iter_mut().enumerate() {
        if change.delete {
            match writes.ok_deletes_at.get(&(change.revision, change.key)) {
                Some(&d) => change.writer = Some(writes.deletes[d].evidence()),
                None => unexplained_deletes.entry(change.key).or_default().push(i),
            }
            continue;
        }
        // A put without a value was already reported as a mismatch; nothing can be matched.
        let Some(value) = change.value else { continue };
        let candidates: Vec<&Write<'a>> = writes
            .puts_by_value
            .get(&value)
            .map(|ids| ids.iter().map(|&p| &writes.puts[p]).filter(|w| w.key == change.key).collect())
            .unwrap_or_default();
        let Some(writer) = candidates.iter().find(|w| w.outcome != EventType::Fail).or(candidates.first()) else {
            findings.report(GARBAGE_EVENT, || {
                let text = format!(
                    "the reference watch at index {} shows a {}, but no put of {value} to key {} was ever invoked",
                    event.index,
                    change.describe(),
                    change.key
                );
                (text, vec![event])
            });
            continue;
        };
        change.writer = Some(writer.evidence());
        if writer.outcome == EventType::Fail {
            findings.report(ABORTED_WRITE, || {
                let text = format!(
                    "the put at index {} failed, yet the reference watch at index {} shows its {}",
                    writer.evidence().index,
                    event.index,
                    change.describe()
                );
                (text, vec![event, writer.evidence()])
            });
        }
        if let Some(&first) = placed.get(&value) {
            findings.report(GARBAGE_EVENT, || {
                let text = format!(
                    "the reference watch at index {} shows the put at index {} of key {} = {value} twice, at \
                     revisions {first} and {}",
                    event.index,
                    writer.evidence().index,
                    change.key,
                    change.revision
                );
                (text, vec![event, writer.evidence()])
            });
        } else {
            placed.insert(value, change.revision);
        }
    }
    // A delete not acknowledged at its revision must be one of the deletes of unknown outcome on
    // its key, each of which can account for at most one change.
    for (key, positions) in unexplained_deletes {
        let uncertain = writes.uncertain_deletes.get(&key).copied().unwrap_or(0);
        for &i in positions.iter().skip(uncertain) {
            let change = &reference.changes[i];
            findings.report(GARBAGE_EVENT, || {
                let text = format!(
                    "the reference watch at index {} shows a {}, but no acknowledged delete of key {key} has that \
                     revision and the {uncertain} deletes of unknown outcome of it account for only {uncertain} of \
                     its {} unacknowledged deletions",
                    event.index,
                    change.describe(),
                    positions.len()
                );
                (text, vec![event])
            });
        }
    }
}

/// Checks that every acknowledged write is in the reference where its completion said it was.
fn check_writes(reference: &Reference<'_>, writes: &Writes<'_>, findings: &mut Findings, tally: &mut Tally) {
    let event = reference.event;
    // Where each value was put, for saying where a lost put ended up instead.
    let mut placed: HashMap<u64, i64> = HashMap::new();
    for change in reference.changes.iter().filter(|c| !c.delete) {
        if let Some(value) = change.value {
            placed.entry(value).or_insert(change.revision);
        }
    }
    for put in writes.puts.iter().filter(|w| w.outcome == EventType::Ok) {
        let Some(value) = put.value else { continue };
        // `Some(instead)` when the put is missing: what the reference shows at its revision.
        let missing: Option<Option<&Change<'_>>> = match put.revision {
            Some(revision) if !reference.covers(revision) => {
                tally.writes_unverified += 1;
                continue;
            }
            Some(revision) => {
                let change = reference.find(revision, put.key);
                (!change.is_some_and(|c| !c.delete && c.value == Some(value))).then_some(change)
            }
            None => (!placed.contains_key(&value)).then_some(None),
        };
        let Some(instead) = missing else { continue };
        findings.report(LOST_WRITE, || {
            let mut text =
                format!("the put at index {} of key {} = {value} completed ok", put.evidence().index, put.key);
            match (put.revision, instead) {
                (Some(revision), Some(other)) => text.push_str(&format!(
                    " at revision {revision}, but the reference watch at index {} shows a {} there",
                    event.index,
                    other.describe()
                )),
                (Some(revision), None) => text.push_str(&format!(
                    " at revision {revision}, but the reference watch at index {} has no change of key {} there",
                    event.index, put.key
                )),
                (None, _) => text.push_str(&format!(
                    " (reporting no revision), but the reference watch at index {} never shows the value",
                    event.index
                )),
            }
            if let (Some(_), Some(elsewhere)) = (put.revision, placed.get(&value)) {
                text.push_str(&format!("; the value appears at revision {elsewhere} instead"));
            }
            (text, vec![event, put.evidence()])
        });
    }
    for delete in writes.deletes.iter().filter(|w| w.outcome == EventType::Ok && w.deleted == Some(true)) {
        let Some(revision) = delete.revision else { continue };
        if !reference.covers(revision) {
            tally.writes_unverified += 1;
            continue;
        }
        let change = reference.find(revision, delete.key);
        if !change.is_some_and(|c| c.delete) {
            findings.report(LOST_WRITE, || {
                let shows = change.map_or(format!("has no change of key {} there", delete.key), |c| {
                    format!("shows a {} there", c.describe())
                });
                let text = format!(
                    "the delete at index {} of key {} completed ok at revision {revision}, having deleted the key, \
                     but the reference watch at index {} {shows}",
                    delete.evidence().index,
                    delete.key,
                    event.index
                );
                (text, vec![event, delete.evidence()])
            });
        }
    }
}

/// A watch stream to check.
struct Stream<'a> {
    /// The watch's `ok` completion.
    event: &'a Event,
    spec: &'a WatchSpec,
    responses: &'a [WatchResponse],
}

/// Checks one watch stream; the rules that need the truth are skipped without a reference.
fn check_stream(stream: &Stream<'_>, reference: Option<&Reference<'_>>, findings: &mut Findings, tally: &mut Tally) {
    let Stream { event, spec, responses } = *stream;
    let watch = describe_watch(event, spec);
    // After a compaction the store may no longer have a change's previous value.
    let compacted = responses.iter().any(|r| r.canceled && r.compact_revision > 0);
    if compacted {
        tally.watches_compacted += 1;
    }

    // Every wanted event by (revision, key), sorted: a repeat is every arrival after the first.
    let mut arrivals: Vec<(i64, u64, usize)> = Vec::new();
    let mut position = 0;
    for e in responses.iter().flat_map(|r| &r.events) {
        if wanted(spec, e.key, e.delete) {
            arrivals.push((e.mod_revision, e.key, position));
        }
        position += 1;
    }
    arrivals.sort_unstable();
    let mut repeated = vec![false; position];
    let mut received: Vec<(i64, u64)> = Vec::with_capacity(arrivals.len());
    for (revision, key, at) in arrivals {
        if received.last() == Some(&(revision, key)) {
            repeated[at] = true;
        } else {
            received.push((revision, key));
        }
    }

    let mut position = 0;
    let mut previous_event: Option<i64> = None;
    let mut highest_event: Option<i64> = None;
    let mut last_progress: Option<i64> = None;
    let mut leading_progress: Option<i64> = None;
    let mut previous_header: Option<i64> = None;
    let mut previous_ended: Option<i64> = None;
    let mut first_event: Option<&WatchEvent> = None;
    for (i, response) in responses.iter().enumerate() {
        if response.events.is_empty() {
            if response.canceled {
                continue;
            }
            tally.progress_notifications += 1;
            let revision = response.revision;
            if i == 0 {
                leading_progress = Some(revision);
            }
            let below = match (last_progress, highest_event) {
                (Some(p), _) if revision < p => Some(format!("an earlier progress notification at revision {p}")),
                (_, Some(e)) if revision < e => Some(format!("an event already received at revision {e}")),
                _ => None,
            };
            if let Some(below) = below {
                findings.report(PROGRESS_REGRESSION, || {
                    let text = format!(
                        "{watch}: response {i} is a progress notification at revision {revision}, below {below}"
                    );
                    (text, vec![event])
                });
            }
            last_progress = Some(last_progress.map_or(revision, |p| p.max(revision)));
            continue;
        }

        let header = response.revision;
        let top = response.events.iter().map(|e| e.mod_revision).max().unwrap_or(header);
        let header_wrong = match previous_header {
            Some(h) if header < h => Some(format!("below the previous response's header revision {h}")),
            _ if header < top => Some(format!("below its own event at revision {top}")),
            _ => None,
        };
        if let Some(wrong) = header_wrong {
            findings.report(UNORDERED, || {
                (format!("{watch}: response {i} has header revision {header}, {wrong}"), vec![event])
            });
        }
        previous_header = Some(previous_header.map_or(header, |h| h.max(header)));

        let mut ended = None;
        for e in &response.events {
            let at = position;
            position += 1;
            tally.events_received += 1;
            let revision = e.mod_revision;
            if !wanted(spec, e.key, e.delete) {
                findings.report(FILTER, || {
                    let text =
                        format!("{watch}: response {i} has a {}, which the watch does not ask for", describe_event(e));
                    (text, vec![event])
                });
                continue;
            }
            if repeated[at] {
                findings.report(DUPLICATE_EVENT, || {
                    let text = format!("{watch}: response {i} repeats the {} received before", describe_event(e));
                    (text, vec![event])
                });
                continue;
            }
            if let Some(before) = previous_event
                && revision < before
            {
                findings.report(UNORDERED, || {
                    let text = format!(
                        "{watch}: response {i} has a {} after an event at revision {before}",
                        describe_event(e)
                    );
                    (text, vec![event])
                });
            }
            previous_event = Some(revision);
            highest_event = Some(highest_event.map_or(revision, |h| h.max(revision)));
            if ended.is_none()
                && let Some(last) = previous_ended
                && last == revision
            {
                findings.report(NON_ATOMIC, || {
                    let text = format!(
                        "{watch}: response {i} starts with revision {revision}, which the previous response \
                         ended with: the revision was split across responses"
                    );
                    (text, vec![event])
                });
            }
            ended = Some(revision);
            if let Some(p) = last_progress
                && revision <= p
            {
                findings.report(EVENT_BEFORE_PROGRESS, || {
                    let text = format!(
                        "{watch}: response {i} has a {} after a progress notification at revision {p} promised \
                         every event up to it had been delivered",
                        describe_event(e)
                    );
                    (text, vec![event])
                });
            }
            first_event = first_event.or(Some(e));
            if !spec.prev_kv && (e.prev_value.is_some() || e.prev_mod_revision.is_some()) {
                findings.report(BAD_PREV_KV, || {
                    let text = format!(
                        "{watch}: response {i} has a {} carrying previous {} though prev_kv was not requested",
                        describe_event(e),
                        show_prev((e.prev_value, e.prev_mod_revision))
                    );
                    (text, vec![event])
                });
            }
            if let Some(reference) = reference {
                let context = Context { watch: &watch, stream, reference, compacted };
                context.compare(i, e, findings, tally);
            }
        }
        if ended.is_some() {
            previous_ended = ended;
        }
    }

    let Some(reference) = reference else { return };

    // Resumable: a watch from a revision begins with the first change it matches at or after it.
    if spec.start_revision > 0
        && spec.start_revision >= reference.from
        && let Some(first) = first_event
        && let Some(expected) =
            reference.between(spec.start_revision, reference.coverage).iter().find(|c| wanted(spec, c.key, c.delete))
        && first.mod_revision != expected.revision
    {
        findings.report(NOT_RESUMABLE, || {
            let text = format!(
                "{watch}: its first event is a {}, but the first change it matches at or after its start revision \
                 {} is the {}",
                describe_event(first),
                spec.start_revision,
                expected.describe()
            );
            (text, vec![event].into_iter().chain(expected.writer).collect())
        });
    }

    // Reliable: everything matching from the first expected revision to the last one received or
    // promised arrived. A missing change of a revision the watcher otherwise received is a torn
    // revision rather than a gap.
    let first_expected = if spec.start_revision > 0 {
        Some(spec.start_revision)
    } else {
        leading_progress.map(|p| p + 1).or(received.first().map(|&(revision, _)| revision))
    };
    let last = match (received.last().map(|&(revision, _)| revision), last_progress) {
        (Some(e), Some(p)) => Some(e.max(p)),
        (e, p) => e.or(p),
    };
    let (Some(first), Some(last)) = (first_expected, last) else { return };
    let (lo, hi) = (first.max(reference.from), last.min(reference.coverage));
    if lo > hi {
        return;
    }
    let mut next = received.partition_point(|&(revision, _)| revision < lo);
    for change in reference.between(lo, hi).iter().filter(|c| wanted(spec, c.key, c.delete)) {
        let want = (change.revision, change.key);
        while next < received.len() && received[next] < want {
            next += 1;
        }
        if received.get(next) == Some(&want) {
            continue;
        }
        let torn = received.get(next).is_some_and(|&(r, _)| r == change.revision)
            || next.checked_sub(1).and_then(|p| received.get(p)).is_some_and(|&(r, _)| r == change.revision);
        let kind = if torn { NON_ATOMIC } else { MISSED_EVENT };
        findings.report(kind, || {
            let what = if torn { "received only part of" } else { "never received" };
            let text = format!(
                "{watch}: {what} revision {}: the {} matches it and lies within revisions {lo} to {hi}, which it \
                 received or was promised",
                change.revision,
                change.describe()
            );
            (text, vec![event].into_iter().chain(change.writer).collect())
        });
    }
}

/// What comparing a stream's events with the reference needs.
struct Context<'c, 'a> {
    /// The watch, described for explanations.
    watch: &'c str,
    stream: &'c Stream<'a>,
    reference: &'c Reference<'a>,
    /// The stream was canceled because its position was compacted.
    compacted: bool,
}

impl Context<'_, '_> {
    /// Compares a received event (of response `response`) with the reference's change at its
    /// revision and key.
    fn compare(&self, response: usize, e: &WatchEvent, findings: &mut Findings, tally: &mut Tally) {
        let Context { watch, stream, reference, compacted } = *self;
        let event = stream.event;
        if !reference.covers(e.mod_revision) {
            tally.events_unverified += 1;
            return;
        }
        let Some(change) = reference.find(e.mod_revision, e.key) else {
            findings.report(BAD_EVENT, || {
                let text = format!(
                    "{watch}: response {response} has a {}, but the reference watch at index {} has no change of key {} \
                     at revision {}",
                    describe_event(e),
                    reference.event.index,
                    e.key,
                    e.mod_revision
                );
                (text, vec![event])
            });
            return;
        };
        if change.delete != e.delete
            || change.value != e.value
            || change.create_revision != e.create_revision
            || change.version != e.version
        {
            findings.report(BAD_EVENT, || {
                let text = format!(
                    "{watch}: response {response} has a {}, but the change is a {}",
                    describe_event(e),
                    change.describe()
                );
                (text, vec![event].into_iter().chain(change.writer).collect())
            });
        }
        if stream.spec.prev_kv {
            let got = (e.prev_value, e.prev_mod_revision);
            let expected = change.expected_prev();
            if got != expected && !(compacted && got == (None, None)) {
                findings.report(BAD_PREV_KV, || {
                    let text = format!(
                        "{watch}: response {response} has a {} with previous {}, but just before revision {} key {} \
                         held {}",
                        describe_event(e),
                        show_prev(got),
                        e.mod_revision,
                        e.key,
                        show_prev(expected)
                    );
                    (text, vec![event].into_iter().chain(change.writer).collect())
                });
            }
        }
    }
}

/// Names a watch and its options for explanations.
fn describe_watch(event: &Event, spec: &WatchSpec) -> String {
    let start = if spec.start_revision > 0 {
        format!("from revision {}", spec.start_revision)
    } else {
        "from the current revision".to_string()
    };
    let mut text = format!("the watch at index {} (keys [{}, {}) {start}", event.index, spec.from_key, spec.to_key);
    for (on, name) in [(spec.prev_kv, "prev_kv"), (spec.no_put, "no_put"), (spec.no_delete, "no_delete")] {
        if on {
            text.push_str(", ");
            text.push_str(name);
        }
    }
    text.push(')');
    text
}

/// An event as received, for explanations.
fn describe_event(e: &WatchEvent) -> String {
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

fn show(value: Option<u64>) -> String {
    value.map_or("nothing".to_string(), |v| v.to_string())
}

/// A previous value and mod revision, for explanations.
fn show_prev((value, mod_revision): (Option<u64>, Option<i64>)) -> String {
    match (value, mod_revision) {
        (None, None) => "nothing (key absent)".to_string(),
        (value, Some(m)) => format!("value {} from revision {m}", show(value)),
        (value, None) => format!("value {} with no mod revision", show(value)),
    }
}

#[cfg(test)]
mod tests;
