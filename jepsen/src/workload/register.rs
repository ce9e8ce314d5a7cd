//! The register workload: reads, writes and compare-and-sets on independent keys, through the
//! etcd v3 API (Range, Put, and Txn with a value compare), checked for linearizability.
//!
//! Every worker is bound to one member (worker `w` talks to member `w mod nodes`, as Jepsen's
//! clients are bound to nodes), so faults on that member are seen by its clients. All workers
//! work on one key at a time; after `ops_per_key` operations the key advances, which keeps each
//! key's history small enough to check exhaustively however long the test runs.
//!
//! Invariants: a written value is unique across the test; a read that errs is recorded as `fail`
//! (reads change nothing); a write or compare-and-set that errs or times out is `info` (it may
//! have been applied), except errors the server returns before executing anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keel_proto::etcdserverpb as pb;
use tonic::transport::Channel;

use super::{Outcome, WorkerContext};
use crate::history::Op;
use crate::rng::Rng;

/// Shared by every worker: the operation counter that advances keys and the value counter.
#[derive(Debug)]
pub struct Register {
    ops_per_key: u64,
    ops: AtomicU64,
    values: AtomicU64,
}

impl Register {
    /// A register workload moving to a new key every `ops_per_key` operations.
    pub fn new(ops_per_key: u64) -> Arc<Self> {
        Arc::new(Self { ops_per_key: ops_per_key.max(1), ops: AtomicU64::new(0), values: AtomicU64::new(1) })
    }

    /// The etcd key holding register `key`.
    pub fn etcd_key(key: u64) -> Vec<u8> {
        format!("jepsen/register/{key:08}").into_bytes()
    }

    /// Draws the next operation: half reads, a quarter writes, a quarter compare-and-sets from
    /// the last value this worker saw on the key (so that they often succeed).
    pub fn next_op(&self, rng: &mut Rng, last_seen: &mut Option<(u64, u64)>) -> Op {
        let key = self.ops.fetch_add(1, Ordering::Relaxed) / self.ops_per_key;
        let known = last_seen.filter(|(k, _)| *k == key).map(|(_, v)| v);
        match rng.below(4) {
            0 | 1 => Op::Read { key, value: None },
            2 => Op::Write { key, value: self.values.fetch_add(1, Ordering::Relaxed) },
            _ => match known {
                Some(from) => Op::Cas { key, from, to: self.values.fetch_add(1, Ordering::Relaxed) },
                None => Op::Read { key, value: None },
            },
        }
    }
}

/// Runs one register operation against `channel`.
pub async fn invoke(ctx: &WorkerContext, channel: Channel, op: &Op, last_seen: &mut Option<(u64, u64)>) -> Outcome {
    let mut kv = pb::kv_client::KvClient::new(channel);
    match op {
        Op::Read { key, .. } => {
            let request = pb::RangeRequest { key: Register::etcd_key(*key), ..Default::default() };
            match ctx.timed(kv.range(request)).await {
                Ok(resp) => {
                    let value = match resp.into_inner().kvs.first() {
                        None => None,
                        Some(kv) => match parse_value(&kv.value) {
                            Some(v) => Some(v),
                            None => return Outcome::Fail(format!("unparsable value {:?}", kv.value)),
                        },
                    };
                    if let Some(v) = value {
                        *last_seen = Some((*key, v));
                    }
                    Outcome::Ok(Op::Read { key: *key, value })
                }
                // A read that did not complete had no effect: it certainly did not happen.
                Err(err) => Outcome::Fail(err.to_string()),
            }
        }
        Op::Write { key, value } => {
            let request = pb::PutRequest {
                key: Register::etcd_key(*key),
                value: value.to_string().into_bytes(),
                ..Default::default()
            };
            match ctx.timed(kv.put(request)).await {
                Ok(_) => {
                    *last_seen = Some((*key, *value));
                    Outcome::Ok(op.clone())
                }
                Err(err) => err.outcome(),
            }
        }
        Op::Cas { key, from, to } => {
            let etcd_key = Register::etcd_key(*key);
            let request = pb::TxnRequest {
                compare: vec![pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Value as i32,
                    key: etcd_key.clone(),
                    target_union: Some(pb::compare::TargetUnion::Value(from.to_string().into_bytes())),
                    ..Default::default()
                }],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: etcd_key,
                        value: to.to_string().into_bytes(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            match ctx.timed(kv.txn(request)).await {
                Ok(resp) if resp.get_ref().succeeded => {
                    *last_seen = Some((*key, *to));
                    Outcome::Ok(op.clone())
                }
                Ok(_) => Outcome::Fail("compare failed".into()),
                Err(err) => err.outcome(),
            }
        }
        other => Outcome::Fail(format!("not a register operation: {other:?}")),
    }
}

fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}
