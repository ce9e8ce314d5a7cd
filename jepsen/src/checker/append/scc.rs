//! The graph searches the append checker's cycle search is built on: strongly connected
//! components (Tarjan's algorithm) and shortest paths (breadth-first search), both confined to a
//! subset of the nodes and to some edge kinds.
//!
//! Invariants:
//! - Both searches are iterative, so long paths cannot overflow the stack.
//! - The per-node arrays are allocated once and reused through generation counters, so searching
//!   many small components costs only their own size.

use std::collections::VecDeque;

use super::NONE;
use super::graph::Graph;

/// Reusable per-node arrays for the graph searches, so that searching many small components costs
/// only their own size.
pub(super) struct Scratch {
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
    pub(super) fn new(n: usize) -> Self {
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
    pub(super) fn enter(&mut self, nodes: &[u32]) {
        self.member_gen += 1;
        for &v in nodes {
            self.member[v as usize] = self.member_gen;
        }
    }

    pub(super) fn is_member(&self, v: u32) -> bool {
        self.member[v as usize] == self.member_gen
    }

    /// A shortest path of at least one edge from `start` to `target` inside the current set,
    /// following edges of the `allowed` kinds: its nodes, `start` first and `target` last (so
    /// `start == target` finds a shortest cycle through `start`).
    pub(super) fn shortest_path(
        &mut self,
        graph: &Graph<'_>,
        start: u32,
        target: u32,
        allowed: u8,
    ) -> Option<Vec<u32>> {
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
pub(super) fn components(graph: &Graph<'_>, nodes: &[u32], allowed: u8, scratch: &mut Scratch) -> Vec<Vec<u32>> {
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
