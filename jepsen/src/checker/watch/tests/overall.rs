//! Tests of the whole result: generated histories are valid and exercise every rule, anomalies
//! are bounded per kind but all counted, a malformed history is unknown, and a big history is
//! checked in seconds.
//!
//! Invariant: these tests judge the checker's result as a whole (verdict, stats, bounds, time)
//! rather than one rule.

use std::time::Instant;

use super::*;

#[test]
fn a_correct_store_gives_a_valid_history() {
    for seed in SEEDS {
        let history = Sim::run(Config::small(seed));
        let result = check(&history);
        assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
        let stat = |name: &str| result.stats[name].as_u64().unwrap_or(0);
        for name in [
            "puts_ok",
            "puts_info",
            "puts_fail",
            "deletes_ok",
            "watches_checked",
            "watches_ignored",
            "watches_compacted",
            "events_received",
            "reference_events",
            "progress_notifications",
        ] {
            assert!(stat(name) > 0, "seed {seed:#x}: no {name}: {:?}", result.stats);
        }
        assert_eq!(stat("writes_unverified") + stat("events_unverified"), 0, "seed {seed:#x}");
        // The generator exercises what the rules are about.
        let case = Case { seed, history };
        let streams = case.streams();
        let specs: Vec<&WatchSpec> = streams.iter().map(|&s| case.spec(s)).collect();
        assert!(specs.iter().any(|s| s.prev_kv) && specs.iter().any(|s| !s.prev_kv), "seed {seed:#x}");
        assert!(specs.iter().any(|s| s.no_put) && specs.iter().any(|s| s.no_delete), "seed {seed:#x}");
        assert!(specs.iter().any(|s| s.start_revision == 0), "seed {seed:#x}");
        assert!(specs.iter().filter(|s| s.start_revision > 1).count() > 5, "seed {seed:#x}: few resumed streams");
        let changes = case.changes();
        assert!(changes.windows(2).any(|w| w[0].mod_revision == w[1].mod_revision), "seed {seed:#x}");
    }
}

#[test]
fn anomalies_are_bounded_per_kind_but_all_counted() {
    let mut case = Case::new(SEEDS[0]);
    let (s, _) =
        case.find("with many events", |_, _, responses| (positions(responses).len() > 4 * MAX_ANOMALIES).then_some(()));
    // Drop every other event past the first, keeping the last.
    let responses = case.responses_mut(s);
    let total = positions(responses).len();
    let mut seen = 0;
    let dropped = remove_events(responses, |_| {
        seen += 1;
        seen > 1 && seen < total && seen % 2 == 0
    });
    let result = case.check();
    let missed = result.anomalies.iter().filter(|a| a.kind == MISSED_EVENT).count();
    assert_eq!(missed, MAX_ANOMALIES, "{:#?}", result.anomalies);
    let counts = &result.stats["anomalies"];
    let counted = counts[MISSED_EVENT].as_u64().unwrap_or(0) + counts[NON_ATOMIC].as_u64().unwrap_or(0);
    assert!(counted as usize >= dropped, "{counts:?} < {dropped}");
}

#[test]
fn a_malformed_history_is_unknown() {
    let mut case = Case::new(SEEDS[0]);
    let first = case.history.events[0].clone();
    let mut again = first.clone();
    again.index = case.history.events.len();
    case.history.events.push(again.clone());
    again.index += 1;
    case.history.events.push(again);
    let result = case.check();
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert!(result.stats.contains_key("error"));
}

#[test]
fn twenty_thousand_writes_and_a_hundred_streams_check_in_seconds() {
    let seed = 0x5EED_0B16;
    let config =
        Config { seed, writes: 20_000, keys: 8, writers: 8, watchers: 2, catch_up_watchers: 4, close_per_mille: 3 };
    let started = Instant::now();
    let history = Sim::run(config);
    let generated = started.elapsed();
    let started = Instant::now();
    let result = check(&history);
    let took = started.elapsed();
    println!(
        "generated {} history events in {generated:?}; checked in {took:?}: {:?}",
        history.events.len(),
        result.stats
    );
    assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
    assert!(result.stats["watches_checked"].as_u64().unwrap_or(0) >= 80, "seed {seed:#x}: {:?}", result.stats);
    assert!(took.as_secs() < 30, "seed {seed:#x}: took {took:?}");
}
