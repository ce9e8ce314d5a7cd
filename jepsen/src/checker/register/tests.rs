//! Tests of the register module: each named after the property it protects.

use super::minimize::{Weakening, cut, shrink, weaken};
use super::search::Budget;
use super::*;
use crate::checker::Anomaly;
use crate::history::{Event, Fault, Mop, Process};

/// Builds histories by hand: events are numbered as they are added.
#[derive(Default)]
struct Builder {
    events: Vec<Event>,
}

impl Builder {
    fn push(&mut self, process: Process, kind: EventType, op: Op) -> usize {
        let index = self.events.len();
        let time_ns = u64::try_from(index).unwrap() * 1_000;
        self.events.push(Event { index, time_ns, process, kind, op, node: None, error: None });
        index
    }

    fn invoke(&mut self, process: u64, op: Op) -> usize {
        let op = match op {
            Op::Read { key, .. } => Op::Read { key, value: None },
            op => op,
        };
        self.push(Process::Client(process), EventType::Invoke, op)
    }

    fn complete(&mut self, process: u64, kind: EventType, op: Op) -> usize {
        self.push(Process::Client(process), kind, op)
    }

    /// An operation that runs alone: invoked and completed `ok` at once. Returns the
    /// completion's index.
    fn ok(&mut self, process: u64, op: Op) -> usize {
        self.invoke(process, op.clone());
        self.complete(process, EventType::Ok, op)
    }

    fn history(self) -> History {
        History { events: self.events }
    }
}

fn read(key: u64, value: Option<u64>) -> Op {
    Op::Read { key, value }
}

fn write(key: u64, value: u64) -> Op {
    Op::Write { key, value }
}

fn cas(key: u64, from: u64, to: u64) -> Op {
    Op::Cas { key, from, to }
}

fn run(history: &History) -> CheckResult {
    check(history, &Limits::default())
}

fn stat(result: &CheckResult, name: &str) -> u64 {
    result.stats[name].as_u64().unwrap()
}

fn indexes(anomaly: &Anomaly) -> Vec<usize> {
    anomaly.ops.iter().map(|event| event.index).collect()
}

#[test]
fn an_empty_history_is_valid() {
    let result = run(&History::default());
    assert_eq!(result.valid, Validity::Valid);
    assert_eq!(result.checker, "linearizable-register");
    assert_eq!(stat(&result, "keys"), 0);
}

#[test]
fn reads_concurrent_with_writes_may_see_either_value() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    b.invoke(1, write(1, 2));
    b.invoke(2, read(1, None));
    b.invoke(3, read(1, None));
    b.complete(2, EventType::Ok, read(1, Some(1)));
    b.invoke(4, read(1, None));
    b.complete(3, EventType::Ok, read(1, Some(2)));
    b.complete(1, EventType::Ok, write(1, 2));
    b.complete(4, EventType::Ok, read(1, Some(2)));
    b.ok(0, read(1, Some(2)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Valid, "{result:?}");
    assert_eq!(stat(&result, "ops_checked"), 6);
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    let mut b = Builder::default();
    b.invoke(0, write(1, 1));
    b.invoke(1, write(1, 2));
    b.complete(0, EventType::Ok, write(1, 1));
    b.complete(1, EventType::Ok, write(1, 2));
    b.ok(2, read(1, Some(1)));
    b.ok(2, read(1, Some(1)));
    assert_eq!(run(&b.history()).valid, Validity::Valid);
}

#[test]
fn a_read_of_an_absent_key_before_any_write_is_valid() {
    let mut b = Builder::default();
    b.ok(0, read(1, None));
    b.ok(0, write(1, 1));
    b.ok(0, read(1, Some(1)));
    assert_eq!(run(&b.history()).valid, Validity::Valid);
}

#[test]
fn a_stale_read_after_a_completed_write_is_found_with_the_minimal_ops() {
    let mut b = Builder::default();
    let first = b.ok(0, write(1, 1));
    b.ok(1, read(1, Some(1)));
    b.ok(2, write(2, 7));
    let second = b.ok(0, write(1, 2));
    b.ok(1, read(1, Some(2)));
    b.ok(2, read(2, Some(7)));
    let stale = b.ok(1, read(1, Some(1)));
    b.ok(0, read(1, Some(2)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Invalid);
    assert_eq!(result.anomalies.len(), 1);
    let anomaly = &result.anomalies[0];
    assert_eq!(anomaly.kind, "nonlinearizable");
    assert_eq!(indexes(anomaly), vec![first, second, stale], "{}", anomaly.explanation);
    let text = &anomaly.explanation;
    assert!(text.starts_with(&format!("key 1: read at index {stale} returned 1")), "{text}");
    assert!(text.contains("it could only have returned 2"), "{text}");
    assert!(text.contains(&format!("write 2 (index {second}, completed before it began)")), "{text}");
    assert_eq!(stat(&result, "keys_invalid"), 1);
    assert_eq!(stat(&result, "keys"), 2);
}

#[test]
fn a_lost_write_is_found_at_the_first_read_that_misses_it() {
    let mut b = Builder::default();
    let old = b.ok(0, write(1, 1));
    b.ok(1, read(1, Some(1)));
    let lost = b.ok(0, write(1, 2));
    let first_miss = b.ok(1, read(1, Some(1)));
    b.ok(2, read(1, Some(1)));
    b.ok(1, read(1, Some(1)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Invalid);
    let anomaly = &result.anomalies[0];
    assert_eq!(indexes(anomaly), vec![old, lost, first_miss], "{}", anomaly.explanation);
}

#[test]
fn a_read_of_a_value_never_written_is_invalid() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    let read_at = b.ok(1, read(1, Some(9)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Invalid);
    let anomaly = &result.anomalies[0];
    assert_eq!(indexes(anomaly), vec![read_at]);
    assert!(anomaly.explanation.contains("could have set 9"), "{}", anomaly.explanation);
}

#[test]
fn a_cas_from_the_current_value_is_valid() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    b.ok(1, cas(1, 1, 2));
    b.ok(0, read(1, Some(2)));
    b.ok(1, cas(1, 2, 3));
    b.ok(0, read(1, Some(3)));
    assert_eq!(run(&b.history()).valid, Validity::Valid);
}

#[test]
fn a_cas_that_succeeded_from_a_value_never_present_is_invalid() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    let bad = b.ok(1, cas(1, 5, 6));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Invalid);
    let anomaly = &result.anomalies[0];
    assert_eq!(indexes(anomaly), vec![bad], "{}", anomaly.explanation);
    let text = &anomaly.explanation;
    assert!(text.contains(&format!("cas 5->6 at index {bad} succeeded")), "{text}");
    assert!(text.contains("could have set 5"), "{text}");
}

#[test]
fn a_cas_that_succeeded_after_its_expected_value_was_overwritten_is_invalid() {
    let mut b = Builder::default();
    let first = b.ok(0, write(1, 1));
    let second = b.ok(0, write(1, 2));
    let bad = b.ok(1, cas(1, 1, 3));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Invalid);
    let anomaly = &result.anomalies[0];
    assert_eq!(indexes(anomaly), vec![first, second, bad], "{}", anomaly.explanation);
    assert!(anomaly.explanation.contains("the register could only have held 2"), "{}", anomaly.explanation);
}

#[test]
fn a_failed_cas_is_dropped() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    b.invoke(1, cas(1, 1, 2));
    b.complete(1, EventType::Fail, cas(1, 1, 2));
    b.ok(0, read(1, Some(1)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Valid);
    assert_eq!(stat(&result, "dropped_failed"), 1);
}

#[test]
fn failed_operations_are_dropped() {
    let mut b = Builder::default();
    b.invoke(0, write(1, 1));
    b.complete(0, EventType::Fail, write(1, 1));
    b.ok(1, read(1, None));
    assert_eq!(run(&b.history()).valid, Validity::Valid);

    let mut b = Builder::default();
    b.invoke(0, write(1, 1));
    b.complete(0, EventType::Fail, write(1, 1));
    b.ok(1, read(1, Some(1)));
    assert_eq!(run(&b.history()).valid, Validity::Invalid, "a failed write cannot be read");
}

#[test]
fn an_info_write_that_may_have_happened_later_makes_an_otherwise_stale_read_valid() {
    let mut b = Builder::default();
    b.invoke(0, write(1, 1));
    b.complete(0, EventType::Info, write(1, 1));
    b.ok(1, write(1, 2));
    b.ok(1, read(1, Some(1)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Valid, "{result:?}");
    assert_eq!(stat(&result, "info_ops"), 1);
}

#[test]
fn a_write_with_no_completion_may_take_effect_any_time_after_its_invocation() {
    let mut b = Builder::default();
    b.ok(1, write(1, 2));
    b.invoke(0, write(1, 1));
    b.ok(1, read(1, Some(2)));
    b.ok(1, read(1, Some(1)));
    assert_eq!(run(&b.history()).valid, Validity::Valid);
}

#[test]
fn an_info_write_cannot_take_effect_before_its_invocation() {
    let mut b = Builder::default();
    b.ok(1, read(1, Some(1)));
    b.invoke(0, write(1, 1));
    b.complete(0, EventType::Info, write(1, 1));
    assert_eq!(run(&b.history()).valid, Validity::Invalid);
}

#[test]
fn an_info_write_takes_effect_at_most_once() {
    let mut b = Builder::default();
    b.invoke(0, write(1, 1));
    b.complete(0, EventType::Info, write(1, 1));
    b.ok(1, read(1, Some(1)));
    b.ok(1, write(1, 2));
    b.ok(1, read(1, Some(1)));
    assert_eq!(run(&b.history()).valid, Validity::Invalid);
}

#[test]
fn an_info_cas_that_may_have_succeeded_explains_a_read_of_its_new_value() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    b.invoke(1, cas(1, 1, 2));
    b.complete(1, EventType::Info, cas(1, 1, 2));
    b.ok(0, read(1, Some(1)));
    b.ok(0, read(1, Some(2)));
    assert_eq!(run(&b.history()).valid, Validity::Valid);

    let mut b = Builder::default();
    b.ok(0, write(1, 3));
    b.invoke(1, cas(1, 1, 2));
    b.complete(1, EventType::Info, cas(1, 1, 2));
    b.ok(0, read(1, Some(2)));
    assert_eq!(run(&b.history()).valid, Validity::Invalid, "the cas could not have succeeded from 3");
}

#[test]
fn an_info_read_carries_no_information() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    b.invoke(1, read(1, None));
    b.complete(1, EventType::Info, read(1, Some(42)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Valid);
    assert_eq!(stat(&result, "dropped_info_reads"), 1);
    assert_eq!(stat(&result, "ops_checked"), 1);
}

#[test]
fn keys_are_checked_independently() {
    let mut b = Builder::default();
    b.ok(0, write(1, 1));
    b.ok(0, write(2, 1));
    b.ok(0, read(1, Some(1)));
    b.ok(0, read(2, Some(1)));
    b.ok(0, write(3, 5));
    b.ok(0, read(3, None));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Invalid);
    assert_eq!(stat(&result, "keys"), 3);
    assert_eq!(stat(&result, "keys_invalid"), 1);
    assert_eq!(result.anomalies.len(), 1);
    assert!(result.anomalies[0].explanation.starts_with("key 3:"), "{}", result.anomalies[0].explanation);
}

#[test]
fn nemesis_and_transaction_events_are_ignored() {
    let mut b = Builder::default();
    let fault = Fault { kind: "kill".into(), targets: vec!["n1".into()], detail: String::new() };
    b.push(Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()));
    b.ok(0, write(1, 1));
    b.push(Process::Nemesis, EventType::Ok, Op::Start(fault));
    b.ok(1, Op::Txn { mops: vec![Mop::Append { key: 1, value: 3 }] });
    b.ok(0, read(1, Some(1)));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Valid);
    assert_eq!(stat(&result, "ops_checked"), 2);
}

#[test]
fn a_malformed_history_is_unknown() {
    let mut b = Builder::default();
    b.complete(0, EventType::Ok, write(1, 1));
    let result = run(&b.history());
    assert_eq!(result.valid, Validity::Unknown);
    assert!(result.stats.contains_key("error"));
}

/// Appends `writes` sequential writes to `key`, each read back once.
fn sequential(b: &mut Builder, key: u64, writes: u64) {
    for value in 1..=writes {
        b.ok(0, write(key, value));
        b.ok(1, read(key, Some(value)));
    }
}

#[test]
fn a_search_that_reaches_its_bound_makes_the_key_unknown() {
    let tight = Limits { max_states_per_key: 3 };
    let mut b = Builder::default();
    sequential(&mut b, 1, 10);
    let history = b.history();
    assert_eq!(run(&history).valid, Validity::Valid);
    let result = check(&history, &tight);
    assert_eq!(result.valid, Validity::Unknown, "{result:?}");
    assert!(result.anomalies.is_empty());
    assert_eq!(stat(&result, "keys_unknown"), 1);
    assert_eq!(result.stats["unknown_keys"], serde_json::json!([1]));
}

#[test]
fn an_invalid_key_outweighs_an_unknown_one() {
    let mut b = Builder::default();
    sequential(&mut b, 1, 10);
    b.ok(0, write(2, 1));
    b.ok(0, write(2, 2));
    b.ok(0, read(2, Some(1)));
    let result = check(&b.history(), &Limits { max_states_per_key: 3 });
    assert_eq!(result.valid, Validity::Invalid);
    assert_eq!(stat(&result, "keys_unknown"), 1);
    assert_eq!(stat(&result, "keys_invalid"), 1);
}

/// A small, fast, seedable generator (splitmix64), so the randomized histories are the same
/// on every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next_u64() % u64::try_from(bound).unwrap()).unwrap()
    }

    fn percent(&mut self, chance: usize) -> bool {
        self.below(100) < chance
    }
}

/// Whether `ops` are linearizable, by trying every order of every subset that includes the
/// completed operations, with no cache and no pruning: the reference the search must agree
/// with.
fn brute_force(ops: &[KeyOp]) -> bool {
    fn extend(ops: &[KeyOp], used: &mut [bool], state: Option<u64>) -> bool {
        if ops.iter().zip(used.iter()).all(|(op, &used)| used || op.ret.is_none()) {
            return true;
        }
        for next in 0..ops.len() {
            let blocked = ops
                .iter()
                .zip(used.iter())
                .any(|(other, &used)| !used && other.ret.is_some_and(|ret| ret < ops[next].call));
            if used[next] || blocked {
                continue;
            }
            if let Some(after) = ops[next].step.apply(state) {
                used[next] = true;
                let found = extend(ops, used, after);
                used[next] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    extend(ops, &mut vec![false; ops.len()], None)
}

/// A short random history on key 0 by three clients, with values from a small range (so
/// writes repeat values) and every kind of outcome: most are not linearizable, some are.
fn random_small_history(rng: &mut SplitMix64) -> History {
    let mut b = Builder::default();
    let mut processes = [0, 1, 2];
    let mut next_process = 3;
    let mut in_flight: [Option<Op>; 3] = [None, None, None];
    let total = 3 + rng.below(5);
    let mut invoked = 0;
    let value = |rng: &mut SplitMix64| rng.below(3) as u64 + 1;
    while invoked < total || in_flight.iter().any(Option::is_some) {
        let worker = rng.below(3);
        let process = processes[worker];
        match in_flight[worker].take() {
            None if invoked < total => {
                let op = match rng.below(3) {
                    0 => read(0, None),
                    1 => write(0, value(rng)),
                    _ => cas(0, value(rng), value(rng)),
                };
                b.invoke(process, op.clone());
                in_flight[worker] = Some(op);
                invoked += 1;
            }
            None => {}
            Some(op) => {
                let roll = rng.below(10);
                if roll < 3 {
                    // No completion at all, or an unknown one; either way the client
                    // carries on as a new process.
                    if roll > 0 {
                        b.complete(process, EventType::Info, op);
                    }
                    processes[worker] = next_process;
                    next_process += 1;
                } else if roll == 3 {
                    b.complete(process, EventType::Fail, op);
                } else if let Op::Read { key, .. } = op {
                    let read_value = [None, Some(1), Some(2), Some(3)][rng.below(4)];
                    b.complete(process, EventType::Ok, read(key, read_value));
                } else {
                    b.complete(process, EventType::Ok, op);
                }
            }
        }
    }
    b.history()
}

#[test]
fn the_search_cut_and_proof_agree_with_brute_force_on_small_random_histories() {
    let seed = 0xB0B5_1EED_0000_0001;
    let mut rng = SplitMix64(seed);
    let (mut linearizable, mut not_linearizable) = (0, 0);
    for round in 0..3_000 {
        let history = random_small_history(&mut rng);
        let pairs = history.client_pairs().unwrap();
        let ops = collect(&pairs).keys.remove(&0).unwrap_or_default();
        let expected = brute_force(&ops);
        let outcome = search(&ops, usize::MAX);
        let verdict = check(&history, &Limits::default()).valid;
        let context = || format!("seed {seed:#x}, round {round}: {:#?}", history.events);
        assert_eq!(outcome.verdict == Verdict::Linearizable, expected, "{}", context());
        assert_eq!(verdict == Validity::Valid, expected, "{}", context());
        if expected {
            linearizable += 1;
            continue;
        }
        not_linearizable += 1;
        // The search stops exactly at the first completion that breaks linearizability.
        assert!(!brute_force(&cut(&ops, outcome.furthest)), "{}", context());
        for end in ops.iter().filter_map(|op| op.ret).filter(|&end| end < outcome.furthest) {
            assert!(brute_force(&cut(&ops, end)), "cut at {end}: {}", context());
        }
        let culprit = ops.iter().find(|op| op.ret == Some(outcome.furthest)).unwrap();
        let proof = shrink(cut(&ops, outcome.furthest), culprit, &mut Budget { remaining: usize::MAX });
        assert!(!brute_force(&proof), "proof {proof:?}: {}", context());
        for op in &proof {
            let original = ops.iter().find(|original| original.pair == op.pair).unwrap();
            let weaker_or_same = op.step == original.step && (op.ret.is_none() || op.ret == original.ret);
            assert!(weaker_or_same, "{op:?} is stronger than {original:?}: {}", context());
        }
        // One-minimal: weakening any one more operation makes it linearizable.
        for (position, op) in proof.iter().enumerate().filter(|(_, op)| op.pair != culprit.pair) {
            for weakening in [Weakening::DropReads, Weakening::Unconfirm] {
                if let Some(weaker) = weaken(&proof, position..position + 1, culprit.pair, weakening) {
                    assert!(brute_force(&weaker), "{op:?} is not needed in {proof:?}: {}", context());
                }
            }
        }
    }
    assert!(linearizable > 300 && not_linearizable > 300, "{linearizable} valid, {not_linearizable} invalid");
}

/// A client's operation in flight, with its result once it has taken effect.
struct InFlight {
    op: Op,
    result: Option<(EventType, Op)>,
}

/// Applies `op` to the simulated store; returns the completion it earns.
fn apply(registers: &mut BTreeMap<u64, Option<u64>>, op: &Op) -> (EventType, Op) {
    match *op {
        Op::Read { key, .. } => (EventType::Ok, read(key, registers.get(&key).copied().flatten())),
        Op::Write { key, value } => {
            registers.insert(key, Some(value));
            (EventType::Ok, op.clone())
        }
        Op::Cas { key, from, to } => {
            let register = registers.entry(key).or_default();
            if *register == Some(from) {
                *register = Some(to);
                (EventType::Ok, op.clone())
            } else {
                (EventType::Fail, op.clone())
            }
        }
        _ => unreachable!("only register operations are simulated"),
    }
}

/// Simulates `concurrency` clients running `ops` random register operations on `keys` keys
/// against a store that is linearizable by construction: each operation takes effect at one
/// step between its invocation and its completion. Some operations time out (`info`), before
/// or after taking effect; some of those that timed out before still take effect later, at a
/// random step; the operations in flight at the end never complete.
fn simulate(seed: u64, ops: usize, keys: usize, concurrency: usize) -> History {
    let mut rng = SplitMix64(seed);
    let mut b = Builder::default();
    let mut registers: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut processes: Vec<u64> = (0..u64::try_from(concurrency).unwrap()).collect();
    let mut in_flight: Vec<Option<InFlight>> = (0..concurrency).map(|_| None).collect();
    let mut next_process = processes.len() as u64;
    let mut late: Vec<Op> = Vec::new();
    let mut next_value = 1;
    let mut invoked = 0;
    while invoked < ops {
        let worker = rng.below(concurrency + 1);
        if worker == concurrency {
            if !late.is_empty() {
                let op = late.swap_remove(rng.below(late.len()));
                apply(&mut registers, &op);
            }
            continue;
        }
        let process = processes[worker];
        match in_flight[worker].take() {
            None => {
                let key = rng.below(keys) as u64;
                let roll = rng.below(100);
                let op = if roll < 45 {
                    read(key, None)
                } else if roll < 80 {
                    next_value += 1;
                    write(key, next_value)
                } else {
                    let current = registers.get(&key).copied().flatten();
                    let from = match current {
                        Some(value) if rng.percent(70) => value,
                        _ => rng.below(next_value as usize + 1) as u64,
                    };
                    next_value += 1;
                    cas(key, from, next_value)
                };
                b.invoke(process, op.clone());
                in_flight[worker] = Some(InFlight { op, result: None });
                invoked += 1;
            }
            Some(InFlight { op, result: None }) => {
                if rng.percent(3) {
                    if rng.percent(50) {
                        late.push(op.clone());
                    }
                    b.complete(process, EventType::Info, op);
                    processes[worker] = next_process;
                    next_process += 1;
                } else {
                    let result = apply(&mut registers, &op);
                    in_flight[worker] = Some(InFlight { op, result: Some(result) });
                }
            }
            Some(InFlight { op, result: Some((kind, completion)) }) => {
                if rng.percent(2) {
                    b.complete(process, EventType::Info, op);
                    processes[worker] = next_process;
                    next_process += 1;
                } else {
                    b.complete(process, kind, completion);
                }
            }
        }
    }
    b.history()
}

const SEED: u64 = 0x5EED_2024_0BAD_CAFE;
const BIG_OPS: usize = 20_000;
const BIG_KEYS: usize = 20;
const BIG_CONCURRENCY: usize = 10;

#[test]
fn a_large_randomized_linearizable_history_is_valid() {
    let history = simulate(SEED, BIG_OPS, BIG_KEYS, BIG_CONCURRENCY);
    let result = run(&history);
    assert_eq!(result.valid, Validity::Valid, "seed {SEED:#x}: {:?}", result.anomalies.first());
    assert!(stat(&result, "info_ops") > 0, "seed {SEED:#x}: the history should have unknown outcomes");
    assert!(stat(&result, "ops_checked") > 15_000, "seed {SEED:#x}: {:?}", result.stats);
}

/// Makes one `ok` read (in the second half of the history) return a value overwritten before
/// it began: write `a` completed, then a write invoked after that completed, then the read
/// began. Returns the indexes of the read's completion and of write `a`'s completion.
fn make_one_read_stale(history: &mut History) -> Option<(usize, usize)> {
    let pairs = history.client_pairs().unwrap();
    let mut writes: BTreeMap<u64, Vec<(usize, usize, u64)>> = BTreeMap::new();
    let mut reads = Vec::new();
    for pair in &pairs {
        let Some(complete) = pair.complete.filter(|complete| complete.kind == EventType::Ok) else { continue };
        match pair.invoke.op {
            Op::Write { key, value } => writes.entry(key).or_default().push((pair.invoke.index, complete.index, value)),
            Op::Read { key, .. } => reads.push((key, pair.invoke.index, complete.index)),
            _ => {}
        }
    }
    let (read_at, stale_write) = reads.iter().skip(reads.len() / 2).find_map(|&(key, call, ret)| {
        let writes = writes.get(&key)?;
        let overwrite = writes.iter().filter(|w| w.1 < call).max_by_key(|w| w.1)?;
        let stale = writes.iter().filter(|w| w.1 < overwrite.0).max_by_key(|w| w.1)?;
        Some(((key, ret), *stale))
    })?;
    let (key, ret) = read_at;
    history.events[ret].op = read(key, Some(stale_write.2));
    Some((ret, stale_write.1))
}

#[test]
fn the_large_history_with_one_stale_read_is_invalid() {
    let mut history = simulate(SEED, BIG_OPS, BIG_KEYS, BIG_CONCURRENCY);
    let (read_at, write_at) = make_one_read_stale(&mut history).expect("a read to make stale");
    let result = run(&history);
    assert_eq!(result.valid, Validity::Invalid, "seed {SEED:#x}: read at {read_at}");
    assert_eq!(stat(&result, "keys_invalid"), 1, "seed {SEED:#x}");
    let anomaly = &result.anomalies[0];
    let ops = indexes(anomaly);
    assert!(ops.contains(&read_at) && ops.contains(&write_at), "seed {SEED:#x}: {ops:?}: {}", anomaly.explanation);
    assert!(ops.len() <= 5, "seed {SEED:#x}: not minimal: {ops:?}: {}", anomaly.explanation);
}
