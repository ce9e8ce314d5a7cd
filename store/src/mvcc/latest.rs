//! The live-key index: every live key with its newest version's revision and metadata (create
//! revision, version count, lease), in memory, so the apply path learns that a key does not exist,
//! or what its next version builds on, without touching the backend, and single-key reads find
//! the version with one point read (or none, when they want no value) instead of an index seek.
//! Every put needs the previous version's create revision and version count; reading them from
//! the backend, first with an index seek and then with a point read of the newest record, was the
//! largest single cost of applying a put (a tenth of a member's CPU under concurrent puts, most of
//! it the memtable's skiplist search). etcd keeps a similar in-memory index of every key.
//!
//! Invariants:
//! - The map holds exactly the keys that exist at the latest committed revision, each with its
//!   newest version's revision, create revision, version and lease, equal to that version's
//!   stored index entry; a key that was never written, was deleted, or whose tombstone was
//!   compacted is absent. It is loaded from the on-disk index when the MVCC store opens and again
//!   by [`super::Mvcc::reload`] when a snapshot replaces the data; the apply path records each
//!   committed change after its backend write ([`super::WriteTxn::commit`],
//!   [`super::StagedPuts::commit`]). Compaction never changes a key's state at the latest
//!   revision, so it leaves the map alone.
//! - A revision is packed into 8 bytes; one that does not fit (main ≥ 2^39 or sub ≥ 2^24) is kept
//!   as [`Latest::Unknown`], and the caller seeks the on-disk index as it would without the map.
//! - Only the apply path changes it after loading (one thread at a time). Single-key reads consult
//!   it too, but trust it only when it proves the answer for their revision (the key's newest
//!   revision is at or below the read's; see `Mvcc::newest_if_at_or_below`), because it may
//!   already describe a later revision than theirs. The mutex is held for one map operation,
//!   never across a backend call.
//! - Its size is bounded by the store's own: one entry per live key (the key plus 32 bytes, and
//!   the hash table's slack), as the backend quota bounds the keys.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::encoding::{IndexEntry, RecordKind, split_index_key, unescape_key};
use super::read::IndexHit;
use super::{KeyValue, MvccError, Revision};
use crate::backend::{Backend, Cf};

/// Bits of a packed revision that hold `sub`; the rest (below the sign bit) hold `main`.
const SUB_BITS: u32 = 24;
/// A packed revision that stands for "live, revision not held".
const UNKNOWN: u64 = u64::MAX;

/// A live key's newest version: where it is stored and what its index entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Newest {
    pub(crate) rev: Revision,
    /// A put's entry (the index holds no tombstones).
    pub(crate) entry: IndexEntry,
}

impl Newest {
    /// The version as a key-value pair of `key` carrying `value` (empty when the caller wants no
    /// value, which the index does not hold).
    pub(crate) fn key_value(self, key: Vec<u8>, value: Vec<u8>) -> KeyValue {
        IndexHit { key, rev: self.rev, entry: self.entry }.into_key_value(value)
    }
}

/// What the index says about a key at the latest committed revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Latest {
    /// The key does not exist.
    Absent,
    /// The key exists; this is its newest version.
    At(Newest),
    /// The key exists but its revision did not fit the packing; seek the on-disk index.
    Unknown,
}

fn pack(rev: Revision) -> u64 {
    match (u64::try_from(rev.main), u64::try_from(rev.sub)) {
        (Ok(main), Ok(sub)) if main < 1 << (63 - SUB_BITS) && sub < 1 << SUB_BITS => main << SUB_BITS | sub,
        _ => UNKNOWN,
    }
}

fn unpack(packed: u64) -> Option<Revision> {
    if packed == UNKNOWN {
        return None;
    }
    // Both parts are below 2^39 and 2^24, so the conversions cannot fail.
    let main = i64::try_from(packed >> SUB_BITS).unwrap_or(i64::MAX);
    let sub = i64::try_from(packed & ((1 << SUB_BITS) - 1)).unwrap_or(0);
    Some(Revision { main, sub })
}

/// A live key's newest version as the map holds it: the revision packed, the metadata as stored.
#[derive(Clone, Copy, Debug)]
struct Slot {
    packed_rev: u64,
    create_revision: i64,
    version: i64,
    lease: i64,
}

impl Slot {
    fn of(newest: &Newest) -> Self {
        Slot {
            packed_rev: pack(newest.rev),
            create_revision: newest.entry.create_revision,
            version: newest.entry.version,
            lease: newest.entry.lease,
        }
    }

    fn latest(&self) -> Latest {
        match unpack(self.packed_rev) {
            None => Latest::Unknown,
            Some(rev) => Latest::At(Newest {
                rev,
                entry: IndexEntry {
                    kind: RecordKind::Put,
                    create_revision: self.create_revision,
                    version: self.version,
                    lease: self.lease,
                },
            }),
        }
    }
}

type LiveMap = HashMap<Box<[u8]>, Slot>;

/// The index; see the module documentation.
pub(crate) struct LiveKeys {
    /// Live key → its newest version. Held only for a lookup, an update or a reload's swap.
    keys: Mutex<LiveMap>,
}

impl LiveKeys {
    /// Loads every live key from the on-disk index.
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
        // The escaped key of the entry before, in one buffer reused for every key.
        let mut previous: Option<Vec<u8>> = None;
        while let Some((raw_key, raw_value)) = cursor.entry() {
            let (escaped, rev) = split_index_key(raw_key)?;
            if previous.as_deref() != Some(escaped) {
                let entry = IndexEntry::decode(raw_value)?;
                if entry.kind == RecordKind::Put {
                    keys.insert(unescape_key(escaped)?.into_boxed_slice(), Slot::of(&Newest { rev, entry }));
                }
                let buffer = previous.get_or_insert_with(Vec::new);
                buffer.clear();
                buffer.extend_from_slice(escaped);
            }
            cursor.next();
        }
        cursor.status()?;
        keys.shrink_to_fit();
        Ok(keys)
    }

    fn lock(&self) -> MutexGuard<'_, LiveMap> {
        self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state of `key` at the latest committed revision.
    pub(crate) fn lookup(&self, key: &[u8]) -> Latest {
        self.lock().get(key).map_or(Latest::Absent, Slot::latest)
    }

    /// Records the changes of one commit, in order (a later change of a key wins): a key's new
    /// newest version, or `None` for a deleted key.
    pub(crate) fn record_all(&self, changes: &[(Vec<u8>, Option<Newest>)]) {
        if changes.is_empty() {
            return;
        }
        let mut keys = self.lock();
        for (key, change) in changes {
            match change {
                Some(newest) => match keys.get_mut(key.as_slice()) {
                    Some(known) => *known = Slot::of(newest),
                    None => {
                        keys.insert(key.clone().into_boxed_slice(), Slot::of(newest));
                    }
                },
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

    fn rev(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    /// A version written at `main` by the key's `version`-th put since its creation at `created`.
    fn newest(main: i64, created: i64, version: i64, lease: i64) -> Newest {
        Newest { rev: rev(main), entry: IndexEntry { kind: RecordKind::Put, create_revision: created, version, lease } }
    }

    #[test]
    fn loading_keeps_each_live_keys_newest_version_and_skips_deleted_keys() -> Result<(), MvccError> {
        let backend = MemBackend::new();
        let mut batch = WriteBatch::new();
        for (key, main, kind, version, lease) in [
            (&b"a"[..], 2, RecordKind::Put, 1, 0),
            (b"a", 3, RecordKind::Put, 2, 7),
            (b"a\x00", 4, RecordKind::Put, 1, 0),
            (b"gone", 5, RecordKind::Put, 1, 0),
            (b"gone", 6, RecordKind::Tombstone, 0, 0),
        ] {
            let entry = IndexEntry { kind, create_revision: 2, version, lease };
            batch.put(Cf::Index, index_key(key, rev(main)), entry.encode());
            batch.put(Cf::Revs, revision_key(rev(main)), Vec::new());
        }
        backend.write(batch, Durability::Buffered)?;
        let live = LiveKeys::load(&backend)?;
        assert_eq!(live.len(), 2);
        assert_eq!(live.lookup(b"a"), Latest::At(newest(3, 2, 2, 7)));
        assert_eq!(live.lookup(b"a\x00"), Latest::At(newest(4, 2, 1, 0)));
        assert_eq!(live.lookup(b"gone"), Latest::Absent);
        Ok(())
    }

    #[test]
    fn recorded_changes_apply_in_order() -> Result<(), MvccError> {
        let live = LiveKeys::load(&MemBackend::new())?;
        live.record_all(&[
            (b"k".to_vec(), Some(newest(2, 2, 1, 0))),
            (b"k".to_vec(), None),
            (b"j".to_vec(), Some(newest(3, 3, 1, 0))),
        ]);
        assert_eq!(live.lookup(b"k"), Latest::Absent);
        assert_eq!(live.lookup(b"j"), Latest::At(newest(3, 3, 1, 0)));
        live.record_all(&[
            (b"k".to_vec(), Some(newest(4, 4, 1, 0))),
            (b"j".to_vec(), None),
            (b"k".to_vec(), Some(newest(5, 4, 2, 9))),
        ]);
        assert_eq!(live.lookup(b"k"), Latest::At(newest(5, 4, 2, 9)));
        assert_eq!(live.lookup(b"j"), Latest::Absent);
        assert_eq!(live.len(), 1);
        Ok(())
    }

    #[test]
    fn revisions_too_large_to_pack_are_kept_as_unknown_not_truncated() -> Result<(), MvccError> {
        let fits = Revision { main: (1 << 39) - 1, sub: (1 << 24) - 1 };
        assert_eq!(unpack(pack(fits)), Some(fits));
        for too_large in [Revision { main: 1 << 39, sub: 0 }, Revision { main: 2, sub: 1 << 24 }] {
            let live = LiveKeys::load(&MemBackend::new())?;
            let entry = IndexEntry { kind: RecordKind::Put, create_revision: 2, version: 1, lease: 0 };
            let version = Newest { rev: too_large, entry };
            live.record_all(&[(b"k".to_vec(), Some(version))]);
            assert_eq!(live.lookup(b"k"), Latest::Unknown, "{too_large:?}");
        }
        Ok(())
    }
}
