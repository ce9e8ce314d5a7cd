//! Step 3 of the append checker, first half: the dependency graph over committed transactions,
//! with ww, wr and rw edges from the version orders and external reads, and realtime edges from
//! the history's order.
//!
//! Invariants:
//! - Nodes are the `ok` transactions and the `info` transactions some read proved committed;
//!   `fail` transactions are never nodes.
//! - Every edge holds in every serialization consistent with the observations, so every cycle is
//!   a real anomaly. Edges out of reads come only from external reads.
//! - Realtime edges link only the frontier, as Elle does, so their number stays linear in the
//!   history; and each data edge keeps the first observation that justifies it, for explanations.

use std::collections::HashMap;

use super::reads::{Keys, Read, Writer};
use super::{NONE, RT, RW, Txn, WR, WW};
use crate::history::EventType;

/// Why a data edge exists: the observation that justifies it.
pub(super) enum Why<'a> {
    /// `next` directly follows `prev` in the key's order (skipping values of no committed txn).
    Ww { key: u64, prev: u64, next: u64 },
    /// The reader's read of `key` ended in the writer's value.
    Wr { key: u64, list: &'a [u64] },
    /// The reader saw `list`; `next` was appended after that state.
    Rw { key: u64, list: &'a [u64], next: u64 },
}

/// The dependency graph over committed transactions.
pub(super) struct Graph<'a> {
    /// Per node, its out-edges sorted by target, each with the union of its kinds.
    pub(super) adj: Vec<Vec<(u32, u8)>>,
    /// Per node, its transaction's position in the transaction list.
    pub(super) txn_of: Vec<u32>,
    /// The first justification found for each data edge and kind.
    pub(super) whys: HashMap<(u32, u32, u8), Why<'a>>,
}

impl Graph<'_> {
    /// The kinds of the edge `from -> to`; 0 when there is none.
    pub(super) fn mask(&self, from: u32, to: u32) -> u8 {
        let edges = &self.adj[from as usize];
        edges.binary_search_by_key(&to, |&(t, _)| t).map_or(0, |i| edges[i].1)
    }
}

/// Builds the dependency graph: ww, wr and rw edges from the version orders and external reads,
/// realtime edges from the history's order.
pub(super) fn build_graph<'a>(
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
