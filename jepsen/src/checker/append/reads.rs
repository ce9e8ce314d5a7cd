//! Steps 1 and 2 of the append checker: every append indexed by key and value, every read of an
//! `ok` transaction collected and checked against its own transaction (`internal`), each key's
//! version order inferred from its longest read (`incompatible-order`), and every read checked on
//! its own (`garbage-read`, `G1a`, `G1b`, `duplicate-elements`).
//!
//! Invariants:
//! - Only `ok` transactions contribute reads; appends of every transaction are indexed, failed
//!   ones included, since reading them is `G1a`. An `info` transaction is marked committed as soon
//!   as some read observed one of its appends, which proves it committed.
//! - A read is external (and may later justify edges) only when it is the first read of its key in
//!   its transaction, made before the transaction appended to that key.
//! - The per-key work is linear in the longest read: every read that is a prefix of it inherits
//!   the findings made while walking it once.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Found, Txn, fmt_list};
use crate::history::{Event, EventType, Mop};

/// Who appended a value to a key.
pub(super) struct Writer {
    /// The appending transaction, by position in the transaction list.
    pub(super) txn: u32,
    /// The value the same transaction appended to the same key next, if any: a value followed by
    /// another is intermediate and no other transaction may observe a state ending in it.
    later: Option<u64>,
}

/// One read of an `ok` transaction.
pub(super) struct Read<'a> {
    pub(super) txn: u32,
    pub(super) key: u64,
    pub(super) list: &'a [u64],
    /// The key's first read in its transaction, before the transaction appended to the key: only
    /// these reveal what other transactions did before this one.
    pub(super) external: bool,
}

/// The events standing for `txns`, in history order, each once.
fn events_of(txns: &[Txn<'_>], ids: impl IntoIterator<Item = u32>) -> Vec<Event> {
    let mut events: Vec<&Event> = ids.into_iter().map(|t| txns[t as usize].event()).collect();
    events.sort_by_key(|e| e.index);
    events.dedup_by_key(|e| e.index);
    events.into_iter().cloned().collect()
}

/// Values for an explanation, comma-separated.
fn fmt_values(values: &[u64]) -> String {
    values.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Indexes every append of every transaction (failed ones too: reading them is G1a) by key and
/// value. Returns the index and how many appends repeated a (key, value) pair already seen; the
/// first appender of a pair is kept.
pub(super) fn index_appends(txns: &[Txn<'_>]) -> (HashMap<(u64, u64), Writer>, usize) {
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
pub(super) fn collect_reads<'a>(txns: &[Txn<'a>], found: &mut Found) -> (Vec<Read<'a>>, usize) {
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
pub(super) struct Keys {
    /// Per key, the version order: the longest read, without repeated values.
    pub(super) orders: Vec<(u64, Vec<u64>)>,
    /// Per read: whether it is a duplicate-free prefix of its key's order, so that the value
    /// after it in the order is the next one appended after the state it saw.
    pub(super) compatible: Vec<bool>,
    /// Per transaction: an `info` transaction some read observed, which therefore committed.
    pub(super) committed: Vec<bool>,
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
pub(super) fn analyse_keys(
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
