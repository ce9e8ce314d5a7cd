//! The Wing & Gong / Lowe search that decides whether one key's operations are linearizable.
//!
//! The invocations and completions form a doubly linked list in history order; the search
//! repeatedly linearizes an operation whose invocation precedes every completion still in the
//! list (lifting both its entries out), checks it against the register model, and backtracks
//! (unlifting) when it reaches a completion whose operation it could not linearize.
//! Configurations already seen (which operations are linearized, the register's value) are cached
//! and not explored twice. Operations of unknown outcome have no completion in the list, so they
//! stay candidates forever; to keep them from multiplying the search, one is only linearized when
//! the very next operation observes the value it set (see [`Search`]).
//!
//! Invariants:
//! - The search stops with `Unknown`, rather than guess, as soon as it has explored more distinct
//!   configurations than its budget.
//! - Before searching, unknown writes and cas operations whose value nothing observes are dropped,
//!   which is an equivalence (see [`prune_unobserved`]), so the verdict is that of the operations
//!   given.

use std::collections::HashSet;

use super::{KeyOp, Step};

/// A search's conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
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
pub(super) struct Outcome {
    pub(super) verdict: Verdict,
    pub(super) states: usize,
    pub(super) furthest: usize,
}

/// Removes the writes and cas operations of unknown outcome whose value no remaining operation
/// requires, until none is left, except `keep`.
///
/// This is an equivalence. In any linearization, nothing can run between such an operation and
/// the next write, since everything else needs the register to hold some other value, so
/// deleting it leaves the linearization legal; conversely, it may simply not have happened. (For
/// an `ok` write only the first half would hold, so those stay.)
pub(super) fn prune_unobserved(ops: &[KeyOp], keep: Option<usize>) -> Vec<KeyOp> {
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
pub(super) fn search(ops: &[KeyOp], budget: usize) -> Outcome {
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
pub(super) struct Budget {
    pub(super) remaining: usize,
}

impl Budget {
    pub(super) fn verdict(&mut self, ops: &[KeyOp]) -> Verdict {
        let outcome = search(ops, self.remaining);
        self.remaining = self.remaining.saturating_sub(outcome.states);
        outcome.verdict
    }

    /// Whether `ops` are certainly not linearizable; running out of budget does not prove it.
    pub(super) fn refutes(&mut self, ops: &[KeyOp]) -> bool {
        self.verdict(ops) == Verdict::NotLinearizable
    }
}
