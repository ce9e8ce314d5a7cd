//! Reads: ranges at a revision, single-key lookups and history replay for watchers.
//!
//! A range walks the index in key order. For each key the first entry at or after
//! `escape(key) ‖ !R` is its newest version at or below `R` (one seek); older versions of the key are
//! skipped with a second seek, so reads cost O(keys · log n) however much history is retained.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use super::encoding::{
    IndexEntry, Record, RecordKind, decode_revision_key, escape_key, index_key_upper, index_seek_at, revision_key,
    split_index_key, unescape_key,
};
use super::latest::{Latest, Newest};
use super::{
    Event, EventKind, KeyValue, Mvcc, MvccError, RangeEnd, RangeRequest, RangeResponse, Revision, SortOrder, SortTarget,
};
use crate::backend::Cf;

/// The newest version of a key at or below some revision, without its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexHit {
    pub key: Vec<u8>,
    pub rev: Revision,
    pub entry: IndexEntry,
}

impl IndexHit {
    pub(crate) fn into_key_value(self, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: self.key,
            create_revision: self.entry.create_revision,
            mod_revision: self.rev.main,
            version: self.entry.version,
            value,
            lease: self.entry.lease,
        }
    }
}

/// The state of keys written by an uncommitted transaction, layered over the committed data.
/// `None` marks a key deleted in the transaction.
pub(crate) type Overlay = BTreeMap<Vec<u8>, Option<KeyValue>>;

impl Mvcc {
    /// Visits the newest live (non-tombstone) version at or below `rev` of every key in the range,
    /// in key order, until `visit` breaks.
    pub(crate) fn scan_index(
        &self,
        key: &[u8],
        end: &RangeEnd,
        rev: i64,
        mut visit: impl FnMut(IndexHit) -> ControlFlow<()>,
    ) -> Result<(), MvccError> {
        let start = escape_key(key);
        let escaped_end = match end {
            RangeEnd::Single => None,
            RangeEnd::Unbounded => None,
            RangeEnd::Before(end) => {
                if end.as_slice() <= key {
                    return Ok(());
                }
                Some(escape_key(end))
            }
        };
        let mut cursor = self.backend.cursor(Cf::Index);
        cursor.seek(&index_seek_at(&start, rev));
        while let Some((raw_key, raw_value)) = cursor.entry() {
            let (escaped, found) = split_index_key(raw_key)?;
            match end {
                RangeEnd::Single if escaped != start.as_slice() => break,
                RangeEnd::Before(_) if escaped_end.as_deref().is_some_and(|e| escaped >= e) => break,
                _ => {}
            }
            if found.main > rev {
                // A version newer than the read revision: jump to this key's newest version ≤ rev.
                let target = index_seek_at(escaped, rev);
                cursor.seek(&target);
                continue;
            }
            let entry = IndexEntry::decode(raw_value)?;
            let escaped = escaped.to_vec();
            if entry.kind == RecordKind::Put {
                let hit = IndexHit { key: unescape_key(&escaped)?, rev: found, entry };
                if visit(hit).is_break() {
                    break;
                }
            }
            if matches!(end, RangeEnd::Single) {
                break;
            }
            // Skip the older versions of this key: usually one step, else one seek.
            cursor.next();
            if let Some((next_key, _)) = cursor.entry()
                && split_index_key(next_key)?.0 == escaped.as_slice()
            {
                cursor.seek(&index_key_upper(&escaped));
            }
        }
        cursor.status()?;
        Ok(())
    }

    /// Fetches the values of index hits.
    pub(crate) fn fetch_values(&self, hits: Vec<IndexHit>) -> Result<Vec<KeyValue>, MvccError> {
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<Vec<u8>> = hits.iter().map(|hit| revision_key(hit.rev).to_vec()).collect();
        let values = self.backend.multi_get(Cf::Revs, &keys)?;
        hits.into_iter()
            .zip(values)
            .map(|(hit, value)| {
                let bytes = value.ok_or_else(|| {
                    MvccError::Corrupt(format!("index names revision {:?} but it is not stored", hit.rev))
                })?;
                Ok(hit.into_key_value(Record::decode_value(&bytes)?))
            })
            .collect()
    }

    /// The version of `key` stored at `rev`, with its value, which the live-key index names as its
    /// newest (so it must be a put of that key).
    pub(crate) fn fetch_newest(&self, key: &[u8], rev: Revision) -> Result<KeyValue, MvccError> {
        let bytes = self.backend.get(Cf::Revs, &revision_key(rev))?.ok_or_else(|| {
            MvccError::Corrupt(format!("the live-key index names revision {rev:?} but it is not stored"))
        })?;
        let (meta, stored_key, value) = Record::decode_parts(&bytes)?;
        if stored_key != key || meta.kind != RecordKind::Put {
            return Err(MvccError::Corrupt(format!(
                "the live-key index names revision {rev:?} for a key, but that revision is not a put of it"
            )));
        }
        Ok(KeyValue {
            key: key.to_vec(),
            create_revision: meta.create_revision,
            mod_revision: rev.main,
            version: meta.version,
            value: value.to_vec(),
            lease: meta.lease,
        })
    }

    /// Serves a range read at the latest committed revision.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_with(req, self.current_revision(), None)
    }

    /// Serves a range read whose "latest" is `current`, layering `overlay` (uncommitted writes of a
    /// transaction, visible only to reads at the latest revision) over the stored data.
    pub(crate) fn range_with(
        &self,
        req: &RangeRequest,
        current: i64,
        overlay: Option<&Overlay>,
    ) -> Result<RangeResponse, MvccError> {
        let rev = if req.revision <= 0 { current } else { req.revision };
        self.check_readable(rev, current)?;
        let overlay = overlay.filter(|o| !o.is_empty() && req.revision <= 0);
        let end = RangeEnd::from_etcd(&req.range_end);

        let needs_all = req.sort_order != SortOrder::None
            || req.sort_target != SortTarget::Key
            || req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0
            || overlay.is_some();
        // Fetch one more than the limit to learn whether there is more.
        let fetch_limit = if needs_all || req.limit <= 0 { usize::MAX } else { req.limit as usize + 1 };

        let (mut kvs, mut count) = match self.newest_if_at_or_below(&req.key, &end, rev, overlay) {
            // The index holds everything but the value.
            Some(newest) if req.keys_only || req.count_only => (vec![newest.key_value(req.key.clone(), Vec::new())], 1),
            Some(newest) => (vec![self.fetch_newest(&req.key, newest.rev)?], 1),
            None => {
                // With an overlay, stored keys must be known individually to merge them, even for
                // counts.
                let collect_keys = !req.count_only || overlay.is_some();
                let mut hits = Vec::new();
                let mut count: i64 = 0;
                self.scan_index(&req.key, &end, rev, |hit| {
                    count += 1;
                    if collect_keys && hits.len() < fetch_limit {
                        hits.push(hit);
                    }
                    ControlFlow::Continue(())
                })?;
                let kvs = if req.keys_only || req.count_only {
                    hits.into_iter().map(|hit| hit.into_key_value(Vec::new())).collect()
                } else {
                    self.fetch_values(hits)?
                };
                (kvs, count)
            }
        };

        if let Some(overlay) = overlay {
            count = merge_overlay(&mut kvs, overlay, &req.key, &end);
            if req.keys_only {
                kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
        }
        if req.count_only {
            kvs.clear();
        }

        // A compaction that raced past `rev` may have removed what we read.
        let compacted = self.compacted_revision();
        if rev < compacted {
            return Err(MvccError::Compacted { compact_revision: compacted });
        }

        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);

        let mut more = false;
        if req.limit > 0 && kvs.len() > req.limit as usize {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        Ok(RangeResponse { revision: current, kvs, more, count })
    }

    /// For a single-key read at `rev` without an overlay: the key's newest version when the
    /// live-key index proves it is also the newest at or below `rev`, so the read needs one point
    /// lookup for the value, or none without one. The index describes some committed revision at
    /// or after `rev` (apply records a commit before it advances the current revision, which `rev`
    /// was read from after); a newest version at or below `rev` there means no version came after
    /// it up to `rev`. A key the index lacks or holds at a later revision may have existed at
    /// `rev`: `None`, and the caller seeks the on-disk index.
    fn newest_if_at_or_below(&self, key: &[u8], end: &RangeEnd, rev: i64, overlay: Option<&Overlay>) -> Option<Newest> {
        if !matches!(end, RangeEnd::Single) || overlay.is_some() {
            return None;
        }
        match self.latest.lookup(key) {
            Latest::At(newest) if newest.rev.main <= rev => Some(newest),
            Latest::At(_) | Latest::Absent | Latest::Unknown => None,
        }
    }

    /// The newest version of `key` at or below `rev` (≤ 0: latest), with its value.
    pub fn get(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let current = self.current_revision();
        let rev = if rev <= 0 { current } else { rev };
        self.check_readable(rev, current)?;
        self.get_unchecked(key, rev)
    }

    pub(crate) fn get_unchecked(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let mut found = None;
        self.scan_index(key, &RangeEnd::Single, rev, |hit| {
            found = Some(hit);
            ControlFlow::Break(())
        })?;
        match found {
            None => Ok(None),
            Some(hit) => Ok(self.fetch_values(vec![hit])?.pop()),
        }
    }

    /// Reads the events of revisions `from..=to` in revision order, stopping at a revision boundary
    /// once `max_events` events were read. Returns the events and the first revision not read.
    /// Fails with `Compacted` when `from` is at or below a compaction that may have removed events.
    pub fn read_events(&self, from: i64, to: i64, max_events: usize) -> Result<(Vec<Event>, i64), MvccError> {
        let compacted = self.compacted_revision();
        if from < compacted {
            return Err(MvccError::Compacted { compact_revision: compacted });
        }
        let mut events = Vec::new();
        let mut cursor = self.backend.cursor(Cf::Revs);
        cursor.seek(&revision_key(Revision { main: from, sub: 0 }));
        let mut resume = to + 1;
        let mut last_main = None;
        while let Some((raw_key, raw_value)) = cursor.entry() {
            let rev = decode_revision_key(raw_key)?;
            if rev.main > to {
                break;
            }
            if last_main != Some(rev.main) {
                // Only stop between revisions, so one revision's events are never split.
                if events.len() >= max_events {
                    resume = rev.main;
                    break;
                }
                last_main = Some(rev.main);
            }
            let record = Record::decode(raw_value)?;
            events.push(record_to_event(record, rev));
            cursor.next();
        }
        cursor.status()?;
        // A compaction that began during the read may have removed events we skipped.
        if from < self.compacted_revision() {
            return Err(MvccError::Compacted { compact_revision: self.compacted_revision() });
        }
        Ok((events, resume))
    }

    /// The version of `key` just before revision `rev`, if still retained.
    pub fn prev_kv(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
        let before = rev - 1;
        if before < self.compacted_revision() || before <= 0 {
            return Ok(None);
        }
        self.get_unchecked(key, before)
    }
}

fn record_to_event(record: Record, rev: Revision) -> Event {
    match record.meta.kind {
        RecordKind::Put => Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: record.key,
                create_revision: record.meta.create_revision,
                mod_revision: rev.main,
                version: record.meta.version,
                value: record.value,
                lease: record.meta.lease,
            },
            prev_kv: None,
        },
        RecordKind::Tombstone => Event {
            kind: EventKind::Delete,
            kv: KeyValue { key: record.key, mod_revision: rev.main, ..KeyValue::default() },
            prev_kv: None,
        },
    }
}

/// Layers uncommitted writes over stored key-values (sorted by key); returns the merged count.
fn merge_overlay(kvs: &mut Vec<KeyValue>, overlay: &Overlay, key: &[u8], end: &RangeEnd) -> i64 {
    let mut merged: BTreeMap<Vec<u8>, KeyValue> =
        std::mem::take(kvs).into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    for (overlay_key, state) in overlay {
        if !end.contains(key, overlay_key) {
            continue;
        }
        match state {
            Some(kv) => {
                merged.insert(overlay_key.clone(), kv.clone());
            }
            None => {
                merged.remove(overlay_key);
            }
        }
    }
    *kvs = merged.into_values().collect();
    kvs.len() as i64
}

fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd returns key order by default and sorts ascending by default for any other target.
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (SortOrder::Ascend, SortTarget::Key) => return,
        (order, _) => order,
    };
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}
