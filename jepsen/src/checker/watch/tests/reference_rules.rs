//! Tests of the rules on the reference watch (`lost-write`, `garbage-event`, `aborted-write`,
//! `reference-mismatch`) and of the verdict without a usable or complete reference
//! (`no-reference`, `reference-incomplete`).
//!
//! Invariant: each test makes one targeted change to the reference, the writes or the watches'
//! options of a valid generated history and expects exactly the kinds that change breaks.

use std::collections::BTreeMap;

use super::*;

/// A key's last change in the reference that `pick` approves of, alone in its revision.
fn last_change_where(case: &Case, pick: impl Fn(&WatchEvent) -> bool) -> Option<WatchEvent> {
    let changes = case.changes();
    let mut last: BTreeMap<u64, &WatchEvent> = BTreeMap::new();
    for c in &changes {
        last.insert(c.key, c);
    }
    last.values().find(|c| pick(c) && case.changes_at(c.mod_revision) == 1).map(|c| (*c).clone())
}

/// Like [`last_change_where`], for changes every generated history has.
fn last_change(case: &Case, pick: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
    last_change_where(case, pick).unwrap_or_else(|| panic!("seed {:#x}: no such last change", case.seed))
}

/// The completion of the write that made `change`.
fn writer_of(case: &Case, change: &WatchEvent) -> Option<usize> {
    case.history.events.iter().position(|e| match (&e.op, change.delete) {
        (Op::Put { key, value, .. }, false) => {
            *key == change.key && Some(*value) == change.value && e.kind != EventType::Invoke
        }
        (Op::Delete { key, revision, .. }, true) => {
            *key == change.key && *revision == Some(change.mod_revision) && e.kind == EventType::Ok
        }
        _ => false,
    })
}

#[test]
fn an_acknowledged_put_missing_from_the_reference_is_a_lost_write() {
    let mut tested = 0;
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // The last change of a key, erased everywhere: nothing else depends on it, so the only
        // evidence left is the put's acknowledgement.
        let change = last_change(&case, |c| !c.delete);
        let Some(put) = writer_of(&case, &change).filter(|&i| case.history.events[i].kind == EventType::Ok) else {
            continue;
        };
        case.erase(change.mod_revision, change.key);
        let result = case.expect(&[LOST_WRITE]);
        assert!(result.anomalies[0].ops.iter().any(|op| op.index == put), "seed {seed:#x}: {:#?}", result.anomalies);
        tested += 1;
    }
    assert!(tested > 0, "no seed ended a key with an acknowledged put");
}

#[test]
fn an_acknowledged_delete_missing_from_the_reference_is_a_lost_write() {
    let mut tested = 0;
    for seed in SEEDS.into_iter().chain([0x5EED_0005, 0x5EED_0006, 0x5EED_0007, 0x5EED_0008]) {
        let mut case = Case::new(seed);
        let Some(change) = last_change_where(&case, |c| c.delete && writer_of(&case, c).is_some()) else {
            continue;
        };
        case.erase(change.mod_revision, change.key);
        case.expect(&[LOST_WRITE]);
        tested += 1;
    }
    assert!(tested > 0, "no seed ended a key with an acknowledged delete");
}

#[test]
fn a_value_nobody_put_is_a_garbage_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let change = last_change(&case, |c| !c.delete);
        let acknowledged = writer_of(&case, &change).is_some_and(|i| case.history.events[i].kind == EventType::Ok);
        // Replace the value everywhere, so that the watchers still agree with the reference.
        for event in &mut case.history.events {
            if let Op::Watch { responses: Some(responses), .. } = &mut event.op {
                for e in responses.iter_mut().flat_map(|r| r.events.iter_mut()) {
                    if e.mod_revision == change.mod_revision && e.key == change.key {
                        e.value = Some(u64::MAX);
                    }
                }
            }
        }
        let expected: &[&str] = if acknowledged { &[GARBAGE_EVENT, LOST_WRITE] } else { &[GARBAGE_EVENT] };
        case.expect(expected);
    }
}

#[test]
fn a_delete_nobody_issued_is_a_garbage_event() {
    let mut tested = 0;
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // A key that exists at the end and has no delete of unknown outcome, deleted in a new
        // last revision of the reference (beyond every other watcher's revisions).
        let uncertain: BTreeSet<u64> = case
            .history
            .client_pairs()
            .expect("well formed")
            .iter()
            .filter(|p| p.outcome() == EventType::Info)
            .filter_map(|p| match p.invoke.op {
                Op::Delete { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        let Some(existing) = last_change_where(&case, |c| !c.delete && !uncertain.contains(&c.key)) else {
            continue;
        };
        let r = case.reference();
        let responses = case.responses_mut(r);
        let progress = responses.pop().expect("the final progress notification");
        let revision = progress.revision + 1;
        let delete = WatchEvent {
            delete: true,
            key: existing.key,
            value: None,
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            prev_value: existing.value,
            prev_mod_revision: Some(existing.mod_revision),
        };
        responses.push(WatchResponse { revision, events: vec![delete], canceled: false, compact_revision: 0 });
        responses.push(WatchResponse { revision, ..progress });
        case.expect(&[GARBAGE_EVENT]);
        tested += 1;
    }
    assert!(tested > 0, "no seed had a key without deletes of unknown outcome");
}

#[test]
fn a_failed_put_in_the_reference_is_an_aborted_write() {
    let mut tested = 0;
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let change = last_change(&case, |c| !c.delete);
        let failed = case.history.events.iter().find_map(|e| match e.op {
            Op::Put { key, value, .. } if e.kind == EventType::Fail && key == change.key => Some(value),
            _ => None,
        });
        let Some(failed) = failed else { continue };
        for event in &mut case.history.events {
            if let Op::Watch { responses: Some(responses), .. } = &mut event.op {
                for e in responses.iter_mut().flat_map(|r| r.events.iter_mut()) {
                    if e.mod_revision == change.mod_revision && e.key == change.key {
                        e.value = Some(failed);
                    }
                }
            }
        }
        let result = case.check();
        assert!(kinds(&result).contains(ABORTED_WRITE), "seed {seed:#x}: {:#?}", result.anomalies);
        assert_eq!(result.valid, Validity::Invalid);
        tested += 1;
    }
    assert!(tested > 0, "no seed failed a put of a key's last value");
}

#[test]
fn a_wrong_version_in_the_reference_is_a_reference_mismatch() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let r = case.reference();
        let responses = case.responses_mut(r);
        let e = responses.iter_mut().flat_map(|r| r.events.iter_mut()).find(|e| !e.delete).expect("a put");
        e.version += 1;
        // The watchers are compared with what the changes imply, so only the reference is wrong.
        case.expect(&[REFERENCE_MISMATCH]);
    }
}

#[test]
fn reference_responses_out_of_order_are_a_reference_mismatch() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let r = case.reference();
        case.responses_mut(r).swap(0, 1);
        let result = case.check();
        assert!(kinds(&result).contains(REFERENCE_MISMATCH), "seed {seed:#x}: {:#?}", result.anomalies);
    }
}

#[test]
fn no_reference_is_unknown() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        for event in &mut case.history.events {
            if let Op::Watch { spec, .. } = &mut event.op {
                spec.reference = false;
            }
        }
        let result = case.expect(&[NO_REFERENCE]);
        // The former reference is now checked like any other watch.
        assert_eq!(result.stats["watches_checked"], case.streams().len(), "seed {seed:#x}");
    }
}

#[test]
fn a_reference_of_unknown_outcome_is_unknown() {
    let mut case = Case::new(SEEDS[0]);
    let r = case.reference();
    case.history.events[r].kind = EventType::Info;
    case.history.events[r].op = Op::Watch { spec: case.spec(r).clone(), responses: None };
    case.expect(&[NO_REFERENCE]);
}

#[test]
fn rules_needing_no_reference_still_apply_without_one() {
    let mut case = Case::new(SEEDS[0]);
    for event in &mut case.history.events {
        if let Op::Watch { spec, .. } = &mut event.op {
            spec.reference = false;
        }
    }
    let (s, at) = case.find("with an event", |_, _, responses| positions(responses).first().copied());
    let responses = case.responses_mut(s);
    let copy = responses[at.0].events[at.1].clone();
    responses[at.0].events.insert(at.1 + 1, copy);
    case.expect(&[NO_REFERENCE, DUPLICATE_EVENT]);
}

#[test]
fn a_reference_that_stopped_early_is_unknown() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let r = case.reference();
        let responses = case.responses_mut(r);
        let keep = responses.len() / 2;
        responses.truncate(keep);
        let result = case.expect(&[REFERENCE_INCOMPLETE]);
        assert!(result.stats["writes_unverified"].as_u64().unwrap_or(0) > 0, "seed {seed:#x}");
    }
}
