//! etcd's request checks, applied before anything is proposed or read, so invalid requests fail
//! with etcd's errors and never reach the log.
//!
//! `check_intervals` reproduces etcd's rule for transactions that write a key twice: within one
//! branch, two puts of a key, or a put of a key that a delete range of the same or an enclosing
//! level covers, are refused; deletes may overlap each other, and the success and failure branches
//! of a nested transaction may write the same key (only one runs). Like etcd, a delete whose
//! `range_end` is `"\0"` is compared by its literal bounds.

use std::collections::BTreeSet;

use crate::error::StoreError;
use crate::mvcc::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// Checks a range.
pub fn check_range(req: &RangeRequest) -> Result<(), StoreError> {
    if req.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// Checks a put.
pub fn check_put(req: &PutRequest) -> Result<(), StoreError> {
    if req.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(StoreError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(StoreError::LeaseProvided);
    }
    Ok(())
}

/// Checks a range delete.
pub fn check_delete(req: &DeleteRangeRequest) -> Result<(), StoreError> {
    if req.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    Ok(())
}

/// Checks a transaction: operation counts, every nested request, and duplicate writes.
pub fn check_txn(req: &TxnRequest, max_txn_ops: usize) -> Result<(), StoreError> {
    check_txn_ops(req, max_txn_ops as i64)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

fn check_txn_ops(req: &TxnRequest, max_txn_ops: i64) -> Result<(), StoreError> {
    let ops = req.compare.len().max(req.success.len()).max(req.failure.len()) as i64;
    if ops > max_txn_ops {
        return Err(StoreError::TooManyOps);
    }
    if req.compare.iter().any(|c| c.key.is_empty()) {
        return Err(StoreError::EmptyKey);
    }
    for op in req.success.iter().chain(&req.failure) {
        match op {
            RequestOp::Range(r) => check_range(r)?,
            RequestOp::Put(p) => check_put(p)?,
            RequestOp::DeleteRange(d) => check_delete(d)?,
            // Nested transactions share the parent's budget, as in etcd.
            RequestOp::Txn(t) => check_txn_ops(t, max_txn_ops - ops)?,
        }
    }
    Ok(())
}

/// A delete's key interval `[begin, end)`, compared bytewise.
#[derive(Clone, Debug)]
struct Interval {
    begin: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn of(delete: &DeleteRangeRequest) -> Self {
        let end = if delete.range_end.is_empty() {
            let mut point_end = delete.key.clone();
            point_end.push(0);
            point_end
        } else {
            delete.range_end.clone()
        };
        Self { begin: delete.key.clone(), end }
    }

    fn contains(&self, key: &[u8]) -> bool {
        self.begin.as_slice() <= key && key < self.end.as_slice()
    }
}

fn covered(dels: &[Interval], key: &[u8]) -> bool {
    dels.iter().any(|d| d.contains(key))
}

/// Returns the keys put and the intervals deleted at or below this level.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<Interval>), StoreError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) => Some(Interval::of(d)),
            _ => None,
        })
        .collect();

    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let (puts_then, dels_then) = check_intervals(&nested.success)?;
        let (puts_else, dels_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || covered(&dels, key) {
                return Err(StoreError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            if (puts.contains(&key) && !puts_then.contains(&key)) || covered(&dels, &key) {
                return Err(StoreError::DuplicateKey);
            }
            puts.insert(key);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for op in ops {
        let RequestOp::Put(put) = op else { continue };
        if puts.contains(&put.key) || covered(&dels, &put.key) {
            return Err(StoreError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp::Put(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() })
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest { key: key.into(), range_end: end.into(), prev_kv: false })
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest { compare: vec![], success, failure }
    }

    #[test]
    fn a_txn_writing_a_key_twice_is_refused() {
        let refused = [
            txn(vec![put("a"), put("a")], vec![]),
            txn(vec![put("a"), del("a", "")], vec![]),
            txn(vec![del("a", "c"), put("b")], vec![]),
            txn(vec![put("a"), RequestOp::Txn(txn(vec![put("a")], vec![]))], vec![]),
            txn(vec![del("a", "z"), RequestOp::Txn(txn(vec![], vec![put("k")]))], vec![]),
        ];
        for req in refused {
            assert_eq!(check_txn(&req, 128), Err(StoreError::DuplicateKey), "{req:?}");
        }
    }

    #[test]
    fn non_conflicting_txns_pass() {
        let allowed = [
            txn(vec![put("a"), put("b")], vec![put("a")]),
            txn(vec![del("a", "c"), del("b", "d")], vec![]),
            txn(vec![RequestOp::Txn(txn(vec![put("a")], vec![put("a")]))], vec![]),
            txn(vec![put("c"), del("a", "c")], vec![]),
        ];
        for req in allowed {
            assert_eq!(check_txn(&req, 128), Ok(()), "{req:?}");
        }
    }

    #[test]
    fn txn_limits_and_keys_are_checked() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(many, vec![]), 128), Err(StoreError::TooManyOps));
        assert_eq!(check_txn(&txn(vec![put("")], vec![]), 128), Err(StoreError::EmptyKey));
        let ignore = RequestOp::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        });
        assert_eq!(check_txn(&txn(vec![ignore], vec![]), 128), Err(StoreError::ValueProvided));
    }
}
