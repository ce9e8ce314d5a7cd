//! An in-memory [`Backend`]: one `BTreeMap` per column family behind a read-write lock.
//!
//! It exists for tests (fast, no files) and must behave exactly like the RocksDB backend, which the
//! shared conformance suite checks. Durability settings are accepted and ignored: nothing survives
//! the process, but a `MemBackend` shared through an `Arc` survives a simulated restart of the store
//! built on it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Backend, BackendError, BatchOp, Cf, Cursor, Durability, ExportVisitor, WriteBatch};

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory backend; cheap to clone (clones share the data).
#[derive(Clone, Default)]
pub struct MemBackend {
    /// One table per column family, indexed by `Cf as usize`. A single lock over all tables makes
    /// every batch atomic across column families; it is held only for one batch or one cursor step.
    tables: Arc<RwLock<Vec<Table>>>,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self { tables: Arc::new(RwLock::new(vec![Table::new(); Cf::ALL.len()])) }
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Table>> {
        // A poisoned lock means a writer panicked midway through a batch; the maps themselves are
        // still structurally valid, and a panicking test is already failing, so read on.
        self.tables.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, Vec<Table>> {
        self.tables.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend").finish_non_exhaustive()
    }
}

impl Backend for MemBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.read()[cf.index()].get(key).cloned())
    }

    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_> {
        Box::new(MemCursor { backend: self, cf, current: None })
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<(), BackendError> {
        let mut tables = self.write_lock();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => {
                    tables[cf.index()].insert(key, value);
                }
                BatchOp::Delete { cf, key } => {
                    tables[cf.index()].remove(&key);
                }
                BatchOp::DeleteRange { cf, from, to } => {
                    if from < to {
                        let table = &mut tables[cf.index()];
                        let doomed: Vec<Vec<u8>> = table
                            .range::<[u8], _>((Bound::Included(&from[..]), Bound::Excluded(&to[..])))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in doomed {
                            table.remove(&key);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_wal(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn export(&self, cfs: &[Cf], visit: &mut ExportVisitor<'_>) -> Result<(), BackendError> {
        // Copy under the lock so the visitor sees one point in time and may take as long as it likes.
        let copies: Vec<(Cf, Table)> = {
            let tables = self.read();
            cfs.iter().map(|&cf| (cf, tables[cf.index()].clone())).collect()
        };
        for (cf, table) in copies {
            for (key, value) in &table {
                visit(cf, key, value)?;
            }
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let tables = self.read();
        tables.iter().flat_map(|table| table.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    /// Nothing to do: a removed or overwritten entry is freed at once (the maps keep no
    /// tombstones or old versions), so the space is always exactly that of the live data.
    fn defragment(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// A cursor that re-seeks under a short read lock at every step, so it never blocks writers for
/// longer than one lookup.
struct MemCursor<'a> {
    backend: &'a MemBackend,
    cf: Cf,
    current: Option<(Vec<u8>, Vec<u8>)>,
}

impl MemCursor<'_> {
    fn land(&mut self, range: (Bound<&[u8]>, Bound<&[u8]>), forward: bool) {
        let tables = self.backend.read();
        let mut iter = tables[self.cf.index()].range::<[u8], _>(range);
        let found = if forward { iter.next() } else { iter.next_back() };
        self.current = found.map(|(k, v)| (k.clone(), v.clone()));
    }
}

impl Cursor for MemCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.land((Bound::Included(key), Bound::Unbounded), true);
    }

    fn seek_for_prev(&mut self, key: &[u8]) {
        self.land((Bound::Unbounded, Bound::Included(key)), false);
    }

    fn seek_to_first(&mut self) {
        self.land((Bound::Unbounded, Bound::Unbounded), true);
    }

    fn seek_to_last(&mut self) {
        self.land((Bound::Unbounded, Bound::Unbounded), false);
    }

    fn next(&mut self) {
        if let Some((key, _)) = self.current.take() {
            self.land((Bound::Excluded(&key[..]), Bound::Unbounded), true);
        }
    }

    fn prev(&mut self) {
        if let Some((key, _)) = self.current.take() {
            self.land((Bound::Unbounded, Bound::Excluded(&key[..])), false);
        }
    }

    fn entry(&self) -> Option<(&[u8], &[u8])> {
        self.current.as_ref().map(|(k, v)| (&k[..], &v[..]))
    }

    fn status(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
