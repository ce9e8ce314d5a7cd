//! Step 1 of the watch checker: the reference watch, checked on its own and against the writes,
//! then replayed into the true sequence of changes the streams are compared with.
//!
//! The reference's events must come in strictly increasing revisions, one event per key and
//! revision, with create revisions and versions that follow from the changes before them
//! (`reference-mismatch`); every `ok` put and every `ok` delete that removed a key must be in it at
//! the revision its completion reported (`lost-write`); every event in it must have been made by an
//! operation that was invoked and did not fail (`garbage-event`, `aborted-write`). Replaying it
//! yields, for every change, the key's state just before it, which is what `prev_kv`, create
//! revisions and versions are compared with.
//!
//! Invariants:
//! - A reference is refused (and the verdict becomes at best `unknown`) when it cannot be the
//!   truth: its start was compacted, it starts from the current revision, it filters out puts or
//!   deletes, or its keys do not include every key written.
//! - Create revisions, versions and previous values are derived from the changes before each one,
//!   not copied from the reference's events, so a reference that contradicts itself is reported
//!   rather than believed.
//! - The changes are an array sorted by (revision, key), at most one per pair, searched by
//!   bisection, which keeps every lookup logarithmic.

use std::collections::{BTreeMap, HashMap};

use super::findings::{Findings, Tally, describe_event, show, show_prev};
use super::ops::{WatchOp, Write, Writes};
use super::{ABORTED_WRITE, GARBAGE_EVENT, LOST_WRITE, REFERENCE_MISMATCH};
use crate::history::{Event, EventType, WatchEvent};

/// One change of the reference, with what replaying the changes before it implies.
pub(super) struct Change<'a> {
    pub(super) revision: i64,
    pub(super) key: u64,
    pub(super) delete: bool,
    /// The value put (`None` for a delete).
    pub(super) value: Option<u64>,
    /// The create revision and version the change must carry (0 for a delete), derived from the
    /// changes before it rather than copied from the reference's event.
    pub(super) create_revision: i64,
    pub(super) version: i64,
    /// The key's value and mod revision just before the change; `None` when it did not exist.
    prev: Option<(Option<u64>, i64)>,
    /// The operation that made the change, when it can be named.
    pub(super) writer: Option<&'a Event>,
}

impl Change<'_> {
    pub(super) fn describe(&self) -> String {
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
    pub(super) fn expected_prev(&self) -> (Option<u64>, Option<i64>) {
        self.prev.map_or((None, None), |(value, mod_revision)| (value, Some(mod_revision)))
    }
}

/// The true sequence of changes, from the reference watch.
pub(super) struct Reference<'a> {
    /// The reference watch's completion.
    pub(super) event: &'a Event,
    /// Its start revision: nothing is known of the changes before it.
    pub(super) from: i64,
    /// The highest revision it covers: its last event's, or its last progress notification's.
    pub(super) coverage: i64,
    /// Sorted by (revision, key), at most one change per (revision, key).
    pub(super) changes: Vec<Change<'a>>,
}

impl<'a> Reference<'a> {
    pub(super) fn covers(&self, revision: i64) -> bool {
        self.from <= revision && revision <= self.coverage
    }

    pub(super) fn find(&self, revision: i64, key: u64) -> Option<&Change<'a>> {
        let at = self.changes.partition_point(|c| (c.revision, c.key) < (revision, key));
        self.changes.get(at).filter(|c| c.revision == revision && c.key == key)
    }

    /// The changes with revisions in `first..=last`.
    pub(super) fn between(&self, first: i64, last: i64) -> &[Change<'a>] {
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
pub(super) fn build_reference<'a>(
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
pub(super) fn check_writes(reference: &Reference<'_>, writes: &Writes<'_>, findings: &mut Findings, tally: &mut Tally) {
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
