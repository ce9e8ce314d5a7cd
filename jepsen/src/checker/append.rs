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
//! Invariants:
//! - Only `ok` transactions contribute reads. `info` transactions contribute appends, and become
//!   graph nodes only when some read observed one of their appends (which proves they committed).
//!   `fail` transactions are never graph nodes.
//! - Every edge holds in every serialization consistent with the observations, so every cycle is
//!   a real anomaly. Edges out of reads come only from external reads: the first read of a key in
//!   a transaction, made before the transaction appended to that key.
//! - Every non-trivial strongly connected component yields at least one reported cycle, so the
//!   verdict is `valid` only when the graph is acyclic and no other anomaly was found. A history
//!   that breaks the workload's assumptions (malformed pairs, a value appended twice, an `ok` read
//!   without a value) is at best `unknown`.
//! - At most `MAX_ANOMALIES` anomalies of each kind are reported; `stats` counts all of them.
//! - Transactions are named `T(i)`, `i` being the history index of their completion (of their
//!   invocation when the history ended first); an anomaly's `ops` are those events.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde_json::{Map, Value};

use super::{Anomaly, CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, EventType, History, Mop, Op};

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

/// How many rw edges of one component are each tried with a breadth-first search when looking for
/// a G-single cycle whose existence is not already guaranteed. Bounds the work on huge
/// components; when the bound is hit the component is still reported, by its shortest cycle.
const G_SINGLE_TRIES: usize = 16;

/// How many crossing realtime edges of one component are tried when looking for a short realtime
/// cycle. Every such edge lies on some cycle, so the bound only trades cycle length for time.
const REALTIME_TRIES: usize = 4;

/// Checks a list-append history for strict serializability; see the module documentation.
pub fn check(history: &History) -> CheckResult {
    let pairs = match history.client_pairs() {
        Ok(pairs) => pairs,
        Err(err) => {
            let mut stats = Map::new();
            stats.insert("error".into(), Value::from(err.to_string()));
            return CheckResult { checker: NAME.into(), valid: Validity::Unknown, anomalies: Vec::new(), stats };
        }
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

/// Who appended a value to a key.
struct Writer {
    /// The appending transaction, by position in the transaction list.
    txn: u32,
    /// The value the same transaction appended to the same key next, if any: a value followed by
    /// another is intermediate and no other transaction may observe a state ending in it.
    later: Option<u64>,
}

/// One read of an `ok` transaction.
struct Read<'a> {
    txn: u32,
    key: u64,
    list: &'a [u64],
    /// The key's first read in its transaction, before the transaction appended to the key: only
    /// these reveal what other transactions did before this one.
    external: bool,
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

/// The events standing for `txns`, in history order, each once.
fn events_of(txns: &[Txn<'_>], ids: impl IntoIterator<Item = u32>) -> Vec<Event> {
    let mut events: Vec<&Event> = ids.into_iter().map(|t| txns[t as usize].event()).collect();
    events.sort_by_key(|e| e.index);
    events.dedup_by_key(|e| e.index);
    events.into_iter().cloned().collect()
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

/// Values for an explanation, comma-separated.
fn fmt_values(values: &[u64]) -> String {
    values.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Indexes every append of every transaction (failed ones too: reading them is G1a) by key and
/// value. Returns the index and how many appends repeated a (key, value) pair already seen; the
/// first appender of a pair is kept.
fn index_appends(txns: &[Txn<'_>]) -> (HashMap<(u64, u64), Writer>, usize) {
    let mut writers: HashMap<(u64, u64), Writer> = HashMap::new();
    let mut duplicates = 0;
    for (t, txn) in txns.iter().enumerate() {
        // The transaction's latest append per key, to link each append to the next.
        let mut latest: Vec<(u64, u64)> = Vec::new();
        for mop in txn.mops {
            let Mop::Append { key, value } = *mop else { continue };
            if writers.contains_key(&(key, value)) {
                duplicates += 1;
                continue;
            }
            writers.insert((key, value), Writer { txn: t as u32, later: None });
            match latest.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => {
                    if let Some(previous) = writers.get_mut(&(key, slot.1)) {
                        previous.later = Some(value);
                    }
                    slot.1 = value;
                }
                None => latest.push((key, value)),
            }
        }
    }
    (writers, duplicates)
}

/// A key one transaction has touched so far, for its internal consistency.
struct Touched<'a> {
    key: u64,
    /// The list the transaction last read, if it read the key.
    read: Option<&'a [u64]>,
    /// What the transaction appended to the key since (since its start if it has not read it).
    appended: Vec<u64>,
}

/// Collects the reads of `ok` transactions, checking each against the transaction's own earlier
/// reads and appends of the same key (`internal`). Returns the reads and how many `ok` reads had
/// no value.
fn collect_reads<'a>(txns: &[Txn<'a>], found: &mut Found) -> (Vec<Read<'a>>, usize) {
    let mut reads = Vec::new();
    let mut malformed = 0;
    for (t, txn) in txns.iter().enumerate() {
        if txn.outcome != EventType::Ok {
            continue;
        }
        // Transactions are short, so a vector beats a map.
        let mut state: Vec<Touched<'a>> = Vec::new();
        for mop in txn.mops {
            match mop {
                Mop::Append { key, value } => match state.iter_mut().find(|s| s.key == *key) {
                    Some(slot) => slot.appended.push(*value),
                    None => state.push(Touched { key: *key, read: None, appended: vec![*value] }),
                },
                Mop::Read { key, value } => {
                    let Some(list) = value else {
                        malformed += 1;
                        continue;
                    };
                    let list = list.as_slice();
                    let Some(slot) = state.iter_mut().find(|s| s.key == *key) else {
                        reads.push(Read { txn: t as u32, key: *key, list, external: true });
                        state.push(Touched { key: *key, read: Some(list), appended: Vec::new() });
                        continue;
                    };
                    let expected = match slot.read {
                        Some(before) => {
                            let expected: Vec<u64> = before.iter().chain(&slot.appended).copied().collect();
                            (expected != list).then(|| fmt_list(&expected))
                        }
                        None => (!list.ends_with(&slot.appended))
                            .then(|| format!("a list ending in {}", fmt_list(&slot.appended))),
                    };
                    if let Some(expected) = expected {
                        found.add("internal", || {
                            let explanation = format!(
                                "{} read key {key} = {}, but its own earlier operations on the key imply {expected}",
                                txn.name(),
                                fmt_list(list)
                            );
                            (explanation, vec![txn.event().clone()])
                        });
                    }
                    reads.push(Read { txn: t as u32, key: *key, list, external: false });
                    *slot = Touched { key: *key, read: Some(list), appended: Vec::new() };
                }
            }
        }
    }
    (reads, malformed)
}

/// What the per-key analysis learnt.
struct Keys {
    /// Per key, the version order: the longest read, without repeated values.
    orders: Vec<(u64, Vec<u64>)>,
    /// Per read: whether it is a duplicate-free prefix of its key's order, so that the value
    /// after it in the order is the next one appended after the state it saw.
    compatible: Vec<bool>,
    /// Per transaction: an `info` transaction some read observed, which therefore committed.
    committed: Vec<bool>,
}

/// A value in a read that no committed transaction could have put there.
#[derive(Clone, Copy)]
enum Bad {
    /// Nobody appended it.
    Garbage(u64),
    /// A failed transaction appended it.
    Aborted(u64, u32),
}

/// Classifies one value read from `key`, marking `info` appenders as committed.
fn inspect(
    key: u64,
    value: u64,
    txns: &[Txn<'_>],
    writers: &HashMap<(u64, u64), Writer>,
    committed: &mut [bool],
) -> Option<Bad> {
    let Some(writer) = writers.get(&(key, value)) else { return Some(Bad::Garbage(value)) };
    match txns[writer.txn as usize].outcome {
        EventType::Fail => Some(Bad::Aborted(value, writer.txn)),
        EventType::Info => {
            committed[writer.txn as usize] = true;
            None
        }
        _ => None,
    }
}

/// Infers each key's version order and checks every read against it and on its own.
fn analyse_keys(
    txns: &[Txn<'_>],
    writers: &HashMap<(u64, u64), Writer>,
    reads: &[Read<'_>],
    found: &mut Found,
) -> Keys {
    let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, read) in reads.iter().enumerate() {
        by_key.entry(read.key).or_default().push(i);
    }
    let mut keys =
        Keys { orders: Vec::new(), compatible: vec![false; reads.len()], committed: vec![false; txns.len()] };
    for (&key, group) in &by_key {
        // The longest read, the earliest in the history on ties.
        let longest = group.iter().copied().max_by_key(|&i| (reads[i].list.len(), std::cmp::Reverse(i))).unwrap_or(0);
        let full = reads[longest].list;
        // Walk the longest read once; each other read that is a prefix of it then inherits the
        // findings at positions below its length, which keeps the work linear in the longest
        // read rather than in the sum of all reads.
        let mut seen = HashSet::with_capacity(full.len());
        let mut order = Vec::with_capacity(full.len());
        let mut repeated_at = Vec::new();
        let mut bad_at = Vec::new();
        for (pos, &value) in full.iter().enumerate() {
            if !seen.insert(value) {
                repeated_at.push(pos);
                continue;
            }
            order.push(value);
            if let Some(bad) = inspect(key, value, txns, writers, &mut keys.committed) {
                bad_at.push((pos, bad));
            }
        }
        for &i in group {
            let read = &reads[i];
            let len = read.list.len();
            let (bad, repeated): (Vec<Bad>, Vec<u64>);
            if len <= full.len() && full[..len] == *read.list {
                bad = bad_at.iter().take_while(|(pos, _)| *pos < len).map(|&(_, b)| b).collect();
                repeated = repeated_at.iter().take_while(|&&pos| pos < len).map(|&pos| full[pos]).collect();
                keys.compatible[i] = repeated.is_empty();
            } else {
                let other = &txns[reads[longest].txn as usize];
                found.add("incompatible-order", || {
                    let explanation = format!(
                        "{} read key {key} = {}, but {} read key {key} = {}, which is not a prefix of it: the two \
                         reads disagree on the order of the key's appends",
                        other.name(),
                        fmt_list(full),
                        txns[read.txn as usize].name(),
                        fmt_list(read.list)
                    );
                    (explanation, events_of(txns, [reads[longest].txn, read.txn]))
                });
                let mut seen_here = HashSet::with_capacity(len);
                let mut again = Vec::new();
                let mut found_bad = Vec::new();
                for &value in read.list {
                    if !seen_here.insert(value) {
                        again.push(value);
                    } else if let Some(b) = inspect(key, value, txns, writers, &mut keys.committed) {
                        found_bad.push(b);
                    }
                }
                bad = found_bad;
                repeated = again;
            }
            report_read(txns, writers, read, &bad, &repeated, found);
        }
        keys.orders.push((key, order));
    }
    keys
}

/// Reports what is wrong with one read on its own: garbage, aborted and repeated values, and an
/// intermediate last value.
fn report_read(
    txns: &[Txn<'_>],
    writers: &HashMap<(u64, u64), Writer>,
    read: &Read<'_>,
    bad: &[Bad],
    repeated: &[u64],
    found: &mut Found,
) {
    let reader = &txns[read.txn as usize];
    let key = read.key;
    let garbage: Vec<u64> = bad.iter().filter_map(|b| if let Bad::Garbage(v) = b { Some(*v) } else { None }).collect();
    if !garbage.is_empty() {
        found.add("garbage-read", || {
            let explanation = format!(
                "{} read key {key} = {}, which contains {}, appended by no transaction",
                reader.name(),
                fmt_list(read.list),
                fmt_values(&garbage)
            );
            (explanation, vec![reader.event().clone()])
        });
    }
    let aborted: Vec<(u64, u32)> =
        bad.iter().filter_map(|b| if let Bad::Aborted(v, t) = b { Some((*v, *t)) } else { None }).collect();
    if !aborted.is_empty() {
        found.add("G1a", || {
            let sources: Vec<String> =
                aborted.iter().map(|&(v, t)| format!("{v} appended by {}", txns[t as usize].name())).collect();
            let explanation = format!(
                "{} read key {key} = {}, which contains {}, which failed (aborted read)",
                reader.name(),
                fmt_list(read.list),
                sources.join(", ")
            );
            (explanation, events_of(txns, std::iter::once(read.txn).chain(aborted.iter().map(|&(_, t)| t))))
        });
    }
    if !repeated.is_empty() {
        found.add("duplicate-elements", || {
            let explanation = format!(
                "{} read key {key} = {}, in which {} occur more than once, though each value is appended once",
                reader.name(),
                fmt_list(read.list),
                fmt_values(repeated)
            );
            (explanation, vec![reader.event().clone()])
        });
    }
    let Some(&last) = read.list.last() else { return };
    let Some(writer) = writers.get(&(key, last)) else { return };
    if writer.txn == read.txn {
        return;
    }
    if let Some(later) = writer.later {
        let appender = &txns[writer.txn as usize];
        found.add("G1b", || {
            let explanation = format!(
                "{} read key {key} = {}, ending in {last}, but {} appended {last} and then {later} to key {key}, so \
                 {last} is an intermediate state no other transaction may observe (intermediate read)",
                reader.name(),
                fmt_list(read.list),
                appender.name()
            );
            (explanation, events_of(txns, [writer.txn, read.txn]))
        });
    }
}

/// Why a data edge exists: the observation that justifies it.
enum Why<'a> {
    /// `next` directly follows `prev` in the key's order (skipping values of no committed txn).
    Ww { key: u64, prev: u64, next: u64 },
    /// The reader's read of `key` ended in the writer's value.
    Wr { key: u64, list: &'a [u64] },
    /// The reader saw `list`; `next` was appended after that state.
    Rw { key: u64, list: &'a [u64], next: u64 },
}

/// The dependency graph over committed transactions.
struct Graph<'a> {
    /// Per node, its out-edges sorted by target, each with the union of its kinds.
    adj: Vec<Vec<(u32, u8)>>,
    /// Per node, its transaction's position in the transaction list.
    txn_of: Vec<u32>,
    /// The first justification found for each data edge and kind.
    whys: HashMap<(u32, u32, u8), Why<'a>>,
}

impl Graph<'_> {
    /// The kinds of the edge `from -> to`; 0 when there is none.
    fn mask(&self, from: u32, to: u32) -> u8 {
        let edges = &self.adj[from as usize];
        edges.binary_search_by_key(&to, |&(t, _)| t).map_or(0, |i| edges[i].1)
    }
}

/// Builds the dependency graph: ww, wr and rw edges from the version orders and external reads,
/// realtime edges from the history's order.
fn build_graph<'a>(
    txns: &[Txn<'a>],
    writers: &HashMap<(u64, u64), Writer>,
    reads: &[Read<'a>],
    keys: &Keys,
) -> Graph<'a> {
    let mut node_of = vec![NONE; txns.len()];
    let mut txn_of = Vec::new();
    for (t, txn) in txns.iter().enumerate() {
        if txn.outcome == EventType::Ok || (txn.outcome == EventType::Info && keys.committed[t]) {
            node_of[t] = txn_of.len() as u32;
            txn_of.push(t as u32);
        }
    }
    let writer_node = |key: u64, value: u64| writers.get(&(key, value)).map_or(NONE, |w| node_of[w.txn as usize]);
    let mut edges: Vec<(u32, u32, u8)> = Vec::new();
    let mut whys: HashMap<(u32, u32, u8), Why<'a>> = HashMap::new();
    let mut link = |from: u32, to: u32, kind: u8, why: Option<Why<'a>>| {
        if from == to || from == NONE || to == NONE {
            return;
        }
        edges.push((from, to, kind));
        if let Some(why) = why {
            whys.entry((from, to, kind)).or_insert(why);
        }
    };

    // ww: successive values of a key's order whose appenders committed. Values of failed or
    // unknown appenders are skipped: a value earlier in the list was still appended earlier.
    for (key, order) in &keys.orders {
        let mut last: Option<(u32, u64)> = None;
        for &value in order {
            let node = writer_node(*key, value);
            if node == NONE {
                continue;
            }
            if let Some((prev_node, prev)) = last {
                link(prev_node, node, WW, Some(Why::Ww { key: *key, prev, next: value }));
            }
            last = Some((node, value));
        }
    }
    let order_of: HashMap<u64, &[u64]> = keys.orders.iter().map(|(k, o)| (*k, o.as_slice())).collect();
    for (i, read) in reads.iter().enumerate() {
        if !read.external {
            continue;
        }
        let reader = node_of[read.txn as usize];
        // wr: the state read ends in the writer's append, whatever the order says elsewhere.
        if let Some(&last) = read.list.last() {
            link(writer_node(read.key, last), reader, WR, Some(Why::Wr { key: read.key, list: read.list }));
        }
        // rw: the first committed append after the state read came after this transaction.
        if keys.compatible[i] {
            let order = order_of.get(&read.key).copied().unwrap_or(&[]);
            let next = order[read.list.len().min(order.len())..]
                .iter()
                .map(|&v| (v, writer_node(read.key, v)))
                .find(|&(_, node)| node != NONE);
            if let Some((next, node)) = next {
                link(reader, node, RW, Some(Why::Rw { key: read.key, list: read.list, next }));
            }
        }
    }

    // realtime: T1 -> T2 when T1 completed before T2 was invoked. Only the frontier is linked, as
    // in Elle: on completion a transaction gets edges from the transactions that had completed,
    // and were not yet superseded, when it was invoked, and then supersedes them, since anything
    // invoked later reaches them through it. The frontier's members overlap pairwise, so it is no
    // larger than the number of concurrent clients and the edges stay linear in the history.
    let mut timeline: Vec<(usize, u32, bool)> = Vec::new();
    for (node, &t) in txn_of.iter().enumerate() {
        let txn = &txns[t as usize];
        timeline.push((txn.invoke.index, node as u32, true));
        if txn.outcome == EventType::Ok
            && let Some(complete) = txn.complete
        {
            timeline.push((complete.index, node as u32, false));
        }
    }
    timeline.sort_unstable();
    let mut frontier: Vec<u32> = Vec::new();
    let mut before: Vec<Vec<u32>> = vec![Vec::new(); txn_of.len()];
    let mut superseded = vec![false; txn_of.len()];
    for (_, node, is_invoke) in timeline {
        let n = node as usize;
        if is_invoke {
            before[n].clone_from(&frontier);
            continue;
        }
        for &p in &before[n] {
            link(p, node, RT, None);
            superseded[p as usize] = true;
        }
        frontier.retain(|&x| !superseded[x as usize]);
        for &p in &before[n] {
            superseded[p as usize] = false;
        }
        frontier.push(node);
        before[n] = Vec::new();
    }
    // Info transactions never complete, so they only ever receive realtime edges.
    for (node, &t) in txn_of.iter().enumerate() {
        if txns[t as usize].outcome == EventType::Info {
            for &p in &before[node] {
                link(p, node as u32, RT, None);
            }
        }
    }

    edges.sort_unstable();
    let mut adj: Vec<Vec<(u32, u8)>> = vec![Vec::new(); txn_of.len()];
    for (from, to, kind) in edges {
        let out = &mut adj[from as usize];
        match out.last_mut() {
            Some((target, mask)) if *target == to => *mask |= kind,
            _ => out.push((to, kind)),
        }
    }
    Graph { adj, txn_of, whys }
}

/// Reusable per-node arrays for the graph searches, so that searching many small components costs
/// only their own size.
struct Scratch {
    /// Local index of each node in the set `components` is working on; `NONE` outside it.
    local: Vec<u32>,
    /// Membership in the set searches are confined to: `member[v] == member_gen`.
    member: Vec<u32>,
    member_gen: u32,
    /// Nodes a breadth-first search reached: `seen[v] == seen_gen`.
    seen: Vec<u32>,
    seen_gen: u32,
    parent: Vec<u32>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Self {
            local: vec![NONE; n],
            member: vec![0; n],
            member_gen: 0,
            seen: vec![0; n],
            seen_gen: 0,
            parent: vec![NONE; n],
        }
    }

    /// Confines the following searches to `nodes`.
    fn enter(&mut self, nodes: &[u32]) {
        self.member_gen += 1;
        for &v in nodes {
            self.member[v as usize] = self.member_gen;
        }
    }

    fn is_member(&self, v: u32) -> bool {
        self.member[v as usize] == self.member_gen
    }

    /// A shortest path of at least one edge from `start` to `target` inside the current set,
    /// following edges of the `allowed` kinds: its nodes, `start` first and `target` last (so
    /// `start == target` finds a shortest cycle through `start`).
    fn shortest_path(&mut self, graph: &Graph<'_>, start: u32, target: u32, allowed: u8) -> Option<Vec<u32>> {
        self.seen_gen += 1;
        let generation = self.seen_gen;
        self.seen[start as usize] = generation;
        let mut queue = VecDeque::from([start]);
        while let Some(u) = queue.pop_front() {
            for &(v, mask) in &graph.adj[u as usize] {
                if mask & allowed == 0 || !self.is_member(v) {
                    continue;
                }
                if v == target {
                    let mut path = vec![target];
                    let mut at = u;
                    path.push(at);
                    while at != start {
                        at = self.parent[at as usize];
                        path.push(at);
                    }
                    path.reverse();
                    return Some(path);
                }
                if self.seen[v as usize] != generation {
                    self.seen[v as usize] = generation;
                    self.parent[v as usize] = u;
                    queue.push_back(v);
                }
            }
        }
        None
    }
}

/// Strongly connected components of the subgraph induced by `nodes`, following only edges of the
/// `allowed` kinds (Tarjan's algorithm, iterative so that long paths cannot overflow the stack).
/// Every node is in exactly one returned component, singletons included.
fn components(graph: &Graph<'_>, nodes: &[u32], allowed: u8, scratch: &mut Scratch) -> Vec<Vec<u32>> {
    for (i, &v) in nodes.iter().enumerate() {
        scratch.local[v as usize] = i as u32;
    }
    let n = nodes.len();
    let mut index = vec![NONE; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    // The depth-first search's own stack: a node and how many of its edges it has looked at.
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let mut next_index = 0u32;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != NONE {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root as u32);
        on_stack[root] = true;
        calls.push((root as u32, 0));
        while let Some(&(v, pos)) = calls.last() {
            let vi = v as usize;
            let edges = &graph.adj[nodes[vi] as usize];
            if let Some(&(to, mask)) = edges.get(pos) {
                if let Some(top) = calls.last_mut() {
                    top.1 += 1;
                }
                let w = scratch.local[to as usize];
                if mask & allowed == 0 || w == NONE {
                    continue;
                }
                let wi = w as usize;
                if index[wi] == NONE {
                    index[wi] = next_index;
                    low[wi] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[wi] = true;
                    calls.push((w, 0));
                } else if on_stack[wi] {
                    low[vi] = low[vi].min(index[wi]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent as usize] = low[parent as usize].min(low[vi]);
            }
            if low[vi] == index[vi] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    component.push(nodes[w as usize]);
                    if w == v {
                        break;
                    }
                }
                out.push(component);
            }
        }
    }
    for &v in nodes {
        scratch.local[v as usize] = NONE;
    }
    out
}

/// The cycle searches over the dependency graph and the reports they produce.
struct CycleSearch<'g, 'a> {
    graph: &'g Graph<'a>,
    txns: &'g [Txn<'a>],
    scratch: Scratch,
    found: Found,
}

impl CycleSearch<'_, '_> {
    /// Searches every strongly connected component; returns how many non-trivial ones the whole
    /// graph (realtime edges included) has.
    fn run(&mut self) -> usize {
        let graph = self.graph;
        let n = graph.adj.len();
        let all: Vec<u32> = (0..n as u32).collect();
        let data = components(graph, &all, DATA, &mut self.scratch);
        let mut data_comp = vec![NONE; n];
        for (c, comp) in data.iter().enumerate() {
            for &v in comp {
                data_comp[v as usize] = c as u32;
            }
        }
        let mut sub_comp = vec![NONE; n];
        for comp in data.iter().filter(|c| c.len() > 1) {
            self.data_component(comp, &mut sub_comp);
        }
        let full = components(graph, &all, ALL, &mut self.scratch);
        let mut sccs = 0;
        for comp in full.iter().filter(|c| c.len() > 1) {
            sccs += 1;
            // A component that is one data component was reported above; any larger one needs a
            // realtime edge between data components to close its cycles.
            let first = data_comp[comp[0] as usize];
            if comp.iter().any(|&v| data_comp[v as usize] != first) {
                self.realtime_component(comp, &data_comp);
            }
        }
        sccs
    }

    /// Reports the cycles of one non-trivial component of the ww/wr/rw graph: a G0 cycle per
    /// component of its ww edges, a G1c cycle per component of its ww and wr edges that holds a wr
    /// edge, one G-single cycle if one is found, and otherwise its shortest cycle.
    fn data_component(&mut self, comp: &[u32], sub_comp: &mut [u32]) {
        let graph = self.graph;
        let mut reported = false;
        for sub in components(graph, comp, WW, &mut self.scratch) {
            if sub.len() < 2 {
                continue;
            }
            self.scratch.enter(&sub);
            if let Some(mut path) = self.scratch.shortest_path(graph, sub[0], sub[0], WW) {
                path.pop();
                self.report(&path, WW, None);
                reported = true;
            }
        }
        for (label, sub) in components(graph, comp, WW | WR, &mut self.scratch).into_iter().enumerate() {
            for &v in &sub {
                sub_comp[v as usize] = label as u32;
            }
            if sub.len() < 2 {
                continue;
            }
            self.scratch.enter(&sub);
            // A wr edge that is not also ww: a cycle through it is not already a G0 cycle.
            let scratch = &self.scratch;
            let wr_edge = sub.iter().find_map(|&u| {
                graph.adj[u as usize]
                    .iter()
                    .find(|&&(v, mask)| mask & (WW | WR) == WR && scratch.is_member(v))
                    .map(|&(v, _)| (u, v))
            });
            if let Some((u, v)) = wr_edge
                && let Some(path) = self.scratch.shortest_path(graph, v, u, WW | WR)
            {
                self.report(&path, WW | WR, Some(WR));
                reported = true;
            }
        }
        // G-single: an rw edge u -> v closed by a ww/wr path from v back to u. When u and v share
        // a ww/wr component the path surely exists, so those edges are tried first.
        self.scratch.enter(comp);
        let scratch = &self.scratch;
        let mut candidates: Vec<(u32, u32)> = comp
            .iter()
            .flat_map(|&u| {
                graph.adj[u as usize]
                    .iter()
                    .filter(|&&(v, mask)| mask & DATA == RW && scratch.is_member(v))
                    .map(move |&(v, _)| (u, v))
            })
            .collect();
        candidates.sort_by_key(|&(u, v)| sub_comp[u as usize] != sub_comp[v as usize]);
        for &(u, v) in candidates.iter().take(G_SINGLE_TRIES) {
            if let Some(path) = self.scratch.shortest_path(graph, v, u, WW | WR) {
                self.report(&path, WW | WR, Some(RW));
                reported = true;
                break;
            }
        }
        if !reported && let Some(mut path) = self.scratch.shortest_path(graph, comp[0], comp[0], DATA) {
            path.pop();
            self.report(&path, DATA, None);
        }
    }

    /// Reports one cycle of a component that only realtime edges hold together: through a
    /// realtime edge between two data components, preferring a two-transaction cycle, else the
    /// shortest of a few searches.
    fn realtime_component(&mut self, comp: &[u32], data_comp: &[u32]) {
        let graph = self.graph;
        self.scratch.enter(comp);
        let scratch = &self.scratch;
        let crossing: Vec<(u32, u32)> = comp
            .iter()
            .flat_map(|&u| {
                graph.adj[u as usize]
                    .iter()
                    .filter(move |&&(v, mask)| {
                        mask & RT != 0 && scratch.is_member(v) && data_comp[u as usize] != data_comp[v as usize]
                    })
                    .map(move |&(v, _)| (u, v))
            })
            .collect();
        // Every crossing edge lies on a cycle inside the component, so any one closes a cycle.
        if let Some(&(u, v)) = crossing.iter().find(|&&(u, v)| graph.mask(v, u) != 0) {
            self.report(&[v, u], ALL, None);
            return;
        }
        let mut best: Option<Vec<u32>> = None;
        for &(u, v) in crossing.iter().take(REALTIME_TRIES) {
            if let Some(path) = self.scratch.shortest_path(graph, v, u, ALL)
                && best.as_ref().is_none_or(|b| path.len() < b.len())
            {
                best = Some(path);
            }
        }
        if let Some(path) = best {
            self.report(&path, ALL, None);
        }
    }

    /// Reports the cycle through `nodes` (each linked to the next, the last to the first), naming
    /// each edge by its preferred kind among `allowed`, or `closing` for the last one.
    fn report(&mut self, nodes: &[u32], allowed: u8, closing: Option<u8>) {
        let graph = self.graph;
        let txns = self.txns;
        let len = nodes.len();
        let mut cycle: Vec<(u32, u32, u8)> = (0..len)
            .map(|i| {
                let (from, to) = (nodes[i], nodes[(i + 1) % len]);
                let mask = graph.mask(from, to) & allowed;
                let kind = closing.filter(|_| i + 1 == len).unwrap_or(mask & mask.wrapping_neg());
                (from, to, kind)
            })
            .collect();
        // Start at the earliest transaction so that the same cycle always reads the same way.
        let event_index = |node: u32| txns[graph.txn_of[node as usize] as usize].event().index;
        if let Some(start) = (0..len).min_by_key(|&i| event_index(cycle[i].0)) {
            cycle.rotate_left(start);
        }
        let kind = classify(cycle.iter().map(|&(_, _, kind)| kind));
        self.found.add_cycle(&kind, || {
            let steps: Vec<String> = cycle.iter().map(|&(from, to, k)| describe(graph, txns, from, to, k)).collect();
            let first = &txns[graph.txn_of[cycle[0].0 as usize] as usize];
            let explanation = format!(
                "{kind} cycle of {len} transactions: {}; so {} would have to precede itself",
                steps.join("; "),
                first.name()
            );
            let ops = cycle.iter().map(|&(from, _, _)| txns[graph.txn_of[from as usize] as usize].event().clone());
            (explanation, ops.collect())
        });
    }
}

/// One step of a cycle's explanation: the edge `from -> to` of `kind` and why it exists.
fn describe(graph: &Graph<'_>, txns: &[Txn<'_>], from: u32, to: u32, kind: u8) -> String {
    let txn = |node: u32| &txns[graph.txn_of[node as usize] as usize];
    let (a, b) = (txn(from), txn(to));
    if kind == RT {
        let completed = a.event().index;
        return format!(
            "{} completed (event {completed}) before {} was invoked (event {}) (realtime)",
            a.name(),
            b.name(),
            b.invoke.index
        );
    }
    match graph.whys.get(&(from, to, kind)) {
        Some(Why::Ww { key, prev, next }) => {
            format!("{} appended {prev} to key {key}, then {} appended {next} (ww)", a.name(), b.name())
        }
        Some(Why::Wr { key, list }) => format!(
            "{} appended {} to key {key} and {} read key {key} = {} (wr)",
            a.name(),
            list.last().copied().unwrap_or_default(),
            b.name(),
            fmt_list(list)
        ),
        Some(Why::Rw { key, list, next }) => {
            format!("{} read key {key} = {} before {} appended {next} (rw)", a.name(), fmt_list(list), b.name())
        }
        None => format!("{} precedes {}", a.name(), b.name()),
    }
}

/// Names a cycle by its edges as Elle does: no rw edge is G0 (ww only) or G1c (with wr), one rw
/// edge is G-single, more is G2-item; a realtime edge adds `-realtime`.
fn classify(kinds: impl Iterator<Item = u8>) -> String {
    let (mut rw, mut wr, mut rt) = (0, false, false);
    for kind in kinds {
        rw += usize::from(kind == RW);
        wr |= kind == WR;
        rt |= kind == RT;
    }
    let base = match rw {
        0 if !wr => "G0",
        0 => "G1c",
        1 => "G-single",
        _ => "G2-item",
    };
    if rt { format!("{base}-realtime") } else { base.to_owned() }
}

#[cfg(test)]
mod tests;
