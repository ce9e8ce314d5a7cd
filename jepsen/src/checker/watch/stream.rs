//! Step 2 of the watch checker: every ordinary watch stream, checked by the rules that need only
//! the stream itself and, when there is a usable reference, by those that compare it with the
//! reference's changes (see [`super::check`] for the rules).
//!
//! Invariants:
//! - Every violation is counted under exactly one kind: an event that fails the stream's filter,
//!   or repeats an earlier one, is reported as such and not checked further; a change the watcher
//!   should have received but did not is `non-atomic` when it received other changes of the same
//!   revision and `missed-event` otherwise.
//! - The rules that need the truth are skipped without a reference, and events beyond the
//!   revisions the reference covers are counted as unverified instead of judged.
//! - The work is linear in the events received after one sort per stream: each stream's received
//!   events are merged with the reference's matching events in one pass.

use super::findings::{Findings, Tally, describe_event, show_prev};
use super::reference::Reference;
use super::{
    BAD_EVENT, BAD_PREV_KV, DUPLICATE_EVENT, EVENT_BEFORE_PROGRESS, FILTER, MISSED_EVENT, NON_ATOMIC, NOT_RESUMABLE,
    PROGRESS_REGRESSION, UNORDERED,
};
use crate::history::{Event, WatchEvent, WatchResponse, WatchSpec};

/// Whether an event of the given type on `key` is one the watch asked for.
pub(super) fn wanted(spec: &WatchSpec, key: u64, delete: bool) -> bool {
    let type_wanted = if delete { !spec.no_delete } else { !spec.no_put };
    spec.from_key <= key && key < spec.to_key && type_wanted
}

/// A watch stream to check.
pub(super) struct Stream<'a> {
    /// The watch's `ok` completion.
    pub(super) event: &'a Event,
    pub(super) spec: &'a WatchSpec,
    pub(super) responses: &'a [WatchResponse],
}

/// Checks one watch stream; the rules that need the truth are skipped without a reference.
pub(super) fn check_stream(
    stream: &Stream<'_>,
    reference: Option<&Reference<'_>>,
    findings: &mut Findings,
    tally: &mut Tally,
) {
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
