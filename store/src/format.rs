//! The data directory's format marker and the state machine's metadata keys.
//!
//! Invariant: a backend holding data always holds `FORMAT_KEY`; a store refuses to open data written
//! by a newer format, or data without a marker (not a Keel data directory, or damaged), rather than
//! guess and risk corrupting it.

use crate::backend::{Backend, BackendError, Cf, Durability, WriteBatch};

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `Meta` key of the format marker.
pub const FORMAT_KEY: &[u8] = b"format_version";
/// `Meta` key of the latest committed MVCC revision (i64 big-endian).
pub const CURRENT_REVISION_KEY: &[u8] = b"current_revision";
/// `Meta` key of the logical compaction revision (i64 big-endian).
pub const COMPACT_REVISION_KEY: &[u8] = b"compact_revision";
/// `Meta` key of the revision up to which history has been physically removed (i64 big-endian).
pub const COMPACT_DONE_KEY: &[u8] = b"compact_done";
/// `Meta` key of the last applied Raft log id.
pub const APPLIED_KEY: &[u8] = b"applied_log_id";
/// `Meta` key of the last applied membership.
pub const MEMBERSHIP_KEY: &[u8] = b"membership";
/// `Meta` key of the members' published attributes (client URLs).
pub const MEMBER_ATTRIBUTES_KEY: &[u8] = b"member_attributes";
/// `Meta` key of the raised alarms.
pub const ALARMS_KEY: &[u8] = b"alarms";
/// `Meta` key present while a snapshot is being installed (holds the snapshot id).
pub const INSTALLING_SNAPSHOT_KEY: &[u8] = b"installing_snapshot";

/// Why a data directory cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Written by a newer Keel.
    #[error(
        "data directory was written by a newer Keel (format {found}, this build reads up to {supported}); refusing to open it"
    )]
    Newer {
        /// The format found on disk.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// Written by an older format this build cannot read.
    #[error("data directory uses format {found}, which this build (format {supported}) cannot read")]
    Older {
        /// The format found on disk.
        found: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// Data is present but the marker is missing or unreadable.
    #[error("data directory is corrupted or not a Keel data directory: {0}")]
    Corrupt(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Checks the marker of a backend, writing it (synced) if the backend is empty.
pub fn check_or_init(backend: &dyn Backend) -> Result<(), FormatError> {
    match backend.get(Cf::Meta, FORMAT_KEY)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(&bytes[..])
                .map(u32::from_be_bytes)
                .map_err(|_| FormatError::Corrupt(format!("format marker of {} bytes", bytes.len())))?;
            match found.cmp(&FORMAT_VERSION) {
                std::cmp::Ordering::Greater => Err(FormatError::Newer { found, supported: FORMAT_VERSION }),
                std::cmp::Ordering::Less => Err(FormatError::Older { found, supported: FORMAT_VERSION }),
                std::cmp::Ordering::Equal => Ok(()),
            }
        }
        None => {
            for cf in Cf::ALL {
                let mut cursor = backend.cursor(cf);
                cursor.seek_to_first();
                if cursor.entry().is_some() {
                    return Err(FormatError::Corrupt(format!(
                        "column family `{}` holds data but the format marker is missing",
                        cf.name()
                    )));
                }
                cursor.status()?;
            }
            let mut batch = WriteBatch::new();
            batch.put(Cf::Meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes());
            backend.write(batch, Durability::Synced)?;
            Ok(())
        }
    }
}

/// Reads an i64 metadata value.
pub fn read_i64(backend: &dyn Backend, key: &[u8]) -> Result<Option<i64>, FormatError> {
    match backend.get(Cf::Meta, key)? {
        None => Ok(None),
        Some(bytes) => <[u8; 8]>::try_from(&bytes[..]).map(|b| Some(i64::from_be_bytes(b))).map_err(|_| {
            FormatError::Corrupt(format!("metadata `{}` has {} bytes", String::from_utf8_lossy(key), bytes.len()))
        }),
    }
}
