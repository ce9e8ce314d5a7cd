//! Tests of the rules on ordinary watch streams: `missed-event`, `duplicate-event`, `unordered`,
//! `non-atomic`, `event-before-progress`, `progress-regression`, `bad-prev-kv`, `bad-event`,
//! `filter` and `not-resumable`.
//!
//! Invariant: each test makes one targeted change to the streams of a valid generated history
//! and expects exactly the kinds that change breaks.

use super::*;

#[test]
fn a_dropped_event_is_a_missed_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // Neither the first nor the last event (those only move the stream's bounds), and of a
        // revision with a single change.
        let (s, at) = case.find("with three events", |_, _, responses| {
            let all = positions(responses);
            all.iter()
                .skip(1)
                .take(all.len().saturating_sub(2))
                .copied()
                .find(|&p| case.changes_at(event_at(responses, p).mod_revision) == 1)
        });
        let dropped = drop_event(case.responses_mut(s), at.0, at.1);
        let result = case.expect(&[MISSED_EVENT]);
        let text = &result.anomalies[0].explanation;
        assert!(text.contains(&format!("index {s}")), "seed {seed:#x}: {text}");
        assert!(text.contains(&format!("revision {}", dropped.mod_revision)), "seed {seed:#x}: {text}");
    }
}

#[test]
fn a_repeated_event_is_a_duplicate_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with an event", |_, _, responses| positions(responses).first().copied());
        let responses = case.responses_mut(s);
        let copy = responses[at.0].events[at.1].clone();
        responses[at.0].events.insert(at.1 + 1, copy);
        case.expect(&[DUPLICATE_EVENT]);
    }
}

#[test]
fn swapped_events_are_unordered() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // Not in the first event-carrying response, so that the stream still begins where it
        // should.
        let (s, r) = case.find("with a later response of three events", |_, _, responses| {
            let first = responses.iter().position(|r| !r.events.is_empty())?;
            (first + 1..responses.len()).find(|&r| {
                let events = &responses[r].events;
                events.len() >= 3 && events[0].mod_revision != events[1].mod_revision
            })
        });
        case.responses_mut(s)[r].events.swap(0, 1);
        case.expect(&[UNORDERED]);
    }
}

#[test]
fn a_header_revision_going_back_is_unordered() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, r) = case.find("with two event responses", |_, _, responses| {
            let carrying: Vec<usize> = (0..responses.len()).filter(|&r| !responses[r].events.is_empty()).collect();
            carrying.get(1).copied()
        });
        case.responses_mut(s)[r].revision = 0;
        case.expect(&[UNORDERED]);
    }
}

#[test]
fn a_revision_split_across_responses_is_non_atomic() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, (r, e)) = case.find("receiving a revision of two changes", |_, _, responses| {
            responses.iter().enumerate().find_map(|(r, resp)| {
                resp.events.windows(2).position(|w| w[0].mod_revision == w[1].mod_revision).map(|e| (r, e + 1))
            })
        });
        let responses = case.responses_mut(s);
        let tail = responses[r].events.split_off(e);
        let second = WatchResponse { events: tail, ..responses[r].clone() };
        responses.insert(r + 1, second);
        case.expect(&[NON_ATOMIC]);
    }
}

#[test]
fn a_change_missing_from_a_revision_is_non_atomic() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, (r, e)) = case.find("receiving a revision of two changes", |_, _, responses| {
            responses.iter().enumerate().find_map(|(r, resp)| {
                resp.events.windows(2).position(|w| w[0].mod_revision == w[1].mod_revision).map(|e| (r, e + 1))
            })
        });
        drop_event(case.responses_mut(s), r, e);
        case.expect(&[NON_ATOMIC]);
    }
}

#[test]
fn an_event_after_a_progress_notification_covering_it_is_event_before_progress() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, r) = case.find("with two event responses", |_, _, responses| {
            let carrying: Vec<usize> = (0..responses.len()).filter(|&r| !responses[r].events.is_empty()).collect();
            carrying.get(1).copied()
        });
        let responses = case.responses_mut(s);
        let revision = responses[r].events[0].mod_revision;
        let progress = WatchResponse { revision, events: Vec::new(), canceled: false, compact_revision: 0 };
        responses.insert(r, progress);
        case.expect(&[EVENT_BEFORE_PROGRESS]);
    }
}

#[test]
fn a_progress_notification_going_back_is_a_progress_regression() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, r) = case.find("with a progress notification after an event", |_, _, responses| {
            (1..responses.len()).find(|&r| {
                responses[r].events.is_empty()
                    && !responses[r].canceled
                    && responses[..r].iter().any(|before| !before.events.is_empty())
            })
        });
        let responses = case.responses_mut(s);
        let earlier = WatchResponse { revision: responses[r].revision - 1, ..responses[r].clone() };
        responses.insert(r + 1, earlier);
        case.expect(&[PROGRESS_REGRESSION]);
    }
}

#[test]
fn a_progress_notification_ahead_of_missing_events_is_a_missed_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // The stream's last event, followed by a progress notification covering it; dropping
        // the event leaves the promise broken.
        let (s, at) = case.find("whose last event is followed by progress", |_, _, responses| {
            let last = positions(responses).last().copied()?;
            let promised = responses[last.0 + 1..]
                .iter()
                .any(|r| r.events.is_empty() && !r.canceled && r.revision >= event_at(responses, last).mod_revision);
            (promised && last != (0, 0) && case.changes_at(event_at(responses, last).mod_revision) == 1).then_some(last)
        });
        drop_event(case.responses_mut(s), at.0, at.1);
        case.expect(&[MISSED_EVENT]);
    }
}

#[test]
fn a_wrong_previous_value_is_bad_prev_kv() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with prev_kv", |_, spec, responses| {
            spec.prev_kv.then(|| positions(responses).first().copied()).flatten()
        });
        let e = &mut case.responses_mut(s)[at.0].events[at.1];
        e.prev_value = Some(e.prev_value.map_or(1_000_000, |v| v + 1_000_000));
        e.prev_mod_revision = Some(e.prev_mod_revision.unwrap_or(1));
        case.expect(&[BAD_PREV_KV]);
    }
}

#[test]
fn a_previous_value_without_prev_kv_is_bad_prev_kv() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("without prev_kv", |_, spec, responses| {
            (!spec.prev_kv).then(|| positions(responses).first().copied()).flatten()
        });
        case.responses_mut(s)[at.0].events[at.1].prev_mod_revision = Some(1);
        case.expect(&[BAD_PREV_KV]);
    }
}

#[test]
fn a_wrong_create_revision_is_a_bad_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with a put", |_, _, responses| {
            positions(responses).into_iter().find(|&p| !event_at(responses, p).delete)
        });
        case.responses_mut(s)[at.0].events[at.1].create_revision += 1;
        case.expect(&[BAD_EVENT]);
    }
}

#[test]
fn a_wrong_value_is_a_bad_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with a put", |_, _, responses| {
            positions(responses).into_iter().find(|&p| !event_at(responses, p).delete)
        });
        case.responses_mut(s)[at.0].events[at.1].value = Some(u64::MAX);
        case.expect(&[BAD_EVENT]);
    }
}

/// Inserts a change of the reference that `pick` approves of into a stream, right after an
/// event of a lower revision that is followed by one of a higher revision, so that only the
/// filter is broken.
fn insert_unwanted(case: &mut Case, pick: impl Fn(&WatchSpec, &WatchEvent) -> bool) {
    let changes = case.changes();
    let (s, ((r, e), change)) = case.find("straddling an unwanted change", |_, spec, responses| {
        let all = positions(responses);
        all.windows(2).find_map(|w| {
            let (before, after) = (event_at(responses, w[0]).mod_revision, event_at(responses, w[1]).mod_revision);
            changes
                .iter()
                .find(|c| before < c.mod_revision && c.mod_revision < after && pick(spec, c))
                .map(|c| (w[0], c.clone()))
        })
    });
    let prev_kv = case.spec(s).prev_kv;
    let mut change = change;
    if !prev_kv {
        change.prev_value = None;
        change.prev_mod_revision = None;
    }
    let response = &mut case.responses_mut(s)[r];
    // The response's header must not fall below the change now in it.
    response.revision = response.revision.max(change.mod_revision);
    response.events.insert(e + 1, change);
}

#[test]
fn an_event_outside_the_range_is_a_filter_violation() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        insert_unwanted(&mut case, |spec, c| c.key < spec.from_key || c.key >= spec.to_key);
        case.expect(&[FILTER]);
    }
}

#[test]
fn a_filtered_type_delivered_is_a_filter_violation() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        insert_unwanted(&mut case, |spec, c| {
            spec.from_key <= c.key && c.key < spec.to_key && (c.delete && spec.no_delete || !c.delete && spec.no_put)
        });
        case.expect(&[FILTER]);
    }
}

#[test]
fn a_resumed_watch_starting_later_than_its_start_revision_is_not_resumable() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("resumed, with two events", |_, spec, responses| {
            let all = positions(responses);
            let first = *all.first()?;
            (spec.start_revision > 1 && all.len() >= 2 && case.changes_at(event_at(responses, first).mod_revision) == 1)
                .then_some(first)
        });
        drop_event(case.responses_mut(s), at.0, at.1);
        // The skipped change is also missing from the revisions the stream covers.
        case.expect(&[NOT_RESUMABLE, MISSED_EVENT]);
    }
}

#[test]
fn a_gap_in_a_resumed_watch_is_a_missed_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("resumed, with three events", |_, spec, responses| {
            let all = positions(responses);
            (spec.start_revision > 1 && all.len() >= 3)
                .then(|| {
                    all[1..all.len() - 1]
                        .iter()
                        .copied()
                        .find(|&p| case.changes_at(event_at(responses, p).mod_revision) == 1)
                })
                .flatten()
        });
        drop_event(case.responses_mut(s), at.0, at.1);
        case.expect(&[MISSED_EVENT]);
    }
}

#[test]
fn a_watch_canceled_for_compaction_may_omit_previous_values() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // A new prev_kv stream from revision `start` that received some changes without their
        // previous values, then was canceled because its position was compacted.
        let changes = case.changes();
        let start = changes[changes.len() / 3].mod_revision;
        let spec = WatchSpec {
            from_key: 0,
            to_key: u64::MAX,
            start_revision: start,
            prev_kv: true,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            reference: false,
        };
        let events: Vec<WatchEvent> = changes
            .iter()
            .filter(|c| c.mod_revision >= start && c.mod_revision < start + 10)
            .map(|c| WatchEvent { prev_value: None, prev_mod_revision: None, ..c.clone() })
            .collect();
        let last = events.last().expect("events").mod_revision;
        let mut responses = vec![WatchResponse { revision: last, events, canceled: false, compact_revision: 0 }];
        responses.push(WatchResponse { revision: last, events: Vec::new(), canceled: true, compact_revision: last });
        let at = case.history.events.len();
        let process = Process::Client(1_000_000);
        let op = Op::Watch { spec: spec.clone(), responses: None };
        case.history.events.push(Event {
            index: at,
            time_ns: 0,
            process,
            kind: EventType::Invoke,
            op,
            node: None,
            error: None,
        });
        let op = Op::Watch { spec, responses: Some(responses) };
        case.history.events.push(Event {
            index: at + 1,
            time_ns: 0,
            process,
            kind: EventType::Ok,
            op,
            node: None,
            error: None,
        });
        case.expect(&[]);
        // Without the compaction, the missing previous values are wrong (unless every change
        // in the window created its key).
        case.responses_mut(at + 1).pop();
        let result = case.check();
        let creates_only =
            changes.iter().filter(|c| c.mod_revision >= start && c.mod_revision < start + 10).all(|c| c.version == 1);
        if !creates_only {
            assert_eq!(kinds(&result), set(&[BAD_PREV_KV]), "seed {seed:#x}: {:#?}", result.anomalies);
        }
    }
}
