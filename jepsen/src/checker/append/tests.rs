//! Tests of the append module: each named after the property it protects.

use std::collections::HashMap;
use std::time::Instant;

use super::*;
use crate::history::Process;
use EventType::{Fail, Info, Ok as Done};

/// Appends `value` to `key`.
fn ap(key: u64, value: u64) -> Mop {
    Mop::Append { key, value }
}

/// Reads `key`, observing `list` (dropped from invocations and from non-ok completions).
fn rd(key: u64, list: &[u64]) -> Mop {
    Mop::Read { key, value: Some(list.to_vec()) }
}

/// The micro-ops as invoked: reads carry no value yet.
fn invoked(mops: &[Mop]) -> Vec<Mop> {
    mops.iter()
        .map(|mop| match mop {
            Mop::Read { key, .. } => Mop::Read { key: *key, value: None },
            append => append.clone(),
        })
        .collect()
}

/// Builds histories event by event, numbering and timing them.
#[derive(Default)]
struct Builder {
    events: Vec<Event>,
}

impl Builder {
    fn push(&mut self, process: u64, kind: EventType, mops: Vec<Mop>) -> usize {
        let index = self.events.len();
        let time_ns = index as u64 * 1_000;
        let op = Op::Txn { mops };
        self.events.push(Event {
            index,
            time_ns,
            process: Process::Client(process),
            kind,
            op,
            node: None,
            error: None,
        });
        index
    }

    fn invoke(&mut self, process: u64, mops: &[Mop]) -> usize {
        self.push(process, EventType::Invoke, invoked(mops))
    }

    /// Completes `process`'s transaction; only an ok completion reports what it read.
    fn complete(&mut self, process: u64, kind: EventType, mops: &[Mop]) -> usize {
        let mops = if kind == EventType::Ok { mops.to_vec() } else { invoked(mops) };
        self.push(process, kind, mops)
    }

    /// A transaction invoked and completed with nothing in between; returns its completion's
    /// index, which is also its name `T(index)`.
    fn txn(&mut self, process: u64, kind: EventType, mops: &[Mop]) -> usize {
        self.invoke(process, mops);
        self.complete(process, kind, mops)
    }

    fn history(self) -> History {
        History { events: self.events }
    }
}

fn kinds(result: &CheckResult) -> Vec<&str> {
    result.anomalies.iter().map(|a| a.kind.as_str()).collect()
}

fn only(result: &CheckResult, kind: &str) -> Anomaly {
    assert_eq!(result.valid, Validity::Invalid, "{result:#?}");
    assert_eq!(kinds(result), [kind], "{result:#?}");
    result.anomalies[0].clone()
}

fn op_indices(anomaly: &Anomaly) -> Vec<usize> {
    anomaly.ops.iter().map(|e| e.index).collect()
}

#[test]
fn a_serial_history_is_valid() {
    let mut b = Builder::default();
    b.txn(0, Done, &[rd(1, &[]), ap(1, 1)]);
    b.txn(1, Done, &[ap(1, 2), ap(2, 1), rd(1, &[1, 2])]);
    b.txn(0, Done, &[rd(1, &[1, 2]), rd(2, &[1]), ap(2, 2)]);
    b.txn(1, Fail, &[ap(1, 3)]);
    b.txn(0, Done, &[rd(2, &[1, 2]), rd(3, &[])]);
    let result = check(&b.history());
    assert_eq!(result.checker, "append");
    assert_eq!(result.valid, Validity::Valid, "{result:#?}");
    assert_eq!(result.stats["txns"], 5);
    assert_eq!(result.stats["ok"], 4);
    assert_eq!(result.stats["fail"], 1);
    assert_eq!(result.stats["keys"], 3);
    assert_eq!(result.stats["sccs"], 0);
}

#[test]
fn a_write_cycle_is_g0() {
    let mut b = Builder::default();
    let t1 = [ap(1, 1), ap(2, 1)];
    let t2 = [ap(1, 2), ap(2, 2)];
    b.invoke(0, &t1);
    b.invoke(1, &t2);
    let c1 = b.complete(0, Done, &t1);
    let c2 = b.complete(1, Done, &t2);
    b.txn(2, Done, &[rd(1, &[1, 2]), rd(2, &[2, 1])]);
    let anomaly = only(&check(&b.history()), "G0");
    assert_eq!(op_indices(&anomaly), [c1, c2]);
    assert!(anomaly.explanation.contains("(ww)"), "{}", anomaly.explanation);
}

#[test]
fn reading_a_failed_append_is_g1a_aborted_read() {
    let mut b = Builder::default();
    let failed = b.txn(0, Fail, &[ap(1, 1)]);
    let reader = b.txn(1, Done, &[rd(1, &[1])]);
    let anomaly = only(&check(&b.history()), "G1a");
    assert_eq!(op_indices(&anomaly), [failed, reader]);
}

#[test]
fn reading_an_intermediate_append_is_g1b() {
    let mut b = Builder::default();
    let writer = [ap(1, 1), ap(1, 2)];
    let reader = [rd(1, &[1])];
    b.invoke(0, &writer);
    b.invoke(1, &reader);
    let w = b.complete(0, Done, &writer);
    let r = b.complete(1, Done, &reader);
    b.txn(2, Done, &[rd(1, &[1, 2])]);
    let result = check(&b.history());
    // Seeing half of the writer also puts the reader both after it (wr) and before it (rw),
    // so the same observation is a cycle too.
    assert_eq!(kinds(&result), ["G1b", "G-single"], "{result:#?}");
    let anomaly = &result.anomalies[0];
    assert_eq!(op_indices(anomaly), [w, r]);
    assert!(anomaly.explanation.contains("appended 1 and then 2"), "{}", anomaly.explanation);
}

#[test]
fn circular_information_flow_is_g1c() {
    let mut b = Builder::default();
    let t1 = [ap(1, 1), rd(2, &[1])];
    let t2 = [ap(2, 1), rd(1, &[1])];
    b.invoke(0, &t1);
    b.invoke(1, &t2);
    b.complete(0, Done, &t1);
    b.complete(1, Done, &t2);
    let anomaly = only(&check(&b.history()), "G1c");
    assert_eq!(anomaly.explanation.matches("(wr)").count(), 2, "{}", anomaly.explanation);
}

#[test]
fn a_lost_update_is_a_g_single_cycle_explained_in_cycle_order() {
    let mut b = Builder::default();
    let t1 = [rd(1, &[]), ap(1, 1)];
    let t2 = [rd(1, &[]), ap(1, 2)];
    b.invoke(0, &t1);
    b.invoke(1, &t2);
    let c1 = b.complete(0, Done, &t1);
    let c2 = b.complete(1, Done, &t2);
    b.txn(2, Done, &[rd(1, &[1, 2])]);
    let anomaly = only(&check(&b.history()), "G-single");
    assert_eq!(op_indices(&anomaly), [c1, c2], "the cycle starts at the earliest transaction");
    assert_eq!(
        anomaly.explanation,
        format!(
            "G-single cycle of 2 transactions: T({c1}) appended 1 to key 1, then T({c2}) appended 2 (ww); \
             T({c2}) read key 1 = [] before T({c1}) appended 1 (rw); so T({c1}) would have to precede itself"
        )
    );
}

#[test]
fn a_write_skew_is_a_g2_item_cycle() {
    let mut b = Builder::default();
    let t1 = [rd(1, &[]), rd(2, &[]), ap(1, 1)];
    let t2 = [rd(1, &[]), rd(2, &[]), ap(2, 1)];
    b.invoke(0, &t1);
    b.invoke(1, &t2);
    b.complete(0, Done, &t1);
    b.complete(1, Done, &t2);
    b.txn(2, Done, &[rd(1, &[1]), rd(2, &[1])]);
    let result = check(&b.history());
    let anomaly = only(&result, "G2-item");
    assert_eq!(anomaly.explanation.matches("(rw)").count(), 2, "{}", anomaly.explanation);
    assert_eq!(result.stats["cycles"]["G2-item"], 1);
}

#[test]
fn reads_that_disagree_on_order_are_incompatible_order() {
    let mut b = Builder::default();
    let t1 = [ap(1, 1)];
    let t2 = [ap(1, 2)];
    b.invoke(0, &t1);
    b.invoke(1, &t2);
    b.complete(0, Done, &t1);
    b.complete(1, Done, &t2);
    let r1 = b.txn(2, Done, &[rd(1, &[1, 2])]);
    let r2 = b.txn(3, Done, &[rd(1, &[2, 1])]);
    let anomaly = only(&check(&b.history()), "incompatible-order");
    assert_eq!(op_indices(&anomaly), [r1, r2]);
}

#[test]
fn a_repeated_element_is_duplicate_elements() {
    let mut b = Builder::default();
    b.txn(0, Done, &[ap(1, 1)]);
    let reader = b.txn(1, Done, &[rd(1, &[1, 1])]);
    let anomaly = only(&check(&b.history()), "duplicate-elements");
    assert_eq!(op_indices(&anomaly), [reader]);
}

#[test]
fn a_value_nobody_appended_is_a_garbage_read() {
    let mut b = Builder::default();
    b.txn(0, Done, &[ap(1, 1)]);
    let reader = b.txn(1, Done, &[rd(1, &[1, 99])]);
    let anomaly = only(&check(&b.history()), "garbage-read");
    assert_eq!(op_indices(&anomaly), [reader]);
    assert!(anomaly.explanation.contains("99"), "{}", anomaly.explanation);
}

#[test]
fn a_read_missing_its_own_append_is_internal() {
    let mut b = Builder::default();
    let t = b.txn(0, Done, &[ap(1, 5), rd(1, &[])]);
    let anomaly = only(&check(&b.history()), "internal");
    assert_eq!(op_indices(&anomaly), [t]);
    let mut b = Builder::default();
    b.txn(0, Done, &[ap(1, 1)]);
    b.txn(0, Done, &[rd(1, &[1]), ap(1, 2), rd(1, &[1])]);
    let anomaly = only(&check(&b.history()), "internal");
    assert!(anomaly.explanation.contains("imply [1, 2]"), "{}", anomaly.explanation);
}

#[test]
fn a_stale_read_after_the_write_completed_is_g_single_realtime() {
    let mut b = Builder::default();
    let writer = b.txn(0, Done, &[ap(1, 1)]);
    let stale = b.txn(1, Done, &[rd(1, &[])]);
    b.txn(2, Done, &[rd(1, &[1])]);
    let anomaly = only(&check(&b.history()), "G-single-realtime");
    assert_eq!(op_indices(&anomaly), [writer, stale]);
    assert!(anomaly.explanation.contains("(realtime)"), "{}", anomaly.explanation);
}

#[test]
fn a_stale_read_concurrent_with_the_write_is_valid() {
    let mut b = Builder::default();
    let writer = [ap(1, 1)];
    let reader = [rd(1, &[])];
    b.invoke(0, &writer);
    b.invoke(1, &reader);
    b.complete(0, Done, &writer);
    b.complete(1, Done, &reader);
    b.txn(2, Done, &[rd(1, &[1])]);
    let result = check(&b.history());
    assert_eq!(result.valid, Validity::Valid, "{result:#?}");
}

#[test]
fn an_info_txn_whose_append_was_read_joins_the_graph() {
    let mut b = Builder::default();
    let lost = [rd(1, &[]), ap(1, 2)];
    let unknown = [ap(1, 1)];
    b.invoke(0, &unknown);
    b.invoke(1, &lost);
    let u = b.complete(0, Info, &unknown);
    let l = b.complete(1, Done, &lost);
    b.txn(2, Done, &[rd(1, &[1, 2])]);
    let result = check(&b.history());
    let anomaly = only(&result, "G-single");
    assert_eq!(op_indices(&anomaly), [u, l]);
    assert_eq!(result.stats["info_committed"], 1);
}

#[test]
fn unobserved_failed_and_unknown_appends_are_harmless() {
    let mut b = Builder::default();
    b.txn(0, Done, &[ap(1, 1)]);
    b.txn(1, Fail, &[ap(1, 2), rd(2, &[7])]);
    b.txn(2, Info, &[ap(1, 3), rd(1, &[3, 3])]);
    b.invoke(3, &[ap(1, 4)]);
    b.txn(4, Done, &[rd(1, &[1])]);
    let result = check(&b.history());
    assert_eq!(result.valid, Validity::Valid, "{result:#?}");
    assert_eq!(result.stats["info"], 2, "a missing completion counts as info");
}

#[test]
fn anomalies_are_bounded_per_kind_but_all_counted() {
    let mut b = Builder::default();
    for i in 0..(MAX_ANOMALIES as u64 + 5) {
        b.txn(i, Done, &[rd(i, &[1000 + i])]);
    }
    let result = check(&b.history());
    assert_eq!(result.anomalies.len(), MAX_ANOMALIES);
    assert_eq!(result.stats["anomalies"]["garbage-read"], MAX_ANOMALIES + 5);
}

#[test]
fn a_malformed_history_is_unknown() {
    let mut b = Builder::default();
    b.invoke(0, &[ap(1, 1)]);
    b.invoke(0, &[ap(1, 2)]);
    let result = check(&b.history());
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert!(result.stats.contains_key("error"));
}

#[test]
fn a_value_appended_twice_makes_the_verdict_unknown() {
    let mut b = Builder::default();
    b.txn(0, Done, &[ap(1, 1)]);
    b.txn(1, Done, &[ap(1, 1)]);
    b.txn(2, Done, &[rd(1, &[1])]);
    let result = check(&b.history());
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert_eq!(result.stats["duplicate_appends"], 1);
}

/// The splitmix64 generator: tiny, fast, and reproducible from its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// How a simulated store behaves.
struct Sim {
    seed: u64,
    txns: usize,
    keys: u64,
    clients: u64,
    fail_percent: u64,
    info_percent: u64,
    /// Reads see the store as of the transaction's invocation (plus its own appends) instead
    /// of as of its atomic execution: not serializable.
    stale_reads: bool,
}

/// Where a simulated client is.
enum Client {
    Idle,
    /// Invoked; the snapshot its reads see when `stale_reads`.
    Invoked(Vec<Mop>, HashMap<u64, Vec<u64>>),
    /// Executed atomically; completes with these results.
    Executed(Vec<Mop>),
}

/// Executes `mops` atomically against `store`: reads see `snapshot` when given, else the store.
fn execute(store: &mut HashMap<u64, Vec<u64>>, mops: &[Mop], snapshot: Option<&HashMap<u64, Vec<u64>>>) -> Vec<Mop> {
    let mut own: HashMap<u64, Vec<u64>> = HashMap::new();
    mops.iter()
        .map(|mop| match *mop {
            Mop::Append { key, value } => {
                store.entry(key).or_default().push(value);
                own.entry(key).or_default().push(value);
                mop.clone()
            }
            Mop::Read { key, .. } => {
                let list = match snapshot {
                    Some(snapshot) => {
                        let mut list = snapshot.get(&key).cloned().unwrap_or_default();
                        list.extend(own.get(&key).into_iter().flatten());
                        list
                    }
                    None => store.get(&key).cloned().unwrap_or_default(),
                };
                Mop::Read { key, value: Some(list) }
            }
        })
        .collect()
}

/// Simulates clients against a store that executes each transaction atomically at a random
/// moment between its invocation and its completion, which is strictly serializable. Failed
/// transactions never execute; unknown ones may execute before or after their info
/// completion, or never.
fn simulate(sim: &Sim) -> History {
    let mut rng = SplitMix64(sim.seed);
    let mut b = Builder::default();
    let mut store: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut next_value = vec![0u64; sim.keys as usize];
    let mut clients: Vec<(u64, Client)> = (0..sim.clients).map(|p| (p, Client::Idle)).collect();
    let mut next_process = sim.clients;
    let mut limbo: Vec<Vec<Mop>> = Vec::new();
    let mut invoked = 0;
    while invoked < sim.txns || clients.iter().any(|(_, c)| !matches!(c, Client::Idle)) {
        if !limbo.is_empty() && rng.percent(1) {
            let mops = limbo.swap_remove(rng.below(limbo.len() as u64) as usize);
            execute(&mut store, &mops, None);
        }
        let slot = rng.below(sim.clients) as usize;
        let (process, client) = &mut clients[slot];
        match std::mem::replace(client, Client::Idle) {
            Client::Idle if invoked < sim.txns => {
                let mops: Vec<Mop> = (0..1 + rng.below(4))
                    .map(|_| {
                        let key = rng.below(sim.keys);
                        if rng.percent(50) {
                            next_value[key as usize] += 1;
                            ap(key, next_value[key as usize])
                        } else {
                            Mop::Read { key, value: None }
                        }
                    })
                    .collect();
                let snapshot = if sim.stale_reads { store.clone() } else { HashMap::new() };
                b.invoke(*process, &mops);
                invoked += 1;
                *client = Client::Invoked(mops, snapshot);
            }
            Client::Idle => {}
            Client::Invoked(mops, snapshot) => {
                if rng.percent(sim.fail_percent) {
                    b.complete(*process, Fail, &mops);
                } else if rng.percent(sim.info_percent / 2) {
                    b.complete(*process, Info, &mops);
                    if rng.percent(50) {
                        limbo.push(mops);
                    }
                    *process = next_process;
                    next_process += 1;
                } else {
                    let snapshot = sim.stale_reads.then_some(&snapshot);
                    *client = Client::Executed(execute(&mut store, &mops, snapshot));
                }
            }
            Client::Executed(results) => {
                if rng.percent(sim.info_percent / 2) {
                    b.complete(*process, Info, &results);
                    *process = next_process;
                    next_process += 1;
                } else {
                    b.complete(*process, Done, &results);
                }
            }
        }
    }
    b.history()
}

#[test]
fn a_simulated_serializable_store_with_ten_thousand_txns_is_valid() {
    let seed = 0x5EED_0001;
    let sim = Sim { seed, txns: 10_000, keys: 30, clients: 10, fail_percent: 3, info_percent: 4, stale_reads: false };
    let result = check(&simulate(&sim));
    assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
    for outcome in ["ok", "info", "fail"] {
        assert!(result.stats[outcome].as_u64().unwrap_or(0) > 0, "seed {seed:#x}: no {outcome}: {:?}", result.stats);
    }
    assert!(result.stats["info_committed"].as_u64().unwrap_or(0) > 0, "seed {seed:#x}: {:?}", result.stats);
    assert!(result.stats["edges_rw"].as_u64().unwrap_or(0) > 0, "seed {seed:#x}: {:?}", result.stats);
}

#[test]
fn twenty_thousand_txns_over_a_hundred_keys_check_in_seconds() {
    let seed = 0x5EED_0002;
    let sim = Sim { seed, txns: 20_000, keys: 100, clients: 16, fail_percent: 2, info_percent: 2, stale_reads: false };
    let history = simulate(&sim);
    let started = Instant::now();
    let result = check(&history);
    let took = started.elapsed();
    println!("checked {} events in {took:?}: {:?}", history.events.len(), result.stats);
    assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
    assert!(took.as_secs() < 60, "seed {seed:#x}: took {took:?}");
}

#[test]
fn a_simulated_store_reading_stale_snapshots_is_caught() {
    let seed = 0x5EED_0003;
    let sim = Sim { seed, txns: 5_000, keys: 20, clients: 10, fail_percent: 0, info_percent: 0, stale_reads: true };
    let result = check(&simulate(&sim));
    assert_eq!(result.valid, Validity::Invalid, "seed {seed:#x}: {:?}", result.stats);
    let cycles = result.stats["cycles"].as_object().map_or(0, |c| c.len());
    assert!(cycles > 0, "seed {seed:#x}: no cycle found: {:?}", result.stats);
    assert!(result.anomalies.iter().all(|a| !a.ops.is_empty()), "seed {seed:#x}");
}
