//! Byte encodings of MVCC data in the backend's column families.
//!
//! - `Revs`: `revision` (main ‖ sub, 8 bytes big-endian each) → [`Record`] with key and value.
//! - `Index`: `escape(key) ‖ !main ‖ !sub` → [`IndexEntry`] (no value). Revisions are inverted so
//!   that, for one key, the newest revision sorts first: the latest version at or below revision `R`
//!   is the first entry at or after `escape(key) ‖ !R ‖ 0…`, one seek.
//! - `Leases`: `0x02 ‖ lease id ‖ key` → empty, one entry per key attached to a lease.
//!
//! Invariants: `escape` is order-preserving and prefix-free (for keys `a < b`,
//! `escape(a) ‖ x < escape(b) ‖ y` for any suffixes), so index order is (key ascending, revision
//! descending). Every decoder rejects malformed input with [`MvccError::Corrupt`] instead of panicking.

use super::{MvccError, Revision};

/// Kind of a stored revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The key was written.
    Put = 1,
    /// The key was deleted (a tombstone).
    Tombstone = 2,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Result<Self, MvccError> {
        match byte {
            1 => Ok(RecordKind::Put),
            2 => Ok(RecordKind::Tombstone),
            other => Err(MvccError::Corrupt(format!("unknown record kind {other}"))),
        }
    }
}

/// Metadata of one key version, as stored in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Put or tombstone.
    pub kind: RecordKind,
    /// Revision of the key's creation (0 for a tombstone).
    pub create_revision: i64,
    /// Modification count since creation (0 for a tombstone).
    pub version: i64,
    /// Attached lease (0 for none).
    pub lease: i64,
}

const INDEX_ENTRY_LEN: usize = 25;

impl IndexEntry {
    /// Encodes to the index value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_ENTRY_LEN);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.lease.to_be_bytes());
        out
    }

    /// Decodes an index value.
    pub fn decode(bytes: &[u8]) -> Result<Self, MvccError> {
        if bytes.len() != INDEX_ENTRY_LEN {
            return Err(MvccError::Corrupt(format!("index entry of {} bytes", bytes.len())));
        }
        Ok(Self {
            kind: RecordKind::from_byte(bytes[0])?,
            create_revision: read_i64(&bytes[1..9]),
            version: read_i64(&bytes[9..17]),
            lease: read_i64(&bytes[17..25]),
        })
    }
}

/// One stored revision: the index metadata plus key and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Metadata, identical to the index entry of this revision.
    pub meta: IndexEntry,
    /// The user key.
    pub key: Vec<u8>,
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
}

impl Record {
    /// Encodes to the `Revs` value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INDEX_ENTRY_LEN + 4 + self.key.len() + self.value.len());
        out.extend_from_slice(&self.meta.encode());
        out.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.value);
        out
    }

    /// Decodes a `Revs` value.
    pub fn decode(bytes: &[u8]) -> Result<Self, MvccError> {
        let (meta, key, value) = Self::decode_parts(bytes)?;
        Ok(Self { meta, key: key.to_vec(), value: value.to_vec() })
    }

    /// Decodes a `Revs` value into its metadata, key and value without copying the latter two.
    pub fn decode_parts(bytes: &[u8]) -> Result<(IndexEntry, &[u8], &[u8]), MvccError> {
        if bytes.len() < INDEX_ENTRY_LEN + 4 {
            return Err(MvccError::Corrupt(format!("revision record of {} bytes", bytes.len())));
        }
        let meta = IndexEntry::decode(&bytes[..INDEX_ENTRY_LEN])?;
        let key_len = u32::from_be_bytes([
            bytes[INDEX_ENTRY_LEN],
            bytes[INDEX_ENTRY_LEN + 1],
            bytes[INDEX_ENTRY_LEN + 2],
            bytes[INDEX_ENTRY_LEN + 3],
        ]) as usize;
        let key_start = INDEX_ENTRY_LEN + 4;
        let Some(key_end) = key_start.checked_add(key_len).filter(|&end| end <= bytes.len()) else {
            return Err(MvccError::Corrupt("revision record key overruns the record".into()));
        };
        Ok((meta, &bytes[key_start..key_end], &bytes[key_end..]))
    }

    /// Decodes only the value of a `Revs` value.
    pub fn decode_value(bytes: &[u8]) -> Result<Vec<u8>, MvccError> {
        Ok(Self::decode_parts(bytes)?.2.to_vec())
    }
}

fn read_i64(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    i64::from_be_bytes(buf)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

/// Encodes a revision as a `Revs` key (ascending order).
pub fn revision_key(rev: Revision) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&(rev.main as u64).to_be_bytes());
    out[8..].copy_from_slice(&(rev.sub as u64).to_be_bytes());
    out
}

/// Decodes a `Revs` key.
pub fn decode_revision_key(bytes: &[u8]) -> Result<Revision, MvccError> {
    if bytes.len() != 16 {
        return Err(MvccError::Corrupt(format!("revision key of {} bytes", bytes.len())));
    }
    Ok(Revision { main: read_u64(&bytes[..8]) as i64, sub: read_u64(&bytes[8..]) as i64 })
}

/// Escapes a user key into its order-preserving, prefix-free index form: every `0x00` becomes
/// `0x00 0xff` and the key ends with `0x00 0x01`.
pub fn escape_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(key, &mut out);
    out
}

fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    for &byte in key {
        out.push(byte);
        if byte == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reverses [`escape_key`].
pub fn unescape_key(escaped: &[u8]) -> Result<Vec<u8>, MvccError> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut i = 0;
    while i < escaped.len() {
        let byte = escaped[i];
        if byte != 0 {
            out.push(byte);
            i += 1;
            continue;
        }
        match escaped.get(i + 1) {
            Some(0xff) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) if i + 2 == escaped.len() => return Ok(out),
            _ => break,
        }
    }
    Err(MvccError::Corrupt("malformed escaped key in the index".into()))
}

/// Length of the revision suffix of an index key.
pub const INDEX_SUFFIX_LEN: usize = 16;

/// The index key of `key` at `rev`.
pub fn index_key(key: &[u8], rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + INDEX_SUFFIX_LEN);
    escape_into(key, &mut out);
    push_inverted(&mut out, rev);
    out
}

fn push_inverted(out: &mut Vec<u8>, rev: Revision) {
    out.extend_from_slice(&(!(rev.main as u64)).to_be_bytes());
    out.extend_from_slice(&(!(rev.sub as u64)).to_be_bytes());
}

/// The seek target that lands on the newest entry of `escaped` at or below main revision `main`.
pub fn index_seek_at(escaped: &[u8], main: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len() + INDEX_SUFFIX_LEN);
    out.extend_from_slice(escaped);
    out.extend_from_slice(&(!(main as u64)).to_be_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out
}

/// A key strictly after every index entry of `escaped` and before the next key's entries.
pub fn index_key_upper(escaped: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len() + INDEX_SUFFIX_LEN + 1);
    out.extend_from_slice(escaped);
    out.extend_from_slice(&[0xff; INDEX_SUFFIX_LEN + 1]);
    out
}

/// Splits an index key into the escaped user key and the revision.
pub fn split_index_key(bytes: &[u8]) -> Result<(&[u8], Revision), MvccError> {
    if bytes.len() < INDEX_SUFFIX_LEN + 2 {
        return Err(MvccError::Corrupt(format!("index key of {} bytes", bytes.len())));
    }
    let (escaped, suffix) = bytes.split_at(bytes.len() - INDEX_SUFFIX_LEN);
    Ok((escaped, Revision { main: (!read_u64(&suffix[..8])) as i64, sub: (!read_u64(&suffix[8..])) as i64 }))
}

const ATTACHMENT_TAG: u8 = 0x02;

/// Key of the record attaching `key` to `lease` in the `Leases` column family.
pub fn lease_attachment_key(lease: i64, key: &[u8]) -> Vec<u8> {
    let mut out = lease_attachment_prefix(lease);
    out.extend_from_slice(key);
    out
}

/// Prefix of every attachment of `lease`.
pub fn lease_attachment_prefix(lease: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(ATTACHMENT_TAG);
    out.extend_from_slice(&(lease as u64).to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escaped_keys_sort_like_raw_keys(a in prop::collection::vec(any::<u8>(), 0..8),
                                           b in prop::collection::vec(any::<u8>(), 0..8),
                                           ra in 1i64..1000, rb in 1i64..1000) {
            let ka = index_key(&a, Revision { main: ra, sub: 0 });
            let kb = index_key(&b, Revision { main: rb, sub: 0 });
            if a != b {
                prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
            } else {
                // Same key: newer revisions first.
                prop_assert_eq!(rb.cmp(&ra), ka.cmp(&kb));
            }
            let (escaped, _) = split_index_key(&ka).unwrap();
            prop_assert_eq!(unescape_key(escaped).unwrap(), a);
        }
    }

    #[test]
    fn records_round_trip() {
        let record = Record {
            meta: IndexEntry { kind: RecordKind::Put, create_revision: 3, version: 2, lease: 7 },
            key: b"k\x00ey".to_vec(),
            value: b"value".to_vec(),
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        let rev = Revision { main: 9, sub: 4 };
        assert_eq!(decode_revision_key(&revision_key(rev)).unwrap(), rev);
        let key = index_key(b"a\x00", rev);
        let (escaped, decoded) = split_index_key(&key).unwrap();
        assert_eq!(decoded, rev);
        assert_eq!(unescape_key(escaped).unwrap(), b"a\x00".to_vec());
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        assert!(Record::decode(&[1, 2, 3]).is_err());
        assert!(IndexEntry::decode(&[9; 25]).is_err());
        assert!(unescape_key(b"ab\x00\x05").is_err());
        let mut overrun = Record {
            meta: IndexEntry { kind: RecordKind::Put, create_revision: 1, version: 1, lease: 0 },
            key: b"k".to_vec(),
            value: vec![],
        }
        .encode();
        overrun[28] = 200;
        assert!(Record::decode(&overrun).is_err());
    }
}
