//! The live-key index: every live key and the revision of its newest version, in memory, so the
//! apply path learns that a key does not exist without touching the backend, and where its newest
//! version is with one point read instead of an index seek; single-key reads use it the same way
//! when it proves their answer. Every put needs that version (for its create revision and version
//! count), and the seek, mostly a memtable skiplist search and an iterator's set-up, was the
//! largest single cost of applying a put. etcd keeps a similar in-memory index of every key.
//!
//! Invariants:
//! - The map holds exactly the keys that exist at the latest committed revision, each with its
//!   newest version's revision; a key that was never written, was deleted, or whose tombstone was
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
//! - Its size is bounded by the store's own: one entry per live key (the key plus 8 bytes, and
//!   the hash table's slack), as the backend quota bounds the keys.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::encoding::{IndexEntry, RecordKind, split_index_key, unescape_key};
use super::{MvccError, Revision};
use crate::backend::{Backend, Cf};

/// Bits of a packed revision that hold `sub`; the rest (below the sign bit) hold `main`.
const SUB_BITS: u32 = 24;
/// A packed revision that stands for "live, revision not held".
const UNKNOWN: u64 = u64::MAX;

/// What the index says about a key at the latest committed revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Latest {
    /// The key does not exist.
    Absent,
    /// The key exists; its newest version has this revision.
    At(Revision),
    /// The key exists but its revision did not fit the packing; seek the on-disk index.
    Unknown,
}

fn pack(rev: Revision) -> u64 {
    match (u64::try_from(rev.main), u64::try_from(rev.sub)) {
        (Ok(main), Ok(sub)) if main < 1 << (63 - SUB_BITS) && sub < 1 << SUB_BITS => main << SUB_BITS | sub,
        _ => UNKNOWN,
    }
}

fn unpack(packed: u64) -> Latest {
    if packed == UNKNOWN {
        return Latest::Unknown;
    }
    // Both parts are below 2^39 and 2^24, so the conversions cannot fail.
    let main = i64::try_from(packed >> SUB_BITS).unwrap_or(i64::MAX);
    let sub = i64::try_from(packed & ((1 << SUB_BITS) - 1)).unwrap_or(0);
    Latest::At(Revision { main, sub })
}

type LiveMap = HashMap<Box<[u8]>, u64>;

/// The index; see the module documentation.
pub(crate) struct LiveKeys {
    /// Live key → packed revision of its newest version. Held only for a lookup, an update or a
    /// reload's swap.
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
                if IndexEntry::decode(raw_value)?.kind == RecordKind::Put {
                    keys.insert(unescape_key(escaped)?.into_boxed_slice(), pack(rev));
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
        self.lock().get(key).map_or(Latest::Absent, |packed| unpack(*packed))
    }

    /// Records the changes of one commit, in order (a later change of a key wins): the revision of
    /// a key's new newest version, or `None` for a deleted key.
    pub(crate) fn record_all(&self, changes: &[(Vec<u8>, Option<Revision>)]) {
        if changes.is_empty() {
            return;
        }
        let mut keys = self.lock();
        for (key, change) in changes {
            match change {
                Some(rev) => match keys.get_mut(key.as_slice()) {
                    Some(known) => *known = pack(*rev),
                    None => {
                        keys.insert(key.clone().into_boxed_slice(), pack(*rev));
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

    #[test]
    fn loading_keeps_each_live_keys_newest_revision_and_skips_deleted_keys() -> Result<(), MvccError> {
        let backend = MemBackend::new();
        let mut batch = WriteBatch::new();
        for (key, main, kind) in [
            (&b"a"[..], 2, RecordKind::Put),
            (b"a", 3, RecordKind::Put),
            (b"a\x00", 4, RecordKind::Put),
            (b"gone", 5, RecordKind::Put),
            (b"gone", 6, RecordKind::Tombstone),
        ] {
            let entry = IndexEntry { kind, create_revision: 2, version: 1, lease: 0 };
            batch.put(Cf::Index, index_key(key, rev(main)), entry.encode());
            batch.put(Cf::Revs, revision_key(rev(main)), Vec::new());
        }
        backend.write(batch, Durability::Buffered)?;
        let live = LiveKeys::load(&backend)?;
        assert_eq!(live.len(), 2);
        assert_eq!(live.lookup(b"a"), Latest::At(rev(3)));
        assert_eq!(live.lookup(b"a\x00"), Latest::At(rev(4)));
        assert_eq!(live.lookup(b"gone"), Latest::Absent);
        Ok(())
    }

    #[test]
    fn recorded_changes_apply_in_order() -> Result<(), MvccError> {
        let live = LiveKeys::load(&MemBackend::new())?;
        live.record_all(&[(b"k".to_vec(), Some(rev(2))), (b"k".to_vec(), None), (b"j".to_vec(), Some(rev(3)))]);
        assert_eq!(live.lookup(b"k"), Latest::Absent);
        assert_eq!(live.lookup(b"j"), Latest::At(rev(3)));
        live.record_all(&[(b"k".to_vec(), Some(rev(4))), (b"j".to_vec(), None), (b"k".to_vec(), Some(rev(5)))]);
        assert_eq!(live.lookup(b"k"), Latest::At(rev(5)));
        assert_eq!(live.lookup(b"j"), Latest::Absent);
        assert_eq!(live.len(), 1);
        Ok(())
    }

    #[test]
    fn revisions_too_large_to_pack_are_kept_as_unknown_not_truncated() -> Result<(), MvccError> {
        let fits = Revision { main: (1 << 39) - 1, sub: (1 << 24) - 1 };
        assert_eq!(unpack(pack(fits)), Latest::At(fits));
        for too_large in [Revision { main: 1 << 39, sub: 0 }, Revision { main: 2, sub: 1 << 24 }] {
            let live = LiveKeys::load(&MemBackend::new())?;
            live.record_all(&[(b"k".to_vec(), Some(too_large))]);
            assert_eq!(live.lookup(b"k"), Latest::Unknown, "{too_large:?}");
        }
        Ok(())
    }
}
