//! The list-append workload: transactions of appends and reads over a few keys holding lists,
//! through the etcd v3 API, checked for strict serializability (Elle-style cycle detection).
//!
//! A transaction runs optimistically, as etcd's own clients do: one read-only Txn reads every key
//! it touches at a single revision; the client computes the new lists; a second Txn writes them
//! guarded by `mod_revision == seen` compares on every key touched (0 for a missing key), so it
//! commits only if nothing it read has changed. Read-only transactions need only the first Txn.
//!
//! Keys move through a sliding window (each key is live for a bounded number of transactions),
//! which keeps lists short and the dependency graph sparse however long the test runs.
//!
//! Invariants: every appended value is unique per key (a global counter); a transaction whose
//! read phase fails, or whose guard fails, is `fail` (nothing was written); an error or timeout
//! in the write phase is `info`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_proto::etcdserverpb as pb;
use tonic::transport::Channel;

use super::{Outcome, WorkerContext};
use crate::history::{Mop, Op};
use crate::rng::Rng;

/// Keys live at once.
const WINDOW: u64 = 16;
/// Transactions after which the window moves on by one key.
const TXNS_PER_SHIFT: u64 = 50;

/// Shared by every worker: the transaction counter that moves the key window, and the value
/// counter.
#[derive(Debug)]
pub struct Append {
    txns: AtomicU64,
    values: AtomicU64,
}

impl Append {
    /// A fresh workload.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { txns: AtomicU64::new(0), values: AtomicU64::new(1) })
    }

    /// The etcd key holding list `key`.
    pub fn etcd_key(key: u64) -> Vec<u8> {
        format!("jepsen/append/{key:08}").into_bytes()
    }

    /// Draws a transaction of one to four micro-operations on keys of the current window, each
    /// an append or a read with equal odds.
    pub fn next_op(&self, rng: &mut Rng) -> Op {
        let base = self.txns.fetch_add(1, Ordering::Relaxed) / TXNS_PER_SHIFT;
        let count = 1 + rng.below(4);
        let mops = (0..count)
            .map(|_| {
                let key = base + rng.below(WINDOW);
                if rng.chance(0.5) {
                    Mop::Append { key, value: self.values.fetch_add(1, Ordering::Relaxed) }
                } else {
                    Mop::Read { key, value: None }
                }
            })
            .collect();
        Op::Txn { mops }
    }
}

fn encode(list: &[u64]) -> Vec<u8> {
    list.iter().map(u64::to_string).collect::<Vec<_>>().join(" ").into_bytes()
}

fn decode(bytes: &[u8]) -> Result<Vec<u64>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("list is not UTF-8: {bytes:?}"))?;
    text.split_whitespace().map(|v| v.parse().map_err(|_| format!("list element {v:?} is not a number"))).collect()
}

/// Runs one transaction against `channel`.
pub async fn invoke(ctx: &WorkerContext, channel: Channel, op: &Op) -> Outcome {
    let Op::Txn { mops } = op else {
        return Outcome::Fail(format!("not an append transaction: {op:?}"));
    };
    let mut kv = pb::kv_client::KvClient::new(channel);
    let mut keys: Vec<u64> = mops
        .iter()
        .map(|m| match m {
            Mop::Append { key, .. } | Mop::Read { key, .. } => *key,
        })
        .collect();
    keys.sort();
    keys.dedup();

    // Read phase: every key touched, at one revision.
    let reads = pb::TxnRequest {
        compare: Vec::new(),
        success: keys
            .iter()
            .map(|k| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: Append::etcd_key(*k),
                    ..Default::default()
                })),
            })
            .collect(),
        failure: Vec::new(),
    };
    let snapshot = match ctx.timed(kv.txn(reads)).await {
        Ok(resp) => resp.into_inner(),
        Err(err) => return Outcome::Fail(format!("read phase: {err}")),
    };
    let mut state: std::collections::BTreeMap<u64, (Vec<u64>, i64)> = std::collections::BTreeMap::new();
    for (key, response) in keys.iter().zip(&snapshot.responses) {
        let Some(pb::response_op::Response::ResponseRange(range)) = &response.response else {
            return Outcome::Fail("read phase: unexpected response".into());
        };
        let (list, mod_revision) = match range.kvs.first() {
            None => (Vec::new(), 0),
            Some(found) => match decode(&found.value) {
                Ok(list) => (list, found.mod_revision),
                Err(err) => return Outcome::Fail(err),
            },
        };
        state.insert(*key, (list, mod_revision));
    }

    // Apply the micro-operations to the snapshot, in order.
    let mut done = Vec::with_capacity(mops.len());
    let mut written = std::collections::BTreeSet::new();
    for mop in mops {
        match mop {
            Mop::Append { key, value } => {
                if let Some((list, _)) = state.get_mut(key) {
                    list.push(*value);
                }
                written.insert(*key);
                done.push(mop.clone());
            }
            Mop::Read { key, .. } => {
                let list = state.get(key).map(|(list, _)| list.clone()).unwrap_or_default();
                done.push(Mop::Read { key: *key, value: Some(list) });
            }
        }
    }
    if written.is_empty() {
        return Outcome::Ok(Op::Txn { mops: done });
    }

    // Write phase: commit only if nothing touched changed since the snapshot.
    let commit = pb::TxnRequest {
        compare: state
            .iter()
            .map(|(key, (_, mod_revision))| pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Mod as i32,
                key: Append::etcd_key(*key),
                target_union: Some(pb::compare::TargetUnion::ModRevision(*mod_revision)),
                ..Default::default()
            })
            .collect(),
        success: written
            .iter()
            .map(|key| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: Append::etcd_key(*key),
                    value: encode(&state[key].0),
                    ..Default::default()
                })),
            })
            .collect(),
        failure: Vec::new(),
    };
    match ctx.timed(kv.txn(commit)).await {
        Ok(resp) if resp.get_ref().succeeded => Outcome::Ok(Op::Txn { mops: done }),
        Ok(_) => Outcome::Fail("a key changed since it was read".into()),
        Err(err) => err.outcome(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_bad_elements_are_named() {
        assert_eq!(decode(&encode(&[1, 22, 333])).unwrap(), vec![1, 22, 333]);
        assert_eq!(decode(b"").unwrap(), Vec::<u64>::new());
        assert!(decode(b"1 x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn transactions_touch_only_the_live_window_and_append_unique_values() {
        let workload = Append::new();
        let mut rng = Rng::new(3);
        let mut seen = std::collections::HashSet::new();
        for n in 0..1000u64 {
            let Op::Txn { mops } = workload.next_op(&mut rng) else { unreachable!() };
            assert!((1..=4).contains(&mops.len()));
            for mop in mops {
                match mop {
                    Mop::Append { key, value } => {
                        assert!(key >= n / TXNS_PER_SHIFT && key < n / TXNS_PER_SHIFT + WINDOW);
                        assert!(seen.insert(value), "value {value} appended twice");
                    }
                    Mop::Read { key, value } => {
                        assert!(key >= n / TXNS_PER_SHIFT && value.is_none());
                    }
                }
            }
        }
    }
}
