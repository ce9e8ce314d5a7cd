//! Step 3 of the append checker, second half: the cycle search over the dependency graph, and
//! how each cycle found is explained and named (`G0`, `G1c`, `G-single`, `G2-item`, with
//! `-realtime` when it needs a realtime edge).
//!
//! Invariants:
//! - Every non-trivial strongly connected component yields at least one reported cycle: its
//!   data-edge components are searched for G0, G1c and G-single cycles, else their shortest cycle
//!   is reported, and a component only realtime edges hold together is reported through one of
//!   them.
//! - The searches for G-single and realtime cycles are bounded (`G_SINGLE_TRIES`,
//!   `REALTIME_TRIES`); the bounds only trade how representative or short a cycle is for time,
//!   never whether a component is reported.
//! - A cycle is reported starting at its earliest transaction, so the same cycle always reads the
//!   same way.

use super::graph::{Graph, Why};
use super::scc::{Scratch, components};
use super::{ALL, DATA, Found, NONE, RT, RW, Txn, WR, WW, fmt_list};

/// How many rw edges of one component are each tried with a breadth-first search when looking for
/// a G-single cycle whose existence is not already guaranteed. Bounds the work on huge
/// components; when the bound is hit the component is still reported, by its shortest cycle.
const G_SINGLE_TRIES: usize = 16;

/// How many crossing realtime edges of one component are tried when looking for a short realtime
/// cycle. Every such edge lies on some cycle, so the bound only trades cycle length for time.
const REALTIME_TRIES: usize = 4;

/// The cycle searches over the dependency graph and the reports they produce.
pub(super) struct CycleSearch<'g, 'a> {
    pub(super) graph: &'g Graph<'a>,
    pub(super) txns: &'g [Txn<'a>],
    pub(super) scratch: Scratch,
    pub(super) found: Found,
}

impl CycleSearch<'_, '_> {
    /// Searches every strongly connected component; returns how many non-trivial ones the whole
    /// graph (realtime edges included) has.
    pub(super) fn run(&mut self) -> usize {
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
