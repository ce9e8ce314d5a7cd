//! Executes KV requests on a [`WriteTxn`] with etcd's semantics.
//!
//! A transaction is evaluated as etcd does: first every compare along the chosen path (nested
//! transactions included) against the state before the transaction; then the puts on that path are
//! checked (leases exist, `ignore_*` keys exist) and the ranges (revisions readable); only then do
//! the operations run, in order, each seeing the ones before it. A failed check therefore changes
//! nothing.

use super::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, MvccError, PutRequest,
    PutResponse, RangeRequest, RequestOp, ResponseOp, TxnRequest, TxnResponse, WriteTxn,
};

/// Answers whether a lease exists; implemented by the lease table.
pub trait LeaseCheck {
    /// True when lease `id` is granted and not revoked.
    fn lease_exists(&self, id: i64) -> bool;
}

impl WriteTxn<'_> {
    /// Executes a standalone put.
    pub fn execute_put(&mut self, req: &PutRequest, leases: &dyn LeaseCheck) -> Result<PutResponse, MvccError> {
        if req.lease != 0 && !leases.lease_exists(req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        self.apply_put(req)
    }

    fn apply_put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let (mut value, mut lease) = (req.value.clone(), req.lease);
        if req.ignore_value || req.ignore_lease {
            let Some(current) = self.get(&req.key, req.ignore_value)? else {
                return Err(MvccError::KeyNotFound);
            };
            if req.ignore_value {
                value = current.value;
            }
            if req.ignore_lease {
                lease = current.lease;
            }
        }
        let (_, prev) = self.put(&req.key, value, lease, req.prev_kv)?;
        Ok(PutResponse { revision: self.revision(), prev_kv: prev.filter(|_| req.prev_kv) })
    }

    /// Executes a standalone range delete.
    pub fn execute_delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let deleted = self.delete_range(&req.key, &req.range_end, req.prev_kv)?;
        Ok(DeleteRangeResponse {
            revision: self.revision(),
            deleted: deleted.len() as i64,
            prev_kvs: if req.prev_kv { deleted } else { Vec::new() },
        })
    }

    /// Executes a transaction.
    pub fn execute_txn(&mut self, req: &TxnRequest, leases: &dyn LeaseCheck) -> Result<TxnResponse, MvccError> {
        let mut path = Vec::new();
        self.compare_path(req, &mut path)?;
        if !req.is_read_only() {
            self.check_requests(req, &mut path.iter().copied(), &mut |txn, op| txn.check_put(op, leases))?;
        }
        self.check_requests(req, &mut path.iter().copied(), &mut |txn, op| txn.check_range(op))?;
        let mut resp = self.apply_txn(req, &mut path.into_iter())?;
        set_revisions(&mut resp, self.revision());
        Ok(resp)
    }

    /// Records, in pre-order, which branch each transaction on the taken path takes.
    fn compare_path(&self, req: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut succeeded = true;
        for compare in &req.compare {
            if !self.evaluate(compare)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        let ops = if succeeded { &req.success } else { &req.failure };
        for op in ops {
            if let RequestOp::Txn(nested) = op {
                self.compare_path(nested, path)?;
            }
        }
        Ok(())
    }

    fn evaluate(&self, compare: &Compare) -> Result<bool, MvccError> {
        let wants_value = matches!(compare.target, CompareTarget::Value(_));
        let kvs = self
            .range(&RangeRequest {
                key: compare.key.clone(),
                range_end: compare.range_end.clone(),
                keys_only: !wants_value,
                ..RangeRequest::default()
            })?
            .kvs;
        if kvs.is_empty() {
            // A missing key has no value to compare (nil equals empty in gRPC), so value compares
            // on missing keys fail; other fields compare as zero.
            return Ok(!wants_value && compare_kv(compare, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
    }

    fn check_requests(
        &self,
        req: &TxnRequest,
        path: &mut impl Iterator<Item = bool>,
        check: &mut dyn FnMut(&Self, &RequestOp) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded { &req.success } else { &req.failure };
        for op in ops {
            match op {
                RequestOp::Txn(nested) => self.check_requests(nested, path, check)?,
                other => check(self, other)?,
            }
        }
        Ok(())
    }

    fn check_put(&self, op: &RequestOp, leases: &dyn LeaseCheck) -> Result<(), MvccError> {
        let RequestOp::Put(put) = op else { return Ok(()) };
        if (put.ignore_value || put.ignore_lease) && self.get(&put.key, false)?.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if put.lease != 0 && !leases.lease_exists(put.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    fn check_range(&self, op: &RequestOp) -> Result<(), MvccError> {
        let RequestOp::Range(range) = op else { return Ok(()) };
        if range.revision > self.base_revision() {
            return Err(MvccError::FutureRevision);
        }
        let compacted = self.mvcc().compacted_revision();
        if range.revision > 0 && range.revision < compacted {
            return Err(MvccError::Compacted { compact_revision: compacted });
        }
        Ok(())
    }

    fn apply_txn(&mut self, req: &TxnRequest, path: &mut impl Iterator<Item = bool>) -> Result<TxnResponse, MvccError> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                RequestOp::Range(range) => ResponseOp::Range(self.range(range)?),
                RequestOp::Put(put) => ResponseOp::Put(self.apply_put(put)?),
                RequestOp::DeleteRange(delete) => ResponseOp::DeleteRange(self.execute_delete_range(delete)?),
                RequestOp::Txn(nested) => ResponseOp::Txn(self.apply_txn(nested, path)?),
            };
            responses.push(resp);
        }
        Ok(TxnResponse { revision: self.revision(), succeeded, responses })
    }
}

fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Value(value) => kv.value.as_slice().cmp(value.as_slice()),
        CompareTarget::Create(rev) => kv.create_revision.cmp(rev),
        CompareTarget::Mod(rev) => kv.mod_revision.cmp(rev),
        CompareTarget::Version(version) => kv.version.cmp(version),
        CompareTarget::Lease(lease) => kv.lease.cmp(lease),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// Gives the whole response tree the transaction's final revision, as etcd reports it: writes inside
/// report the revision they created, reads report the store revision after the transaction.
fn set_revisions(resp: &mut TxnResponse, revision: i64) {
    resp.revision = revision;
    for op in &mut resp.responses {
        match op {
            ResponseOp::Range(r) => r.revision = revision,
            ResponseOp::Put(p) => p.revision = revision,
            ResponseOp::DeleteRange(d) => d.revision = revision,
            ResponseOp::Txn(t) => set_revisions(t, revision),
        }
    }
}

impl super::Mvcc {
    /// Evaluates a transaction without writes at the latest revision, outside the apply path. The
    /// transaction must be read-only; it is refused otherwise, so nothing is ever written here.
    pub fn execute_read_only_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        if !req.is_read_only() {
            return Err(MvccError::Corrupt("a transaction with writes must go through the log".into()));
        }
        struct NoLeases;
        impl LeaseCheck for NoLeases {
            fn lease_exists(&self, _: i64) -> bool {
                false
            }
        }
        let mut txn = self.write_txn(false);
        txn.execute_txn(req, &NoLeases)
    }
}
