//! Linearizability checker for a set of independent registers (the `read`/`write`/`cas`
//! workload).
//!
//! Each key is a register holding an `Option<u64>` that starts absent (`None`). Linearizability is
//! compositional over independent objects, so a history is linearizable exactly when every key's
//! sub-history is, and each key is checked on its own; that is what keeps the search small.
//!
//! How outcomes are read:
//! - `ok`: the operation took effect at one instant between its invocation and its completion;
//! - `fail`: it certainly did not take effect, so it is dropped;
//! - `info`, or no completion at all: it may have taken effect at any instant after its
//!   invocation, or never. An unknown read is dropped, since it constrains nothing.
//!
//! Real time is history order: operation A precedes B when A's completion comes before B's
//! invocation in the history.
//!
//! Per key the checker runs the Wing & Gong / Lowe search, as knossos and porcupine do: the
//! invocations and completions form a doubly linked list in history order; the search repeatedly
//! linearizes an operation whose invocation precedes every completion still in the list (lifting
//! both its entries out), checks it against the register model, and backtracks (unlifting) when
//! it reaches a completion whose operation it could not linearize. Configurations already seen
//! (which operations are linearized, the register's value) are cached and not explored twice.
//! Operations of unknown outcome have no completion in the list, so they stay candidates forever;
//! to keep them from multiplying the search, one is only linearized when the very next operation
//! observes the value it set (see [`Search`]).
//!
//! An invalid key is explained by a small set of its operations that is not linearizable by
//! itself: the history is cut right after the completion where the search got stuck, the front
//! of the cut is trimmed, and the rest is weakened one step at a time while it stays
//! non-linearizable. The operation completing at the cut is the culprit; the explanation says
//! what it observed and what, given the other operations of the proof, it could have observed.
//!
//! Invariants:
//! - A key is valid only when its search finished and found a linearization; a search that
//!   reaches [`Limits::max_states_per_key`] makes the key, and at best the whole history,
//!   unknown. The result is invalid as soon as one key is.
//! - Every transformation applied to a key's operations is either an equivalence (dropping an
//!   unknown write or cas whose value no operation observes) or a weakening: any linearization of
//!   the original is one of the result (dropping a read, turning an `ok` write or cas into one of
//!   unknown outcome, cutting the history right after a completion). So the operations reported
//!   for an anomaly are by themselves not linearizable, and they prove the whole history is not.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use serde_json::{Map, Value};

use crate::checker::{Anomaly, CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, EventType, History, Op, Pair};

/// The checker's name, as it appears in its result.
const CHECKER: &str = "linearizable-register";

/// How many operations an explanation lists before it summarises the rest.
const MAX_LISTED: usize = 12;

/// Bounds on the work the checker may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most distinct search configurations explored for one key before the key is declared
    /// unknown. Each invalid key may spend this much again on finding a minimal explanation.
    pub max_states_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_states_per_key: 2_000_000 }
    }
}

/// Checks that the register operations (`read`, `write`, `cas`) of `history` are linearizable,
/// key by key. Transactions and nemesis events are ignored. A malformed history is `unknown`,
/// with the reason in `stats.error`.
pub fn check(history: &History, limits: &Limits) -> CheckResult {
    let pairs = match history.client_pairs() {
        Ok(pairs) => pairs,
        Err(err) => {
            let mut stats = Map::new();
            stats.insert("error".into(), Value::from(err.to_string()));
            return CheckResult { checker: CHECKER.into(), valid: Validity::Unknown, anomalies: Vec::new(), stats };
        }
    };
    let collected = collect(&pairs);
    let mut valid = Validity::Valid;
    let mut anomalies = Vec::new();
    let mut keys_invalid = 0usize;
    let mut unknown_keys = Vec::new();
    let mut states = 0usize;
    for (&key, ops) in &collected.keys {
        let outcome = search(ops, limits.max_states_per_key);
        states += outcome.states;
        match outcome.verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown => {
                unknown_keys.push(key);
                valid = valid.and(Validity::Unknown);
            }
            Verdict::NotLinearizable => {
                keys_invalid += 1;
                valid = Validity::Invalid;
                if anomalies.len() < MAX_ANOMALIES {
                    anomalies.push(explain(key, ops, outcome.furthest, &pairs, limits));
                }
            }
        }
    }
    let mut stats = Map::new();
    stats.insert("ops_checked".into(), Value::from(collected.keys.values().map(Vec::len).sum::<usize>()));
    stats.insert("keys".into(), Value::from(collected.keys.len()));
    stats.insert("keys_invalid".into(), Value::from(keys_invalid));
    stats.insert("keys_unknown".into(), Value::from(unknown_keys.len()));
    stats.insert("info_ops".into(), Value::from(collected.info));
    stats.insert("states_explored".into(), Value::from(states));
    stats.insert("dropped_failed".into(), Value::from(collected.failed));
    stats.insert("dropped_info_reads".into(), Value::from(collected.info_reads));
    stats.insert("unknown_keys".into(), Value::from(unknown_keys));
    CheckResult { checker: CHECKER.into(), valid, anomalies, stats }
}

/// What an operation did to its register, as the history reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Read this value.
    Read(Option<u64>),
    /// Wrote this value.
    Write(u64),
    /// Replaced `from` by `to`.
    Cas { from: u64, to: u64 },
}

/// An operation as the register model sees it: the value it needs the register to hold, if any,
/// and the value it leaves there, if it changes it. Reads only require, writes only set, a cas
/// does both. Every operation that requires something observes the register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    requires: Option<Option<u64>>,
    sets: Option<u64>,
}

impl Step {
    fn of(kind: Kind) -> Self {
        match kind {
            Kind::Read(value) => Step { requires: Some(value), sets: None },
            Kind::Write(value) => Step { requires: None, sets: Some(value) },
            Kind::Cas { from, to } => Step { requires: Some(Some(from)), sets: Some(to) },
        }
    }

    /// The register's next value, or `None` when the operation is illegal in `state`.
    fn apply(self, state: Option<u64>) -> Option<Option<u64>> {
        if self.requires.is_some_and(|required| required != state) {
            return None;
        }
        Some(self.sets.or(state))
    }
}

/// One register operation of one key.
#[derive(Clone, Copy, Debug)]
struct KeyOp {
    /// Position of its pair in the client pairs: the operation's identity.
    pair: usize,
    kind: Kind,
    step: Step,
    /// History index of the invocation.
    call: usize,
    /// History index of the `ok` completion; `None` when the outcome is unknown.
    ret: Option<usize>,
}

/// The register operations of a history, by key, with the counts of what was dropped.
struct Collected {
    keys: BTreeMap<u64, Vec<KeyOp>>,
    info: usize,
    failed: usize,
    info_reads: usize,
}

/// Sorts the register operations by key, dropping failed operations and unknown reads.
fn collect(pairs: &[Pair<'_>]) -> Collected {
    let mut collected = Collected { keys: BTreeMap::new(), info: 0, failed: 0, info_reads: 0 };
    for (id, pair) in pairs.iter().enumerate() {
        let (key, kind) = match &pair.invoke.op {
            Op::Read { key, .. } => {
                // The invocation carries no value; an `ok` completion carries what was read.
                let value = match pair.complete.map(|complete| &complete.op) {
                    Some(Op::Read { value, .. }) => *value,
                    _ => None,
                };
                (*key, Kind::Read(value))
            }
            Op::Write { key, value } => (*key, Kind::Write(*value)),
            Op::Cas { key, from, to } => (*key, Kind::Cas { from: *from, to: *to }),
            // Every other workload's operations, and the nemesis's, are not register operations.
            _ => {
                continue;
            }
        };
        let ret = match (pair.outcome(), pair.complete) {
            (EventType::Ok, Some(complete)) => Some(complete.index),
            (EventType::Fail, _) => {
                collected.failed += 1;
                continue;
            }
            _ if matches!(kind, Kind::Read(_)) => {
                collected.info_reads += 1;
                continue;
            }
            _ => {
                collected.info += 1;
                None
            }
        };
        let op = KeyOp { pair: id, kind, step: Step::of(kind), call: pair.invoke.index, ret };
        collected.keys.entry(key).or_default().push(op);
    }
    collected
}

/// A search's conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search reached its bound first.
    Unknown,
}

/// A search's conclusion, the number of distinct configurations it explored, and the latest
/// completion (history index) it got to while every operation that completed earlier was
/// linearized.
///
/// When the verdict is `NotLinearizable`, that completion is where the history first stops being
/// linearizable: the search reaches every configuration it needs, so every cut after an earlier
/// completion was linearizable, while a linearization of the cut after this one would have let it
/// go further.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    verdict: Verdict,
    states: usize,
    furthest: usize,
}

/// Removes the writes and cas operations of unknown outcome whose value no remaining operation
/// requires, until none is left, except `keep`.
///
/// This is an equivalence. In any linearization, nothing can run between such an operation and
/// the next write, since everything else needs the register to hold some other value, so
/// deleting it leaves the linearization legal; conversely, it may simply not have happened. (For
/// an `ok` write only the first half would hold, so those stay.)
fn prune_unobserved(ops: &[KeyOp], keep: Option<usize>) -> Vec<KeyOp> {
    let mut kept = ops.to_vec();
    loop {
        let observed: HashSet<Option<u64>> = kept.iter().filter_map(|op| op.step.requires).collect();
        let before = kept.len();
        kept.retain(|op| match op.step.sets {
            None => true,
            Some(value) => op.ret.is_some() || observed.contains(&Some(value)) || keep == Some(op.pair),
        });
        if kept.len() == before {
            return kept;
        }
    }
}

/// Decides whether one key's operations are linearizable, exploring at most `budget`
/// configurations.
fn search(ops: &[KeyOp], budget: usize) -> Outcome {
    let ops = prune_unobserved(ops, None);
    let mut main: Vec<(usize, usize, Step)> =
        ops.iter().filter_map(|op| op.ret.map(|ret| (op.call, ret, op.step))).collect();
    // An unknown operation that changes nothing cannot matter, so only writes and cas remain.
    let mut info: Vec<(usize, Step)> =
        ops.iter().filter(|op| op.ret.is_none() && op.step.sets.is_some()).map(|op| (op.call, op.step)).collect();
    if main.is_empty() {
        return Outcome { verdict: Verdict::Linearizable, states: 0, furthest: 0 };
    }
    main.sort_unstable_by_key(|&(call, _, _)| call);
    info.sort_unstable_by_key(|&(call, _)| call);
    Search::new(&main, &info).run(budget)
}

/// The list's head sentinel; the tail sentinel is the last node.
const HEAD: usize = 0;

/// An operation the search may linearize next: one that completed (by its position among them),
/// or one of unknown outcome (likewise).
#[derive(Clone, Copy, Debug)]
enum Candidate {
    Main(usize),
    Info(usize),
}

/// Where the search looks for its next candidate: at a node of the list, or among the operations
/// of unknown outcome invoked before `bound` (the first completion still in the list), from the
/// `from`th.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Main(usize),
    Info { from: usize, bound: usize },
}

/// One linearized operation on the search stack, with what to restore when it is undone.
#[derive(Clone, Copy, Debug)]
struct Frame {
    candidate: Candidate,
    state: Option<u64>,
    need_observer: bool,
    resume: Cursor,
}

/// A configuration in canonical form, see [`Search::key`], and the register's value.
type CacheKey = (Box<[u32]>, Option<u64>);

/// The Wing & Gong / Lowe search over one key.
///
/// The operations that completed (`main`, ordered by invocation) have an invocation node and a
/// completion node in a doubly linked list ordered by history index; linearizing one removes
/// both, undoing it puts them back (in the reverse order, which the stack discipline guarantees,
/// so the removed nodes' own links are still right). The search succeeds when the list is empty.
///
/// Operations of unknown outcome (`info`) are kept apart: one is a candidate whenever it was
/// invoked before the first completion left in the list. One is linearized only if the operation
/// linearized right after it observes the register (a read or a cas). That loses nothing: in any
/// linearization, an unknown operation followed by a write, or by nothing, can be deleted (it
/// did not happen), which leaves every unknown operation followed by an observer. It keeps the
/// search from trying every subset of them at every point.
struct Search {
    next: Vec<usize>,
    prev: Vec<usize>,
    tail: usize,
    /// Per node: its operation, whether it is the invocation, its history index.
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    node_time: Vec<usize>,
    /// Per completed operation.
    main_call: Vec<usize>,
    main_ret: Vec<usize>,
    main_step: Vec<Step>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
    linearized: Vec<bool>,
    /// Per operation of unknown outcome, ordered by invocation.
    info_call: Vec<usize>,
    info_step: Vec<Step>,
    info_done: Vec<bool>,
}

impl Search {
    fn new(main: &[(usize, usize, Step)], info: &[(usize, Step)]) -> Self {
        let mut entries: Vec<(usize, usize, bool)> = Vec::with_capacity(2 * main.len());
        for (op, &(call, ret, _)) in main.iter().enumerate() {
            entries.push((call, op, true));
            entries.push((ret, op, false));
        }
        entries.sort_unstable();
        let tail = entries.len() + 1;
        let mut search = Search {
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|node| node.saturating_sub(1)).collect(),
            tail,
            node_op: vec![0; tail + 1],
            node_is_call: vec![false; tail + 1],
            node_time: vec![0; tail + 1],
            main_call: main.iter().map(|&(call, _, _)| call).collect(),
            main_ret: main.iter().map(|&(_, ret, _)| ret).collect(),
            main_step: main.iter().map(|&(_, _, step)| step).collect(),
            call_node: vec![0; main.len()],
            ret_node: vec![0; main.len()],
            linearized: vec![false; main.len()],
            info_call: info.iter().map(|&(call, _)| call).collect(),
            info_step: info.iter().map(|&(_, step)| step).collect(),
            info_done: vec![false; info.len()],
        };
        for (position, &(time, op, is_call)) in entries.iter().enumerate() {
            let node = position + 1;
            search.node_op[node] = op;
            search.node_is_call[node] = is_call;
            search.node_time[node] = time;
            if is_call {
                search.call_node[op] = node;
            } else {
                search.ret_node[op] = node;
            }
        }
        search
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn step(&self, candidate: Candidate) -> Step {
        match candidate {
            Candidate::Main(op) => self.main_step[op],
            Candidate::Info(op) => self.info_step[op],
        }
    }

    fn linearize(&mut self, candidate: Candidate) {
        match candidate {
            Candidate::Main(op) => {
                self.unlink(self.call_node[op]);
                self.unlink(self.ret_node[op]);
                self.linearized[op] = true;
            }
            Candidate::Info(op) => self.info_done[op] = true,
        }
    }

    fn undo(&mut self, candidate: Candidate) {
        match candidate {
            Candidate::Main(op) => {
                self.relink(self.ret_node[op]);
                self.relink(self.call_node[op]);
                self.linearized[op] = false;
            }
            Candidate::Info(op) => self.info_done[op] = false,
        }
    }

    /// The current configuration in a compact canonical form: the first completed operation not
    /// yet linearized, `f` (every earlier one is linearized), whether the next operation must
    /// observe, the later completed operations already linearized, a separator, the linearized
    /// operations of unknown outcome. A completed operation after `f` can only have been
    /// linearized while `f` was pending, so it was invoked before `f` completed: the scan for
    /// them stops there, and the key stays short however long the history is.
    fn key(&self, state: Option<u64>, need_observer: bool) -> CacheKey {
        let first = self.node_op[self.next[HEAD]];
        let limit = self.main_ret[first];
        let mut ids = vec![id(first), u32::from(need_observer)];
        ids.extend(
            self.main_call
                .iter()
                .zip(&self.linearized)
                .enumerate()
                .skip(first + 1)
                .take_while(|&(_, (&call, _))| call < limit)
                .filter(|&(_, (_, &done))| done)
                .map(|(op, _)| id(op)),
        );
        ids.push(u32::MAX);
        ids.extend(self.info_done.iter().enumerate().filter(|&(_, &done)| done).map(|(op, _)| id(op)));
        (ids.into_boxed_slice(), state)
    }

    fn run(mut self, budget: usize) -> Outcome {
        let mut cache: HashSet<CacheKey> = HashSet::new();
        let mut frames: Vec<Frame> = Vec::new();
        let mut state: Option<u64> = None;
        let mut need_observer = false;
        let mut cursor = Cursor::Main(self.next[HEAD]);
        let mut furthest = 0;
        loop {
            let (candidate, resume) = match cursor {
                // The successor is read before the candidate is lifted; it is right again
                // whenever the search comes back here, since undoing restores the list exactly.
                Cursor::Main(node) if self.node_is_call[node] => {
                    (Candidate::Main(self.node_op[node]), Cursor::Main(self.next[node]))
                }
                Cursor::Main(node) => {
                    // A completion: no completed operation after it may go first, so the
                    // remaining candidates are the unknown ones invoked before it.
                    furthest = furthest.max(self.node_time[node]);
                    cursor = Cursor::Info { from: 0, bound: self.node_time[node] };
                    continue;
                }
                Cursor::Info { from, bound } => {
                    let found = (from..self.info_call.len())
                        .take_while(|&op| self.info_call[op] < bound)
                        .find(|&op| !self.info_done[op]);
                    if let Some(op) = found {
                        (Candidate::Info(op), Cursor::Info { from: op + 1, bound })
                    } else {
                        let Some(frame) = frames.pop() else {
                            return Outcome { verdict: Verdict::NotLinearizable, states: cache.len(), furthest };
                        };
                        self.undo(frame.candidate);
                        state = frame.state;
                        need_observer = frame.need_observer;
                        cursor = frame.resume;
                        continue;
                    }
                }
            };
            cursor = resume;
            let step = self.step(candidate);
            if need_observer && step.requires.is_none() {
                continue;
            }
            let Some(next_state) = step.apply(state) else { continue };
            self.linearize(candidate);
            if self.next[HEAD] == self.tail {
                return Outcome { verdict: Verdict::Linearizable, states: cache.len() + 1, furthest };
            }
            let next_needs_observer = matches!(candidate, Candidate::Info(_));
            if !cache.insert(self.key(next_state, next_needs_observer)) {
                self.undo(candidate);
                continue;
            }
            if cache.len() > budget {
                return Outcome { verdict: Verdict::Unknown, states: cache.len(), furthest };
            }
            frames.push(Frame { candidate, state, need_observer, resume });
            state = next_state;
            need_observer = next_needs_observer;
            cursor = Cursor::Main(self.next[HEAD]);
        }
    }
}

/// An operation's position as a cache-key element; a key would need four billion operations to
/// overflow it.
fn id(op: usize) -> u32 {
    u32::try_from(op).expect("fewer than 2^32 operations per key")
}

/// A pool of search configurations shared by the several searches that explain one key.
struct Budget {
    remaining: usize,
}

impl Budget {
    fn verdict(&mut self, ops: &[KeyOp]) -> Verdict {
        let outcome = search(ops, self.remaining);
        self.remaining = self.remaining.saturating_sub(outcome.states);
        outcome.verdict
    }

    /// Whether `ops` are certainly not linearizable; running out of budget does not prove it.
    fn refutes(&mut self, ops: &[KeyOp]) -> bool {
        self.verdict(ops) == Verdict::NotLinearizable
    }
}

/// Builds the anomaly for a key whose operations are not linearizable, given the completion
/// where its search stopped making progress (see [`Outcome`]): cuts the history there, shrinks
/// the operations before it to a minimal set that still is not linearizable, and says what the
/// operation completing there should have seen.
fn explain(key: u64, ops: &[KeyOp], furthest: usize, pairs: &[Pair<'_>], limits: &Limits) -> Anomaly {
    let (proof, explanation) = match ops.iter().find(|op| op.ret == Some(furthest)) {
        Some(culprit) => {
            let mut budget = Budget { remaining: limits.max_states_per_key };
            let proof = shrink(cut(ops, furthest), culprit, &mut budget);
            let mut probes = Budget { remaining: limits.max_states_per_key };
            let explanation = describe(key, &proof, culprit, pairs, &mut probes);
            (proof, explanation)
        }
        None => (ops.to_vec(), format!("key {key}: no order of its operations is consistent with the register")),
    };
    let mut events: Vec<Event> = proof.iter().map(|op| reported_event(&pairs[op.pair]).clone()).collect();
    events.sort_by_key(|event| event.index);
    Anomaly { kind: "nonlinearizable".into(), explanation, ops: events }
}

/// The event that stands for an operation in a report: its completion when `ok`, else its
/// invocation.
fn reported_event<'a>(pair: &Pair<'a>) -> &'a Event {
    match pair.complete {
        Some(complete) if complete.kind == EventType::Ok => complete,
        _ => pair.invoke,
    }
}

/// The key's history cut right after history index `end`: operations invoked later are gone, and
/// operations still pending then are of unknown outcome (pending reads are dropped). A cut of a
/// linearizable history is linearizable: take the operations whose linearization point comes
/// before `end`.
fn cut(ops: &[KeyOp], end: usize) -> Vec<KeyOp> {
    ops.iter()
        .filter(|op| op.call < end)
        .filter_map(|op| match op.ret {
            Some(ret) if ret > end => op.step.sets.is_some().then_some(KeyOp { ret: None, ..*op }),
            _ => Some(*op),
        })
        .collect()
}

/// One kind of weakening step of [`shrink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Weakening {
    /// Drop reads.
    DropReads,
    /// Turn completed writes and cas operations into ones of unknown outcome.
    Unconfirm,
}

/// Applies `weakening` to the operations at `range` (except the culprit), then drops the
/// operations of unknown outcome that nothing observes. `None` when there was nothing to weaken.
fn weaken(ops: &[KeyOp], range: Range<usize>, culprit: usize, weakening: Weakening) -> Option<Vec<KeyOp>> {
    let mut changed = false;
    let mut weaker = Vec::with_capacity(ops.len());
    for (position, op) in ops.iter().enumerate() {
        let applies = range.contains(&position) && op.pair != culprit;
        match (weakening, op.step.sets, op.ret) {
            (Weakening::DropReads, None, _) if applies => changed = true,
            (Weakening::Unconfirm, Some(_), Some(_)) if applies => {
                weaker.push(KeyOp { ret: None, ..*op });
                changed = true;
            }
            _ => weaker.push(*op),
        }
    }
    changed.then(|| prune_unobserved(&weaker, Some(culprit)))
}

/// Weakens the first `count` operations (by invocation) except the culprit: reads are dropped, and
/// writes and cas operations whose value no later operation observes become unknown, and go if
/// nothing observes them at all. Writes that later operations observe stay as they are, because
/// a confirmed write usually makes a smaller proof than the reads that would pin it otherwise.
fn weaken_front(ops: &[KeyOp], count: usize, culprit: &KeyOp) -> Vec<KeyOp> {
    let (front, back) = ops.split_at(count);
    let observed: HashSet<Option<u64>> = back.iter().chain([culprit]).filter_map(|op| op.step.requires).collect();
    let mut weaker: Vec<KeyOp> = front
        .iter()
        .filter(|op| op.pair == culprit.pair || op.step.sets.is_some())
        .map(|op| match op.step.sets {
            Some(value) if op.pair != culprit.pair && !observed.contains(&Some(value)) => KeyOp { ret: None, ..*op },
            _ => *op,
        })
        .collect();
    weaker.extend_from_slice(back);
    prune_unobserved(&weaker, Some(culprit.pair))
}

/// Cuts off as much of the front of a non-linearizable history (ordered by invocation) as
/// possible with [`weaken_front`], keeping it non-linearizable: tries keeping the last 1, 2, 4,
/// ... operations, then bisects. Short attempts come first because proving a long history
/// non-linearizable is what costs (the search must exhaust it); proving one linearizable usually
/// takes one pass. How much can go is not strictly monotone in the cut, so this finds a good cut,
/// not necessarily the best one; every cut taken is checked.
fn trim_front(ops: Vec<KeyOp>, culprit: &KeyOp, budget: &mut Budget) -> Vec<KeyOp> {
    let total = ops.len();
    let attempt = |keep: usize, budget: &mut Budget| {
        let weaker = weaken_front(&ops, total - keep, culprit);
        budget.refutes(&weaker).then_some(weaker)
    };
    let mut too_few = 0;
    let mut keep = 1;
    let mut best = None;
    while keep < total {
        if let Some(weaker) = attempt(keep, budget) {
            best = Some(weaker);
            break;
        }
        too_few = keep;
        keep *= 2;
    }
    let mut high = keep.min(total);
    while high - too_few > 1 {
        let middle = too_few + (high - too_few) / 2;
        if let Some(weaker) = attempt(middle, budget) {
            best = Some(weaker);
            high = middle;
        } else {
            too_few = middle;
        }
    }
    best.unwrap_or(ops)
}

/// Shrinks a non-linearizable set of operations: after [`trim_front`], greedily weakens it while
/// it stays non-linearizable, first by dropping reads, then by making writes and cas operations
/// unknown (which drops those nothing observes any more), each in chunks that halve down to
/// single operations, as delta debugging does, so that what is left goes in a few searches.
///
/// Reads go first because a read pins down when an unknown write took effect: weakening the
/// writes first tends to keep the reads that pin them, a larger proof than keeping the writes
/// confirmed. Each phase ends one-minimal, and since a step that failed on a stronger history
/// fails on any weaker one, a single pass of each phase is enough. Every accepted step is a
/// checked weakening, so the result is always a proof; running out of budget only leaves it less
/// small.
fn shrink(mut ops: Vec<KeyOp>, culprit: &KeyOp, budget: &mut Budget) -> Vec<KeyOp> {
    ops.sort_by_key(|op| op.call);
    let mut current = trim_front(ops, culprit, budget);
    let culprit = culprit.pair;
    for weakening in [Weakening::DropReads, Weakening::Unconfirm] {
        let mut chunk = (current.len() / 2).max(1);
        loop {
            let mut changed = false;
            let mut start = 0;
            while start < current.len() {
                if budget.remaining == 0 {
                    return current;
                }
                let end = (start + chunk).min(current.len());
                match weaken(&current, start..end, culprit, weakening) {
                    // What now sits at `start` has not been tried yet, so the position stays.
                    Some(weaker) if budget.refutes(&weaker) => {
                        current = weaker;
                        changed = true;
                    }
                    _ => start = end,
                }
            }
            if chunk == 1 && !changed {
                break;
            }
            chunk = (chunk / 2).max(1);
        }
    }
    current
}

/// A register value as explanations show it.
fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "nil".to_owned(), |value| value.to_string())
}

/// The explanation of a minimal proof: what the culprit observed, what it could have observed
/// given the other operations (found by replacing its expectation with each value some operation
/// of the proof sets, or nil), and those operations with their timing relative to it.
fn describe(key: u64, proof: &[KeyOp], culprit: &KeyOp, pairs: &[Pair<'_>], budget: &mut Budget) -> String {
    let index = |op: &KeyOp| reported_event(&pairs[op.pair]).index;
    let at = index(culprit);
    let observed = match culprit.kind {
        Kind::Read(value) => format!("read at index {at} returned {}", show(value)),
        Kind::Write(value) => format!("write {value} at index {at} completed"),
        Kind::Cas { from, to } => format!("cas {from}->{to} at index {at} succeeded"),
    };
    let others: Vec<&KeyOp> = proof.iter().filter(|op| op.pair != culprit.pair).collect();
    let mut text = format!("key {key}: {observed}, but ");
    match culprit.step.requires {
        None => text.push_str(&format!(
            "it cannot have taken effect between its invocation (index {}) and its completion",
            culprit.call
        )),
        Some(required) => {
            let mut values: Vec<Option<u64>> = others.iter().filter_map(|op| op.step.sets.map(Some)).collect();
            values.push(None);
            values.sort_unstable();
            values.dedup();
            values.retain(|&value| value != required);
            let mut possible = Vec::new();
            let mut sure = true;
            for value in values {
                let probe: Vec<KeyOp> = proof
                    .iter()
                    .map(|op| {
                        let mut op = *op;
                        if op.pair == culprit.pair {
                            op.step.requires = Some(value);
                        }
                        op
                    })
                    .collect();
                match budget.verdict(&probe) {
                    Verdict::Linearizable => possible.push(show(value)),
                    Verdict::NotLinearizable => {}
                    Verdict::Unknown => sure = false,
                }
            }
            if !sure {
                text.push_str("no order of the operations below allows that");
            } else if possible.is_empty() {
                text.push_str("no value it could have seen is consistent with the operations below");
            } else {
                let what = match culprit.kind {
                    Kind::Read(_) => "it could only have returned",
                    _ => "the register could only have held",
                };
                text.push_str(&format!("{what} {}", possible.join(" or ")));
            }
            if let Some(value) = required
                && !others.iter().any(|op| op.step.sets == Some(value))
            {
                text.push_str(&format!("; no write or cas invoked before it completed could have set {value}"));
            }
        }
    }
    if !others.is_empty() {
        let listed: Vec<String> = others
            .iter()
            .take(MAX_LISTED)
            .map(|op| {
                let what = match op.kind {
                    Kind::Read(value) => format!("read of {}", show(value)),
                    Kind::Write(value) => format!("write {value}"),
                    Kind::Cas { from, to } => format!("cas {from}->{to}"),
                };
                match op.ret {
                    Some(ret) if ret < culprit.call => {
                        format!("{what} (index {}, completed before it began)", index(op))
                    }
                    Some(_) => format!("{what} (index {}, concurrent with it)", index(op)),
                    None => format!("{what} (invoked at index {}, may have taken effect at any time after)", op.call),
                }
            })
            .collect();
        text.push_str("; given ");
        text.push_str(&listed.join(", "));
        if others.len() > MAX_LISTED {
            text.push_str(&format!(" and {} more", others.len() - MAX_LISTED));
        }
    }
    text
}

#[cfg(test)]
mod tests;
