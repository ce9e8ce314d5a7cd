//! The live-key index: the newest committed version (revision and index metadata, no value) of
//! every live key, in memory, so the apply path learns a key's current version, or that it does not
//! exist, without seeking the on-disk index. Every put needs that version (for its create revision
//! and version count), and the seek, mostly a memtable skiplist search, was the largest single
//! cost of applying a put. etcd keeps a similar in-memory index of every key.
//!
//! Invariants:
//! - The map holds exactly the keys that exist at the latest committed revision, each with its
//!   newest version; a key that was never written, was deleted, or whose tombstone was compacted
//!   is absent. It is loaded from the on-disk index when the MVCC store opens and again by
//!   [`super::Mvcc::reload`] when a snapshot replaces the data; the apply path records each
//!   committed change after its backend write ([`super::WriteTxn::commit`],
//!   [`super::StagedPuts::commit`]). Compaction never changes a key's state at the latest
//!   revision, so it leaves the map alone.
//! - Only the apply path reads or changes it after loading (one thread at a time); readers at
//!   other revisions never consult it. The mutex exists because [`super::Mvcc`] is shared, not
//!   for contention, and is never held across a backend call.
//! - Its size is bounded by the store's own: one entry per live key, as the backend quota bounds
//!   the keys. An entry is the key plus 40 bytes ([`Live`]); with 1M keys of 10–20 bytes the map
//!   took about 110 MiB of resident memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::encoding::{IndexEntry, RecordKind, split_index_key, unescape_key};
use super::{MvccError, Revision};
use crate::backend::{Backend, Cf};

/// A key's state at the latest committed revision: its newest version's revision and metadata,
/// or `None` when it does not exist.
pub(crate) type LatestState = Option<(Revision, IndexEntry)>;

/// A live key's newest version: its [`IndexEntry`] without the kind (always a put), to keep the
/// map's buckets small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    rev: Revision,
    create_revision: i64,
    version: i64,
    lease: i64,
}

impl Live {
    fn new(rev: Revision, entry: &IndexEntry) -> Self {
        Live { rev, create_revision: entry.create_revision, version: entry.version, lease: entry.lease }
    }

    fn state(self) -> (Revision, IndexEntry) {
        let entry = IndexEntry {
            kind: RecordKind::Put,
            create_revision: self.create_revision,
            version: self.version,
            lease: self.lease,
        };
        (self.rev, entry)
    }
}

type LiveMap = HashMap<Box<[u8]>, Live>;

/// The index; see the module documentation.
pub(crate) struct LiveKeys {
    /// Live key → its newest version. Held only for a lookup, an update or a reload's swap.
    keys: Mutex<LiveMap>,
}

impl LiveKeys {
    /// Loads the newest version of every live key from the on-disk index.
    pub(crate) fn load(backend: &dyn Backend) -> Result<Self, MvccError> {
        Ok(LiveKeys { keys: Mutex::new(Self::scan(backend)?) })
    }

    /// Replaces the contents with the backend's (its data was replaced).
    pub(crate) fn reload(&self, backend: &dyn Backend) -> Result<(), MvccError> {
        let keys = Self::scan(backend)?;
        *self.lock() = keys;
        Ok(())
    }

    fn scan(backend: &dyn Backend) -> Result<LiveMap, MvccError> {
        let mut keys = HashMap::new();
        let mut cursor = backend.cursor(Cf::Index);
        cursor.seek_to_first();
        // Index order is (key ascending, revision descending): a key's first entry is its newest.
        let mut previous: Option<Vec<u8>> = None;
        while let Some((raw_key, raw_value)) = cursor.entry() {
            let (escaped, rev) = split_index_key(raw_key)?;
            if previous.as_deref() != Some(escaped) {
                let entry = IndexEntry::decode(raw_value)?;
                if entry.kind == RecordKind::Put {
                    keys.insert(unescape_key(escaped)?.into_boxed_slice(), Live::new(rev, &entry));
                }
                previous = Some(escaped.to_vec());
            }
            cursor.next();
        }
        cursor.status()?;
        Ok(keys)
    }

    fn lock(&self) -> MutexGuard<'_, LiveMap> {
        self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state of `key` at the latest committed revision.
    pub(crate) fn lookup(&self, key: &[u8]) -> LatestState {
        self.lock().get(key).map(|live| live.state())
    }

    /// Records the changes of one commit, in order (a later change of a key wins).
    pub(crate) fn record_all(&self, changes: &[(Vec<u8>, LatestState)]) {
        if changes.is_empty() {
            return;
        }
        let mut keys = self.lock();
        for (key, state) in changes {
            match state {
                Some((rev, entry)) => {
                    let newest = Live::new(*rev, entry);
                    match keys.get_mut(key.as_slice()) {
                        Some(known) => *known = newest,
                        None => {
                            keys.insert(key.clone().into_boxed_slice(), newest);
                        }
                    }
                }
                None => {
                    keys.remove(key.as_slice());
                }
            }
        }
    }

    /// Live keys held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Durability, MemBackend, WriteBatch};
    use crate::mvcc::encoding::{index_key, revision_key};

    fn entry(kind: RecordKind, version: i64) -> IndexEntry {
        IndexEntry { kind, create_revision: 2, version, lease: 0 }
    }

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    #[test]
    fn loading_keeps_each_live_keys_newest_version_and_skips_deleted_keys() {
        let backend = MemBackend::new();
        let mut batch = WriteBatch::new();
        for (key, main, kind, version) in [
            (&b"a"[..], 2, RecordKind::Put, 1),
            (b"a", 3, RecordKind::Put, 2),
            (b"a\x00", 4, RecordKind::Put, 1),
            (b"gone", 5, RecordKind::Put, 1),
            (b"gone", 6, RecordKind::Tombstone, 0),
        ] {
            batch.put(Cf::Index, index_key(key, rev(main)), entry(kind, version).encode());
            batch.put(Cf::Revs, revision_key(rev(main)), Vec::new());
        }
        backend.write(batch, Durability::Buffered).unwrap();
        let live = LiveKeys::load(&backend).unwrap();
        assert_eq!(live.len(), 2);
        assert_eq!(live.lookup(b"a"), Some((rev(3), entry(RecordKind::Put, 2))));
        assert_eq!(live.lookup(b"a\x00"), Some((rev(4), entry(RecordKind::Put, 1))));
        assert_eq!(live.lookup(b"gone"), None);
    }

    #[test]
    fn recorded_changes_apply_in_order() {
        let live = LiveKeys::load(&MemBackend::new()).unwrap();
        let put = |main| Some((rev(main), entry(RecordKind::Put, 1)));
        live.record_all(&[(b"k".to_vec(), put(2)), (b"k".to_vec(), None), (b"j".to_vec(), put(3))]);
        assert_eq!(live.lookup(b"k"), None);
        assert_eq!(live.lookup(b"j"), put(3));
        live.record_all(&[(b"k".to_vec(), put(4)), (b"j".to_vec(), None), (b"k".to_vec(), put(5))]);
        assert_eq!(live.lookup(b"k"), put(5));
        assert_eq!(live.lookup(b"j"), None);
        assert_eq!(live.len(), 1);
    }
}
