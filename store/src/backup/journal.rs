//! A point-in-time backup directory: base snapshots plus a journal of the committed log entries
//! after them, as `keel ctl backup --follow` keeps it and `snapshot restore DIR --to-revision`
//! reads it.
//!
//! Layout of the directory:
//! - `base-<index>-r<revision>.snap`: a snapshot file (as Maintenance Snapshot streams it) whose
//!   state is the one after log entry `index`, at store `revision`;
//! - `journal-<first index>.log`: segments of consecutive log entries, each file starting with
//!   [`SEGMENT_MAGIC`] and the cluster id, then records `[len u32][crc32 u32][index u64 ‖ entry]`
//!   (big-endian), `crc32` covering the index and the entry.
//!
//! Invariants:
//! - entries within and across segments are consecutive, except that a new segment may start
//!   right after a new base (a gap the follower could not fill: those entries were purged); a
//!   restore never replays across a gap;
//! - a record is either whole (its checksum matches) or the torn tail of the last segment, which
//!   [`Journal::open`] cuts off before appending; damage anywhere else is an error, never skipped;
//! - every file of one directory belongs to one cluster (the id in each segment header).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// First bytes of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"KEELJRN1";
/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Largest record accepted when reading (a log entry is bounded by the request size limit).
const MAX_RECORD: u32 = 256 << 20;
const HEADER_LEN: u64 = 16;

/// Why a backup directory cannot be read or extended.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// File system failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A journal file is damaged somewhere other than a torn tail.
    #[error("journal file {path} is corrupted at byte {offset}: {reason}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The directory holds another cluster's journal.
    #[error("{dir} holds the journal of cluster {found:x}, not of cluster {expected:x}; use a new directory")]
    OtherCluster {
        /// The directory.
        dir: PathBuf,
        /// The cluster its files belong to.
        found: u64,
        /// The cluster being followed.
        expected: u64,
    },
    /// Appended entries do not follow the journal's last one.
    #[error("entry {got} does not follow the journal's last entry {last}")]
    NotConsecutive {
        /// The last entry held.
        last: u64,
        /// The entry offered.
        got: u64,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> JournalError {
    let what = what.into();
    move |source| JournalError::Io { what, source }
}

/// A base snapshot in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The file.
    pub path: PathBuf,
    /// The last log entry its state includes.
    pub index: u64,
    /// Its store revision.
    pub revision: i64,
}

/// The file name of a base snapshot.
pub fn base_name(index: u64, revision: i64) -> String {
    format!("base-{index:020}-r{revision:020}.snap")
}

/// The base snapshots in `dir`, oldest first.
pub fn bases(dir: &Path) -> Result<Vec<Base>, JournalError> {
    let mut bases = Vec::new();
    for (name, path) in list(dir)? {
        let Some(rest) = name.strip_prefix("base-").and_then(|n| n.strip_suffix(".snap")) else { continue };
        let Some((index, revision)) = rest.split_once("-r") else { continue };
        if let (Ok(index), Ok(revision)) = (index.parse(), revision.parse()) {
            bases.push(Base { path, index, revision });
        }
    }
    bases.sort_by_key(|b| b.index);
    Ok(bases)
}

fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, JournalError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error(format!("reading {}", dir.display()))(err)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(format!("reading {}", dir.display())))?;
        names.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
    }
    names.sort();
    Ok(names)
}

/// Segment files in `dir` by first index, in order.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments: Vec<(u64, PathBuf)> = list(dir)?
        .into_iter()
        .filter_map(|(name, path)| {
            let first = name.strip_prefix("journal-")?.strip_suffix(".log")?.parse().ok()?;
            Some((first, path))
        })
        .collect();
    segments.sort_by_key(|(first, _)| *first);
    Ok(segments)
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Raft log index.
    pub index: u64,
    /// The encoded log entry.
    pub entry: Vec<u8>,
}

/// Reads a segment's records; `Ok((records, good_len))`, where a torn or damaged tail ends the
/// records at `good_len` (the caller decides whether a tail is acceptable).
fn read_segment(
    path: &Path,
    cluster_id: &mut Option<u64>,
    dir: &Path,
) -> Result<(Vec<Record>, u64, u64), JournalError> {
    let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
    let len = file.metadata().map_err(io_error(format!("reading {}", path.display())))?.len();
    let mut input = BufReader::new(file);
    let mut header = [0u8; HEADER_LEN as usize];
    if input.read_exact(&mut header).is_err() || &header[..8] != SEGMENT_MAGIC {
        return Err(JournalError::Corrupted {
            path: path.to_path_buf(),
            offset: 0,
            reason: "not a Keel journal segment (bad header)".into(),
        });
    }
    let id = u64::from_be_bytes(header[8..16].try_into().unwrap_or_default());
    match cluster_id {
        Some(expected) if *expected != id => {
            return Err(JournalError::OtherCluster { dir: dir.to_path_buf(), found: id, expected: *expected });
        }
        _ => *cluster_id = Some(id),
    }
    let mut records = Vec::new();
    let mut offset = HEADER_LEN;
    loop {
        let mut head = [0u8; 8];
        if input.read_exact(&mut head).is_err() {
            break;
        }
        let size = u32::from_be_bytes(head[..4].try_into().unwrap_or_default());
        let crc = u32::from_be_bytes(head[4..].try_into().unwrap_or_default());
        if !(8..=MAX_RECORD).contains(&size) {
            break;
        }
        let mut payload = vec![0u8; size as usize];
        if input.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        let index = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
        payload.drain(..8);
        records.push(Record { index, entry: payload });
        offset += 8 + u64::from(size);
    }
    Ok((records, offset, len))
}

/// Every record of the journal in `dir`, segment by segment, checked; each segment's records are
/// consecutive. A damaged record is an error unless it is the torn tail of the last segment.
pub fn read_all(dir: &Path) -> Result<Vec<Vec<Record>>, JournalError> {
    read_all_of(dir, &mut None)
}

/// [`read_all`], also reporting the cluster the segments belong to.
fn read_all_of(dir: &Path, cluster: &mut Option<u64>) -> Result<Vec<Vec<Record>>, JournalError> {
    let segments = segments(dir)?;
    let mut out = Vec::new();
    for (n, (first, path)) in segments.iter().enumerate() {
        let (records, good, len) = read_segment(path, cluster, dir)?;
        let last_segment = n + 1 == segments.len();
        if good != len && !last_segment {
            return Err(JournalError::Corrupted {
                path: path.clone(),
                offset: good,
                reason: "a record does not match its checksum".into(),
            });
        }
        check_consecutive(path, *first, &records)?;
        out.push(records);
    }
    Ok(out)
}

fn check_consecutive(path: &Path, first: u64, records: &[Record]) -> Result<(), JournalError> {
    for (i, record) in records.iter().enumerate() {
        if record.index != first + i as u64 {
            return Err(JournalError::Corrupted {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!("record {i} holds entry {} where entry {} belongs", record.index, first + i as u64),
            });
        }
    }
    Ok(())
}

/// What a backup directory covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// The base snapshots.
    pub bases: Vec<Base>,
    /// Continuous runs of journal entries, `(first, last)` index.
    pub runs: Vec<(u64, u64)>,
    /// The cluster the journal follows, once it has a segment.
    pub cluster_id: Option<u64>,
}

/// Reads what `dir` covers (checks every record).
pub fn coverage(dir: &Path) -> Result<Coverage, JournalError> {
    let mut cluster_id = None;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for segment in read_all_of(dir, &mut cluster_id)? {
        let (Some(first), Some(last)) = (segment.first(), segment.last()) else { continue };
        match runs.last_mut() {
            Some(run) if run.1 + 1 == first.index => run.1 = last.index,
            _ => runs.push((first.index, last.index)),
        }
    }
    Ok(Coverage { bases: bases(dir)?, runs, cluster_id })
}

/// The writable end of a journal.
pub struct Journal {
    dir: PathBuf,
    cluster_id: u64,
    last: Option<u64>,
    /// The open segment and its size; `None` until the first append after a (re)start, so a
    /// segment is never created empty.
    segment: Option<(BufWriter<File>, u64)>,
    /// The next append must start a new segment (after a new base, or a full segment).
    rotate: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).field("last", &self.last).finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the journal in `dir` for appending entries of `cluster_id`, cutting off a torn tail
    /// of the last segment. Creates `dir` if needed.
    pub fn open(dir: &Path, cluster_id: u64) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let segments = segments(dir)?;
        let mut found = Some(cluster_id);
        let mut last = None;
        let mut segment = None;
        for (n, (first, path)) in segments.iter().enumerate() {
            let (records, good, len) = read_segment(path, &mut found, dir)?;
            check_consecutive(path, *first, &records)?;
            if good != len {
                if n + 1 != segments.len() {
                    return Err(JournalError::Corrupted {
                        path: path.clone(),
                        offset: good,
                        reason: "a record does not match its checksum".into(),
                    });
                }
                tracing::warn!(file = %path.display(), kept = good, dropped = len - good, "cutting off a torn journal tail");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_error(format!("opening {}", path.display())))?;
                file.set_len(good).map_err(io_error(format!("truncating {}", path.display())))?;
                file.sync_all().map_err(io_error(format!("syncing {}", path.display())))?;
            }
            if let Some(record) = records.last() {
                last = Some(record.index);
            }
            if n + 1 == segments.len() {
                let mut file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_error(format!("opening {}", path.display())))?;
                file.seek(SeekFrom::End(0)).map_err(io_error(format!("opening {}", path.display())))?;
                segment = Some((BufWriter::new(file), good));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), cluster_id, last, segment, rotate: false })
    }

    /// The last entry held, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.last
    }

    /// Continues the journal after a new base snapshot at `index`: entries up to it are covered by
    /// the base, and the next append (`index + 1`) starts a new segment.
    pub fn restart_after_base(&mut self, index: u64) -> Result<(), JournalError> {
        self.sync()?;
        self.segment = None;
        self.rotate = true;
        self.last = Some(index);
        Ok(())
    }

    /// Appends consecutive records (buffered; [`Journal::sync`] makes them durable).
    pub fn append(&mut self, records: &[Record]) -> Result<(), JournalError> {
        for record in records {
            if let Some(last) = self.last
                && record.index != last + 1
            {
                return Err(JournalError::NotConsecutive { last, got: record.index });
            }
            let full = self.segment.as_ref().is_some_and(|(_, size)| *size >= SEGMENT_BYTES);
            if self.segment.is_none() || self.rotate || full {
                self.start_segment(record.index)?;
            }
            let mut payload = Vec::with_capacity(8 + record.entry.len());
            payload.extend_from_slice(&record.index.to_be_bytes());
            payload.extend_from_slice(&record.entry);
            let (out, size) = self.segment.as_mut().ok_or_else(|| JournalError::Io {
                what: "appending to the journal".into(),
                source: io::Error::other("no open segment"),
            })?;
            let what = || format!("appending to the journal in {}", self.dir.display());
            out.write_all(&(payload.len() as u32).to_be_bytes()).map_err(io_error(what()))?;
            out.write_all(&crc32fast::hash(&payload).to_be_bytes()).map_err(io_error(what()))?;
            out.write_all(&payload).map_err(io_error(what()))?;
            *size += 8 + payload.len() as u64;
            self.last = Some(record.index);
        }
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if let Some((out, _)) = self.segment.as_mut() {
            out.flush().map_err(io_error("flushing the journal"))?;
            out.get_ref().sync_data().map_err(io_error("syncing the journal"))?;
        }
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> Result<(), JournalError> {
        self.sync()?;
        let path = self.dir.join(format!("journal-{first:020}.log"));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(format!("creating {}", path.display())))?;
        file.write_all(SEGMENT_MAGIC).map_err(io_error(format!("writing {}", path.display())))?;
        file.write_all(&self.cluster_id.to_be_bytes()).map_err(io_error(format!("writing {}", path.display())))?;
        file.sync_all().map_err(io_error(format!("syncing {}", path.display())))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(format!("syncing {}", self.dir.display())))?;
        self.segment = Some((BufWriter::with_capacity(1 << 20, file), HEADER_LEN));
        self.rotate = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(index: u64) -> Record {
        Record { index, entry: format!("entry {index}").into_bytes() }
    }

    fn indexes(dir: &Path) -> Vec<Vec<u64>> {
        read_all(dir).unwrap().iter().map(|segment| segment.iter().map(|r| r.index).collect()).collect()
    }

    #[test]
    fn a_reopened_journal_resumes_after_its_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        journal.restart_after_base(10).unwrap();
        journal.append(&[record(11), record(12)]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        assert_eq!(journal.last_index(), Some(12));
        journal.append(&[record(13)]).unwrap();
        journal.sync().unwrap();
        assert_eq!(indexes(dir.path()), vec![vec![11, 12, 13]]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        journal.restart_after_base(0).unwrap();
        journal.append(&[record(1), record(2), record(3)]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 3).unwrap();
        assert_eq!(indexes(dir.path()), vec![vec![1, 2]], "a reader stops before the torn record");
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        assert_eq!(journal.last_index(), Some(2));
        journal.append(&[record(3)]).unwrap();
        journal.sync().unwrap();
        assert_eq!(indexes(dir.path()), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        journal.restart_after_base(0).unwrap();
        journal.append(&[record(1), record(2)]).unwrap();
        journal.restart_after_base(50).unwrap();
        journal.append(&[record(51)]).unwrap();
        journal.sync().unwrap();
        let (_, first) = segments(dir.path()).unwrap().remove(0);
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let err = read_all(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupted { .. }), "{err}");
        assert!(Journal::open(dir.path(), 7).is_err());
    }

    #[test]
    fn entries_must_be_consecutive_and_of_one_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        journal.restart_after_base(4).unwrap();
        let err = journal.append(&[record(6)]).unwrap_err();
        assert!(matches!(err, JournalError::NotConsecutive { last: 4, got: 6 }), "{err}");
        journal.append(&[record(5)]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let err = Journal::open(dir.path(), 8).unwrap_err();
        assert!(matches!(err, JournalError::OtherCluster { found: 7, expected: 8, .. }), "{err}");
    }

    #[test]
    fn coverage_lists_bases_and_continuous_runs() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(base_name(4, 3)), b"").unwrap();
        let mut journal = Journal::open(dir.path(), 7).unwrap();
        journal.restart_after_base(4).unwrap();
        journal.append(&[record(5), record(6)]).unwrap();
        journal.restart_after_base(20).unwrap();
        journal.append(&[record(21)]).unwrap();
        journal.sync().unwrap();
        let coverage = coverage(dir.path()).unwrap();
        assert_eq!(coverage.runs, vec![(5, 6), (21, 21)]);
        assert_eq!(coverage.cluster_id, Some(7));
        assert_eq!(coverage.bases.len(), 1);
        assert_eq!((coverage.bases[0].index, coverage.bases[0].revision), (4, 3));
    }
}
