//! Content hashes for detecting divergence between members (etcd's `Hash` and `HashKV`).
//!
//! Invariant: `hash_kv` depends only on the logical state (revisions and the compaction revision),
//! never on how far physical compaction has progressed, so members that applied the same log return
//! the same hash even while their background compactions are at different points.

use super::encoding::{Record, RecordKind, decode_revision_key, escape_key, index_seek_at, split_index_key};
use super::{Mvcc, MvccError, Revision};

/// Attempts before giving up when compactions keep racing a hash.
const HASH_ATTEMPTS: usize = 3;
use crate::backend::Cf;

/// Result of [`Mvcc::hash_kv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 (IEEE) of the retained revisions up to `hash_revision`.
    pub hash: u32,
    /// The compaction revision the hash accounts for.
    pub compact_revision: i64,
    /// The revision hashed up to.
    pub hash_revision: i64,
}

impl Mvcc {
    /// Hashes every revision up to `revision` (≤ 0: the latest) that a completed compaction at the
    /// current compaction revision would retain.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let current = self.current_revision();
        let revision = if revision <= 0 { current } else { revision };
        // A compaction that starts mid-scan changes what is retained; hash again (bounded).
        for _ in 0..HASH_ATTEMPTS {
            self.check_readable(revision, current)?;
            let compacted = self.compacted_revision();
            let hash = self.hash_retained(revision, compacted)?;
            if self.compacted_revision() == compacted {
                return Ok(KvHash { hash, compact_revision: compacted, hash_revision: revision });
            }
        }
        Err(MvccError::Compacted { compact_revision: self.compacted_revision() })
    }

    fn hash_retained(&self, revision: i64, compacted: i64) -> Result<u32, MvccError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut cursor = self.backend.cursor(Cf::Revs);
        cursor.seek_to_first();
        while let Some((raw_key, raw_value)) = cursor.entry() {
            let rev = decode_revision_key(raw_key)?;
            if rev.main > revision {
                break;
            }
            if rev.main > compacted || self.retained_at_compaction(raw_value, rev, compacted)? {
                hasher.update(raw_key);
                hasher.update(raw_value);
            }
            cursor.next();
        }
        cursor.status()?;
        Ok(hasher.finalize())
    }

    /// Whether revision `rev` (≤ `compacted`) survives a compaction at `compacted`: everything at the
    /// compaction revision does; below it, only a key's newest version, and only if not a tombstone.
    fn retained_at_compaction(&self, raw_record: &[u8], rev: Revision, compacted: i64) -> Result<bool, MvccError> {
        if rev.main == compacted {
            return Ok(true);
        }
        let record = Record::decode(raw_record)?;
        if record.meta.kind == RecordKind::Tombstone {
            return Ok(false);
        }
        // Retained only if it is the key's newest version at or below the compaction revision,
        // which for a tombstone means the index has no live version there either.
        let mut newest = None;
        let mut cursor = self.backend.cursor(Cf::Index);
        let escaped = escape_key(&record.key);
        cursor.seek(&index_seek_at(&escaped, compacted));
        if let Some((raw_key, _)) = cursor.entry() {
            let (found_key, found_rev) = split_index_key(raw_key)?;
            if found_key == escaped.as_slice() {
                newest = Some(found_rev);
            }
        }
        cursor.status()?;
        Ok(newest == Some(rev))
    }

    /// Hashes the whole state machine: every revision, index entry and lease record.
    pub fn hash_all(&self) -> Result<u32, MvccError> {
        let mut hasher = crc32fast::Hasher::new();
        self.backend.export(&[Cf::Revs, Cf::Index, Cf::Leases], &mut |cf, key, value| {
            hasher.update(&[cf.tag()]);
            hasher.update(key);
            hasher.update(value);
            Ok(())
        })?;
        Ok(hasher.finalize())
    }
}
