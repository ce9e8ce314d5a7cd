//! Elle-style checker for the list-append workload: decides whether a history of list-append
//! transactions is strictly serializable and names every anomaly it finds with the transactions
//! that prove it.
//!
//! How it works (after Kingsbury & Alvaro, "Elle: Inferring Isolation Anomalies from
//! Experimental Observations", VLDB 2020):
//!
//! 1. Every key holds a list and every value is appended to a key at most once, so a read reveals
//!    the whole history of its key up to that moment. The longest read of a key is taken as the
//!    key's version order; every other read must be a prefix of it (`incompatible-order`).
//! 2. Reads are checked on their own: values nobody appended (`garbage-read`), values appended by
//!    failed transactions (`G1a`), states ending in another transaction's intermediate append
//!    (`G1b`), repeated values (`duplicate-elements`), and reads contradicting the reading
//!    transaction's own earlier operations (`internal`).
//! 3. A dependency graph over committed transactions gets ww, wr and rw edges from the version
//!    orders, and realtime edges from the history's order. Every strongly connected component
//!    holds a cycle; the cycles found are classified by their edges as `G0`, `G1c`, `G-single` or
//!    `G2-item`, with a `-realtime` suffix when the cycle needs a realtime edge.
//!
//! Steps 1 and 2 live in the `reads` submodule, the graph of step 3 in `graph`, the strongly
//! connected components and shortest paths it is searched with in `scc`, and the cycles found
//! and how they are named in `cycles`.
//!
//! Invariants:
//! - Only `ok` transactions contribute reads; `fail` transactions are never graph nodes (see
//!   `reads` and `graph` for how `info` transactions count).
//! - Every cycle reported is a real anomaly, and every non-trivial strongly connected component
//!   yields at least one reported cycle, so the verdict is `valid` only when the graph is acyclic
//!   and no other anomaly was found. A history that breaks the workload's assumptions (malformed
//!   pairs, a value appended twice, an `ok` read without a value) is at best `unknown`.
//! - At most `MAX_ANOMALIES` anomalies of each kind are reported; `stats` counts all of them.
//! - Transactions are named `T(i)`, `i` being the history index of their completion (of their
//!   invocation when the history ended first); an anomaly's `ops` are those events.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::{Anomaly, CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, EventType, History, Mop, Op};

mod cycles;
mod graph;
mod reads;
mod scc;

use cycles::CycleSearch;
use graph::build_graph;
use reads::{analyse_keys, collect_reads, index_appends};
use scc::Scratch;

/// The checker's name, as reported in its `CheckResult`.
const NAME: &str = "append";

/// Edge kinds, as bits so that one edge between two transactions can carry several. The bit
/// order is also the order of preference when a cycle's edge has several kinds: ww before wr
/// before rw before realtime names the cycle after the most severe anomaly it shows, as Elle does.
const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;
const DATA: u8 = WW | WR | RW;
const ALL: u8 = DATA | RT;

/// Marks "no node" or "not in the current set" in index arrays.
const NONE: u32 = u32::MAX;

/// Checks a list-append history for strict serializability; see the module documentation.
pub fn check(history: &History) -> CheckResult {
    let pairs = match history.client_pairs() {
        Ok(pairs) => pairs,
        Err(err) => return CheckResult::unreadable(NAME, &err),
    };
    let txns: Vec<Txn<'_>> = pairs
        .iter()
        .filter_map(|pair| {
            let Op::Txn { mops: invoked } = &pair.invoke.op else { return None };
            let outcome = pair.outcome();
            // Only an ok completion's reads are known; otherwise the invocation says what was tried.
            let mops = match (outcome, pair.complete.map(|c| &c.op)) {
                (EventType::Ok, Some(Op::Txn { mops })) => mops.as_slice(),
                _ => invoked.as_slice(),
            };
            Some(Txn { invoke: pair.invoke, complete: pair.complete, outcome, mops })
        })
        .collect();

    let mut found = Found::default();
    let (writers, duplicate_appends) = index_appends(&txns);
    let (reads, malformed_reads) = collect_reads(&txns, &mut found);
    let keys = analyse_keys(&txns, &writers, &reads, &mut found);
    let graph = build_graph(&txns, &writers, &reads, &keys);
    let mut search = CycleSearch { graph: &graph, txns: &txns, scratch: Scratch::new(graph.adj.len()), found };
    let sccs = search.run();
    let found = search.found;

    let count = |outcome: EventType| txns.iter().filter(|t| t.outcome == outcome).count();
    let mut edge_counts = [0usize; 4];
    let mut pairs_linked = 0usize;
    for &(_, mask) in graph.adj.iter().flatten() {
        pairs_linked += 1;
        for (slot, bit) in [WW, WR, RW, RT].into_iter().enumerate() {
            edge_counts[slot] += usize::from(mask & bit != 0);
        }
    }
    let mut touched: HashSet<u64> = writers.keys().map(|&(key, _)| key).collect();
    touched.extend(reads.iter().map(|r| r.key));

    let mut stats = Map::new();
    stats.insert("txns".into(), Value::from(txns.len()));
    stats.insert("ok".into(), Value::from(count(EventType::Ok)));
    stats.insert("info".into(), Value::from(count(EventType::Info)));
    stats.insert("fail".into(), Value::from(count(EventType::Fail)));
    stats.insert("info_committed".into(), Value::from(keys.committed.iter().filter(|&&c| c).count()));
    stats.insert("keys".into(), Value::from(touched.len()));
    stats.insert("nodes".into(), Value::from(graph.adj.len()));
    stats.insert("edges".into(), Value::from(pairs_linked));
    for (name, n) in ["edges_ww", "edges_wr", "edges_rw", "edges_realtime"].into_iter().zip(edge_counts) {
        stats.insert(name.into(), Value::from(n));
    }
    stats.insert("sccs".into(), Value::from(sccs));
    let as_object = |counts: &BTreeMap<String, usize>| {
        Value::Object(counts.iter().map(|(kind, &n)| (kind.clone(), Value::from(n))).collect())
    };
    stats.insert("cycles".into(), as_object(&found.cycle_counts));
    stats.insert("anomalies".into(), as_object(&found.counts));
    if duplicate_appends > 0 {
        stats.insert("duplicate_appends".into(), Value::from(duplicate_appends));
    }
    if malformed_reads > 0 {
        stats.insert("malformed_reads".into(), Value::from(malformed_reads));
    }

    let valid = if !found.anomalies.is_empty() {
        Validity::Invalid
    } else if duplicate_appends > 0 || malformed_reads > 0 {
        // The analysis assumes unique appends and known reads; without them a clean graph proves
        // nothing.
        Validity::Unknown
    } else {
        Validity::Valid
    };
    CheckResult { checker: NAME.into(), valid, anomalies: found.anomalies, stats }
}

/// One transaction of the history, whatever its outcome.
struct Txn<'a> {
    invoke: &'a Event,
    complete: Option<&'a Event>,
    outcome: EventType,
    /// The completion's micro-ops for `ok` transactions (reads carry values), else the invocation's.
    mops: &'a [Mop],
}

impl<'a> Txn<'a> {
    /// The event that stands for the transaction in reports.
    fn event(&self) -> &'a Event {
        self.complete.unwrap_or(self.invoke)
    }

    fn name(&self) -> String {
        format!("T({})", self.event().index)
    }
}

/// Anomalies found so far, bounded per kind, and how many of each kind there were.
#[derive(Default)]
struct Found {
    anomalies: Vec<Anomaly>,
    counts: BTreeMap<String, usize>,
    cycle_counts: BTreeMap<String, usize>,
}

impl Found {
    /// Counts a non-cycle anomaly, building its report only while under the bound.
    fn add(&mut self, kind: &str, build: impl FnOnce() -> (String, Vec<Event>)) {
        let count = self.counts.entry(kind.to_owned()).or_default();
        *count += 1;
        if *count <= MAX_ANOMALIES {
            let (explanation, ops) = build();
            self.anomalies.push(Anomaly { kind: kind.to_owned(), explanation, ops });
        }
    }

    /// Counts a cycle, building its report only while under the bound.
    fn add_cycle(&mut self, kind: &str, build: impl FnOnce() -> (String, Vec<Event>)) {
        let count = self.cycle_counts.entry(kind.to_owned()).or_default();
        *count += 1;
        if *count <= MAX_ANOMALIES {
            let (explanation, ops) = build();
            self.anomalies.push(Anomaly { kind: kind.to_owned(), explanation, ops });
        }
    }
}

/// A list for an explanation; long lists keep their ends, which are what the analysis cites.
fn fmt_list(list: &[u64]) -> String {
    const ENDS: usize = 6;
    if list.len() <= 2 * ENDS {
        return format!("{list:?}");
    }
    let head: Vec<String> = list[..ENDS].iter().map(u64::to_string).collect();
    let tail: Vec<String> = list[list.len() - ENDS..].iter().map(u64::to_string).collect();
    format!("[{}, ..., {}] ({} values)", head.join(", "), tail.join(", "), list.len())
}

#[cfg(test)]
mod tests;
