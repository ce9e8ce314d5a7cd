//! The write side: a [`WriteTxn`] collects the changes of one mutating request into one backend
//! batch under one new revision, and keeps an overlay so the request's later operations read its own
//! earlier writes (as etcd's transactions do).
//!
//! [`StagedPuts`] carries consecutive standalone puts into one backend write: each staged put is
//! executed as a transaction of its own (its own revision, its own events) on top of the ones staged
//! before it, and the lot is written and published together.
//!
//! Invariants: nothing reaches the backend before [`WriteTxn::commit`] or [`StagedPuts::commit`]; a
//! transaction that changed nothing leaves the revision unchanged; lease attachments are updated in
//! the same batch as the keys they describe; readers never see a staged revision before every
//! revision up to it is written (the current revision is advanced only after the write); the
//! live-key index (`latest.rs`) learns of a change only after its write.

use std::ops::ControlFlow;

use super::encoding::{IndexEntry, Record, RecordKind, index_key, lease_attachment_key, revision_key};
use super::latest::{Latest, Newest};
use super::read::Overlay;
use super::{
    Event, EventKind, KeyValue, LeaseCheck, Mvcc, MvccError, PutRequest, PutResponse, RangeEnd, RangeRequest,
    RangeResponse, Revision,
};
use crate::backend::{Cf, Durability, WriteBatch};
use crate::format;

/// An uncommitted mutating request.
pub struct WriteTxn<'a> {
    mvcc: &'a Mvcc,
    /// The committed revision this transaction builds on.
    base: i64,
    next_sub: i64,
    /// Attach the previous version to every event (some watcher or the request wants it).
    want_prev_values: bool,
    overlay: Overlay,
    /// The latest versions of the keys written by puts staged before this one (see [`StagedPuts`]);
    /// only point lookups ([`WriteTxn::get`]) consult it, which is all a standalone put does.
    staged: Option<&'a Overlay>,
    events: Vec<Event>,
    batch: WriteBatch,
    /// Every key this transaction wrote and its state afterwards, in order: what the live-key index
    /// records once the batch is written.
    changes: Vec<(Vec<u8>, Option<Newest>)>,
}

/// What a committed transaction produced.
#[derive(Debug)]
pub struct Committed {
    /// The store revision after the commit.
    pub revision: i64,
    /// The changes, in order (empty when nothing changed).
    pub events: Vec<Event>,
}

impl Mvcc {
    /// Starts a write transaction on the latest committed revision. Only the apply path may hold one.
    pub fn write_txn(&self, want_prev_values: bool) -> WriteTxn<'_> {
        WriteTxn::on(self, self.current_revision(), want_prev_values, None)
    }

    /// Starts staging standalone puts on the latest committed revision. Only the apply path may hold
    /// one, and no other write may happen until it is committed or dropped.
    pub fn stage_puts(&self) -> StagedPuts {
        let base = self.current_revision();
        StagedPuts {
            base,
            overlay: Overlay::new(),
            batch: WriteBatch::new(),
            committed: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// Writes `batch` and `extra` as one atomic backend write, recording `advanced_to` (when some
    /// revision was made) as the current revision in it; only after the write do readers see that
    /// revision and does the live-key index record `changes`. The one commit step of both
    /// [`WriteTxn`] and [`StagedPuts`].
    fn write_advancing(
        &self,
        mut batch: WriteBatch,
        advanced_to: Option<i64>,
        extra: WriteBatch,
        durability: Durability,
        changes: &[(Vec<u8>, Option<Newest>)],
    ) -> Result<(), MvccError> {
        if let Some(revision) = advanced_to {
            batch.put(Cf::Meta, format::CURRENT_REVISION_KEY, revision.to_be_bytes());
        }
        batch.extend(extra);
        if !batch.is_empty() {
            self.backend.write(batch, durability)?;
        }
        self.latest.record_all(changes);
        if let Some(revision) = advanced_to {
            self.current.store(revision, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }
}

/// Standalone puts executed one after another but not yet written: one backend write commits them
/// all (the apply path stages the puts of one run of committed log entries).
///
/// Invariant: staged put `i` has revision `base + 1 + i`; `overlay` holds the newest staged version
/// of every key a staged put wrote, so each put sees the ones staged before it exactly as it would
/// had they been committed.
pub struct StagedPuts {
    /// The committed revision the first staged put builds on.
    base: i64,
    overlay: Overlay,
    batch: WriteBatch,
    committed: Vec<Committed>,
    /// The staged puts' changes for the live-key index, in order.
    changes: Vec<(Vec<u8>, Option<Newest>)>,
}

impl StagedPuts {
    /// The revision after the puts staged so far.
    pub fn revision(&self) -> i64 {
        self.committed.last().map_or(self.base, |put| put.revision)
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.committed.is_empty()
    }

    /// Approximate size of the staged writes in bytes.
    pub fn size_bytes(&self) -> usize {
        self.batch.size_bytes()
    }

    /// Executes a standalone put on top of the staged ones; a refused put stages nothing.
    pub fn execute_put(
        &mut self,
        mvcc: &Mvcc,
        req: &PutRequest,
        leases: &dyn LeaseCheck,
        want_prev_values: bool,
    ) -> Result<PutResponse, MvccError> {
        let mut txn = WriteTxn::on(mvcc, self.revision(), want_prev_values, Some(&self.overlay));
        let resp = txn.execute_put(req, leases)?;
        let revision = txn.revision();
        let WriteTxn { overlay, events, batch, changes, .. } = txn;
        self.overlay.extend(overlay);
        self.batch.extend(batch);
        self.changes.extend(changes);
        self.committed.push(Committed { revision, events });
        Ok(resp)
    }

    /// Writes every staged put plus `extra` as one atomic batch, then publishes the new revision to
    /// readers; returns what each put produced, in order.
    pub fn commit(self, mvcc: &Mvcc, extra: WriteBatch, durability: Durability) -> Result<Vec<Committed>, MvccError> {
        debug_assert_eq!(mvcc.current_revision(), self.base, "a write happened while puts were staged");
        let advanced_to = (!self.is_empty()).then(|| self.revision());
        mvcc.write_advancing(self.batch, advanced_to, extra, durability, &self.changes)?;
        Ok(self.committed)
    }
}

impl<'a> WriteTxn<'a> {
    /// A transaction on `base`, over the staged puts' overlay when there is one.
    fn on(mvcc: &'a Mvcc, base: i64, want_prev_values: bool, staged: Option<&'a Overlay>) -> Self {
        WriteTxn {
            mvcc,
            base,
            next_sub: 0,
            want_prev_values,
            overlay: Overlay::new(),
            staged,
            events: Vec::new(),
            batch: WriteBatch::new(),
            changes: Vec::new(),
        }
    }

    /// The MVCC store this transaction writes to.
    pub fn mvcc(&self) -> &'a Mvcc {
        self.mvcc
    }

    /// The committed revision this transaction started from.
    pub fn base_revision(&self) -> i64 {
        self.base
    }

    /// The revision reads inside the transaction observe: the base, plus one once anything changed.
    pub fn revision(&self) -> i64 {
        if self.events.is_empty() { self.base } else { self.base + 1 }
    }

    fn write_revision(&mut self) -> Revision {
        let rev = Revision { main: self.base + 1, sub: self.next_sub };
        self.next_sub += 1;
        rev
    }

    /// A range read that sees this transaction's own writes.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        debug_assert!(self.staged.is_none(), "ranges never run on top of staged puts");
        let mut resp = self.mvcc.range_with(req, self.base, Some(&self.overlay))?;
        resp.revision = self.revision();
        Ok(resp)
    }

    /// The latest version of `key`, seeing this transaction's writes; the value is loaded only when
    /// `with_value`. A key neither overlay holds has the same state at `base` as at the latest
    /// committed revision, which the live-key index knows: absent, or at a revision read with one
    /// point lookup.
    pub fn get(&self, key: &[u8], with_value: bool) -> Result<Option<KeyValue>, MvccError> {
        if let Some(state) = self.overlay.get(key).or_else(|| self.staged.and_then(|staged| staged.get(key))) {
            return Ok(state.clone());
        }
        let found = match self.mvcc.latest.lookup(key) {
            Latest::Absent => return Ok(None),
            // The index holds everything but the value.
            Latest::At(newest) if !with_value => return Ok(Some(newest.key_value(key.to_vec(), Vec::new()))),
            Latest::At(newest) => return self.mvcc.fetch_newest(key, newest.rev).map(Some),
            Latest::Unknown => {
                let mut found = None;
                self.mvcc.scan_index(key, &RangeEnd::Single, self.base, |hit| {
                    found = Some(hit);
                    ControlFlow::Break(())
                })?;
                found
            }
        };
        match found {
            None => Ok(None),
            Some(hit) if with_value => Ok(self.mvcc.fetch_values(vec![hit])?.pop()),
            Some(hit) => Ok(Some(hit.into_key_value(Vec::new()))),
        }
    }

    /// Writes `key`; returns the new version and the previous one (with its value when
    /// `want_prev_value` or the transaction wants previous values).
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        want_prev_value: bool,
    ) -> Result<(KeyValue, Option<KeyValue>), MvccError> {
        let prev = self.get(key, want_prev_value || self.want_prev_values)?;
        let rev = self.write_revision();
        let entry = IndexEntry {
            kind: RecordKind::Put,
            create_revision: prev.as_ref().map_or(rev.main, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        let record = Record { meta: entry, key: key.to_vec(), value };
        self.batch.put(Cf::Index, index_key(key, rev), entry.encode());
        self.batch.put(Cf::Revs, revision_key(rev), record.encode());
        self.changes.push((key.to_vec(), Some(Newest { rev, entry })));
        let prev_lease = prev.as_ref().map_or(0, |p| p.lease);
        if prev_lease != lease {
            if prev_lease != 0 {
                self.batch.delete(Cf::Leases, lease_attachment_key(prev_lease, key));
            }
            if lease != 0 {
                self.batch.put(Cf::Leases, lease_attachment_key(lease, key), Vec::new());
            }
        }
        let kv = KeyValue {
            key: record.key,
            create_revision: entry.create_revision,
            mod_revision: rev.main,
            version: entry.version,
            value: record.value,
            lease,
        };
        self.overlay.insert(key.to_vec(), Some(kv.clone()));
        self.events.push(Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev_kv: prev.clone().filter(|_| self.want_prev_values),
        });
        Ok((kv, prev))
    }

    /// Deletes every live key in `[key, range_end)` (etcd range-end convention); returns the deleted
    /// versions in key order (with values when `want_prev_values` or the transaction wants them).
    pub fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        want_prev_values: bool,
    ) -> Result<Vec<KeyValue>, MvccError> {
        let with_values = want_prev_values || self.want_prev_values;
        let doomed = self
            .range(&RangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                keys_only: !with_values,
                ..RangeRequest::default()
            })?
            .kvs;
        for prev in &doomed {
            let rev = self.write_revision();
            let entry = IndexEntry { kind: RecordKind::Tombstone, create_revision: 0, version: 0, lease: 0 };
            let record = Record { meta: entry, key: prev.key.clone(), value: Vec::new() };
            self.batch.put(Cf::Index, index_key(&prev.key, rev), entry.encode());
            self.batch.put(Cf::Revs, revision_key(rev), record.encode());
            if prev.lease != 0 {
                self.batch.delete(Cf::Leases, lease_attachment_key(prev.lease, &prev.key));
            }
            self.changes.push((prev.key.clone(), None));
            self.overlay.insert(prev.key.clone(), None);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue { key: prev.key.clone(), mod_revision: rev.main, ..KeyValue::default() },
                prev_kv: Some(prev.clone()).filter(|_| self.want_prev_values),
            });
        }
        Ok(doomed)
    }

    /// True when the transaction changed something.
    pub fn has_changes(&self) -> bool {
        !self.events.is_empty()
    }

    /// Writes the changes plus `extra` (the caller's metadata, such as the applied log id) as one
    /// atomic batch, then publishes the new revision to readers.
    pub fn commit(self, extra: WriteBatch, durability: Durability) -> Result<Committed, MvccError> {
        let revision = self.revision();
        let advanced_to = self.has_changes().then_some(revision);
        self.mvcc.write_advancing(self.batch, advanced_to, extra, durability, &self.changes)?;
        Ok(Committed { revision, events: self.events })
    }
}
