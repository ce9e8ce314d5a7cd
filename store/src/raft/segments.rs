//! The Raft log's entries in files of their own: numbered segment files (`<data-dir>/wal/<seq>.log`)
//! appended in order, as etcd's WAL, instead of RocksDB's column family and WAL.
//!
//! Why files of its own: every acknowledged write waits for one `fdatasync` of the log. RocksDB's WAL
//! grows its file with each append (it preallocates with `FALLOC_FL_KEEP_SIZE`), so each sync also
//! writes the inode through the file system's journal: three block requests. Here the space ahead of
//! the write position is zero-filled and synced in advance ([`SegmentLog::zero_ahead`]), so a sync
//! after an append writes the data and flushes the disk cache, nothing else.
//!
//! Record: `len u32 LE | crc32 u32 LE | body`, with `body = kind u8 | index u64 LE | payload` and
//! the checksum over the body. Kind 1 is an entry (the payload is the encoded `Entry`), kind 2 a
//! truncation (every entry at `index` and after is gone). A zero header ends a segment's records:
//! the space after the last record is zeros.
//!
//! Invariants:
//! - Records are never overwritten: a truncation is a record of its own, and an entry at an index
//!   the log already holds replaces that entry and all after it (as etcd's WAL replay does), so a
//!   crash in the middle of either leaves the log before or after it, never a mix.
//! - Only the newest segment can end in a torn record: a segment is written and synced in full
//!   before the next one is created (and the directory synced), so a crash tears at most the
//!   newest segment's unsynced tail. Opening cuts that tail off (truncating the file), so a later
//!   append never lands in front of stale bytes that could read as records.
//! - Records reach the file only through the state lock (sync, rollover, truncation); until then
//!   they wait in `pending`, and reads copy them from there. Zero-fill never writes below the
//!   written end, and writes under the same lock, so it never clobbers a record.
//! - The in-memory locations (`locs`) hold exactly the retained log: entries after the purge point,
//!   consecutive by index, each the newest record for its index.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::planted::{self, PlantedBug};

/// Header bytes before a record's body: its length and checksum.
const HEADER: usize = 8;
/// Body bytes before the payload: kind and index.
const BODY_PREFIX: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;

/// Largest a segment grows before the next record starts a new one. A purge deletes only whole
/// segments, so this bounds the purged log still on disk; a quarter of etcd's 64 MB, since a
/// rollover (a sync, a file creation, a directory sync) costs about a millisecond.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;
/// Zero-fill keeps at least this much zeroed space ahead of the write position...
const ZERO_LOW_WATER: u64 = 2 << 20;
/// ...and, when it falls below, zeroes this much ahead of the end of the records.
const ZERO_STEP: u64 = 4 << 20;
/// Zeros written per lock hold, so appends never wait long behind zero-fill.
const ZERO_CHUNK: usize = 256 << 10;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
/// With the planted ack-before-fsync bug, pending records are written only once this many bytes
/// wait (and never synced), so a killed member loses entries it acknowledged.
const PLANTED_UNWRITTEN_BYTES: usize = 1 << 20;

/// The segment files of one log. Every method takes `&self`; the state lock serializes them.
#[derive(Debug)]
pub(crate) struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Everything that changes. Held for in-memory work and for writes of pending records or
    /// zeros into the page cache (bounded: a flush's worth of records, or one zero chunk); never
    /// across an `fsync` except at a segment rollover. No other lock is taken under it.
    state: Mutex<State>,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Shared with readers, which read outside the lock (a purged file stays readable until the
    /// last reader drops its handle).
    file: Arc<File>,
    /// The largest entry index recorded in the segment: a segment is deleted by a purge only when
    /// it holds nothing after the purge point.
    last_entry: Option<u64>,
}

/// Where a retained entry's record starts, and the length of its body.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seq: u64,
    offset: u64,
    body_len: u32,
}

#[derive(Debug)]
struct State {
    /// Oldest first; never empty. The last one is the active segment, the only one written.
    segments: VecDeque<Segment>,
    /// Bytes of the active segment's records written to its file.
    written: u64,
    /// Records appended to the active segment after `written`, not yet written to the file.
    pending: Vec<u8>,
    /// The active segment's zero-filled space ends here (it may lie below `written`).
    zeroed: u64,
    /// Index of `locs[0]` (when `locs` is empty: the index the next entry is expected at, or 0).
    first: u64,
    /// Locations of the retained entries, consecutive by index from `first`.
    locs: VecDeque<Loc>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn corrupt(path: &Path, offset: u64, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("Raft log segment {} at byte {offset}: {what}", path.display()))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn checksum(body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body);
    hasher.finalize()
}

/// Appends one record to `out`.
fn encode_record(out: &mut Vec<u8>, kind: u8, index: u64, payload: &[u8]) {
    let body_len = BODY_PREFIX + payload.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start + HEADER..]);
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn record_len(payload: usize) -> u64 {
    (HEADER + BODY_PREFIX + payload) as u64
}

/// One record read back by the opening scan.
enum Scanned {
    Record {
        kind: u8,
        index: u64,
        body_len: u32,
    },
    /// A zero header or the end of the file: no records follow.
    End,
    /// Something that is not a whole, intact record.
    Bad(&'static str),
}

/// Reads the record at `offset` of a file `file_len` long.
fn scan_record(reader: &mut impl Read, offset: u64, file_len: u64, body: &mut Vec<u8>) -> io::Result<Scanned> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got < HEADER {
        return Ok(if header.iter().all(|&b| b == 0) { Scanned::End } else { Scanned::Bad("a cut-off record header") });
    }
    if header == [0; HEADER] {
        return Ok(Scanned::End);
    }
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if (body_len as usize) < BODY_PREFIX {
        return Ok(Scanned::Bad("a record shorter than its header says a record must be"));
    }
    if offset + HEADER as u64 + u64::from(body_len) > file_len {
        return Ok(Scanned::Bad("a record that runs past the end of the file"));
    }
    body.resize(body_len as usize, 0);
    reader.read_exact(body)?;
    if checksum(body) != crc {
        return Ok(Scanned::Bad("a record whose checksum does not match"));
    }
    let index = u64::from_le_bytes(body[1..BODY_PREFIX].try_into().unwrap_or_default());
    Ok(Scanned::Record { kind: body[0], index, body_len })
}

impl State {
    fn active(&self) -> &Segment {
        // `segments` is never empty: opening creates a segment when there is none, and a purge
        // never removes the last one.
        #[allow(clippy::expect_used)]
        self.segments.back().expect("the log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        #[allow(clippy::expect_used)]
        self.segments.back_mut().expect("the log always has an active segment")
    }

    /// Where the next record goes in the active segment.
    fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// Forgets the entries at `index` and after.
    fn truncate_locs(&mut self, index: u64) {
        if index <= self.first {
            self.locs.clear();
            self.first = index;
        } else {
            let keep = usize::try_from(index - self.first).unwrap_or(usize::MAX);
            self.locs.truncate(keep);
        }
    }

    /// Forgets the entries up to and including `index`.
    fn purge_locs(&mut self, index: u64) {
        if index < self.first {
            return;
        }
        let drop = usize::try_from(index - self.first + 1).unwrap_or(usize::MAX).min(self.locs.len());
        self.locs.drain(..drop);
        self.first = index + 1;
    }

    /// Records that entry `index` now lives at `loc`, replacing any entry at `index` or after.
    /// An entry past the end of a non-empty log would leave a hole: refused.
    fn check_follows(&self, index: u64) -> io::Result<()> {
        match self.last_index() {
            Some(last) if index > last + 1 => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("log entry {index} does not follow the last entry {last}"),
            )),
            _ => Ok(()),
        }
    }

    fn push_loc(&mut self, index: u64, loc: Loc) {
        if self.last_index().is_some_and(|last| index <= last) {
            self.truncate_locs(index);
        }
        if self.locs.is_empty() {
            self.first = index;
        }
        self.locs.push_back(loc);
    }

    /// Writes the pending records to the active segment's file (not synced).
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.active().file.write_all_at(&self.pending, self.written)?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn segment(&self, seq: u64) -> Option<&Segment> {
        let front = self.segments.front()?.seq;
        self.segments.get(usize::try_from(seq.checked_sub(front)?).ok()?)
    }
}

/// Where [`SegmentLog::read`] finds one entry's record.
enum Source {
    File { file: Arc<File>, path: PathBuf, loc: Loc },
    Pending(Vec<u8>),
}

impl SegmentLog {
    /// Opens the log in `dir` (creating it and a first segment when missing), reading every
    /// segment to rebuild the entries' locations. `last_purged` is the purge point recorded with
    /// the vote: entries up to it are skipped, and the retained log must start right after it.
    pub(crate) fn open(dir: &Path, segment_bytes: u64, last_purged: Option<u64>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for dirent in std::fs::read_dir(dir)? {
            let dirent = dirent?;
            if let Some(seq) = dirent.file_name().to_str().and_then(parse_segment_name) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut state = State {
            segments: VecDeque::new(),
            written: 0,
            pending: Vec::new(),
            zeroed: 0,
            first: last_purged.map_or(0, |purged| purged + 1),
            locs: VecDeque::new(),
        };
        if seqs.is_empty() {
            let path = dir.join(segment_name(1));
            let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
            sync_dir(dir)?;
            state.segments.push_back(Segment { seq: 1, path, file: Arc::new(file), last_entry: None });
        }
        let mut body = Vec::new();
        for (position, &seq) in seqs.iter().enumerate() {
            let newest = position + 1 == seqs.len();
            if let Some(&previous) = seqs.get(position.wrapping_sub(1))
                && previous + 1 != seq
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("Raft log segment {} is missing from {}", segment_name(previous + 1), dir.display()),
                ));
            }
            let path = dir.join(segment_name(seq));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let file_len = file.metadata()?.len();
            let mut reader = BufReader::with_capacity(1 << 20, &file);
            let mut offset = 0u64;
            let mut last_entry = None;
            loop {
                match scan_record(&mut reader, offset, file_len, &mut body)? {
                    Scanned::End => break,
                    Scanned::Bad(what) if newest => {
                        tracing::warn!(segment = %path.display(), offset, what, "cutting off the log's torn tail");
                        break;
                    }
                    Scanned::Bad(what) => return Err(corrupt(&path, offset, what)),
                    Scanned::Record { kind: KIND_ENTRY, index, body_len } => {
                        last_entry = last_entry.max(Some(index));
                        if last_purged.is_none_or(|purged| index > purged) {
                            state.check_follows(index).map_err(|err| corrupt(&path, offset, &err.to_string()))?;
                            if state.locs.is_empty()
                                && let Some(purged) = last_purged
                                && index != purged + 1
                            {
                                let what = format!("the log resumes at entry {index} after a purge through {purged}");
                                return Err(corrupt(&path, offset, &what));
                            }
                            state.push_loc(index, Loc { seq, offset, body_len });
                        }
                        offset += HEADER as u64 + u64::from(body_len);
                    }
                    Scanned::Record { kind: KIND_TRUNCATE, index, body_len } => {
                        let floor = last_purged.map_or(0, |purged| purged + 1);
                        state.truncate_locs(index.max(floor));
                        offset += HEADER as u64 + u64::from(body_len);
                    }
                    Scanned::Record { kind, .. } => {
                        return Err(corrupt(&path, offset, &format!("unknown record kind {kind}")));
                    }
                }
            }
            drop(reader);
            if newest {
                // Whatever follows the last intact record (zeros, or a torn record) goes, so no
                // later append can be followed by stale bytes; zero-fill starts again from here.
                if file_len != offset {
                    file.set_len(offset)?;
                    file.sync_all()?;
                }
                state.written = offset;
                state.zeroed = offset;
            }
            state.segments.push_back(Segment { seq, path, file: Arc::new(file), last_entry });
        }
        Ok(Self { dir: dir.to_path_buf(), segment_bytes, state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The index of the last retained entry.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.lock().last_index()
    }

    /// True when no record was ever written: one segment, and nothing in it.
    pub(crate) fn has_no_records(&self) -> bool {
        let state = self.lock();
        state.segments.len() == 1 && state.end() == 0
    }

    /// Appends entries (index and encoded entry), readable at once and durable after the next
    /// [`SegmentLog::sync`]. An entry at an index the log holds replaces it and what follows.
    pub(crate) fn append(&self, entries: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut state = self.lock();
        for (index, payload) in entries {
            state.check_follows(*index)?;
            if u32::try_from(BODY_PREFIX + payload.len()).is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("log entry {index} is {} bytes, more than a log record holds (4 GiB)", payload.len()),
                ));
            }
            self.make_room(&mut state, record_len(payload.len()))?;
            let offset = state.end();
            encode_record(&mut state.pending, KIND_ENTRY, *index, payload);
            let seq = state.active().seq;
            let body_len = (BODY_PREFIX + payload.len()) as u32;
            state.push_loc(*index, Loc { seq, offset, body_len });
            let active = state.active_mut();
            active.last_entry = active.last_entry.max(Some(*index));
        }
        Ok(())
    }

    /// Starts a new segment when a record of `len` bytes would take the active one past the
    /// segment size (a segment holds at least one record, however large).
    fn make_room(&self, state: &mut State, len: u64) -> io::Result<()> {
        if state.end() == 0 || state.end() + len <= self.segment_bytes {
            return Ok(());
        }
        state.write_pending()?;
        state.active().file.sync_data()?;
        let seq = state.active().seq + 1;
        let path = self.dir.join(segment_name(seq));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        sync_dir(&self.dir)?;
        state.segments.push_back(Segment { seq, path, file: Arc::new(file), last_entry: None });
        state.written = 0;
        state.zeroed = 0;
        Ok(())
    }

    /// Writes the pending records and syncs the active segment: every entry appended before the
    /// call is durable when it returns.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let file = {
            let mut state = self.lock();
            if planted::active(PlantedBug::AckBeforeFsync) {
                if state.pending.len() >= PLANTED_UNWRITTEN_BYTES {
                    state.write_pending()?;
                }
                return Ok(());
            }
            state.write_pending()?;
            state.active().file.clone()
        };
        file.sync_data()
    }

    /// Forgets every entry at `index` and after, durably before returning.
    pub(crate) fn truncate_from(&self, index: u64) -> io::Result<()> {
        let file = {
            let mut state = self.lock();
            state.truncate_locs(index);
            self.make_room(&mut state, record_len(0))?;
            encode_record(&mut state.pending, KIND_TRUNCATE, index, &[]);
            state.write_pending()?;
            state.active().file.clone()
        };
        file.sync_data()
    }

    /// Forgets every entry up to and including `index` and deletes the segments that hold nothing
    /// after it (never the active one). The caller records the purge point durably first: opening
    /// skips the entries up to it.
    pub(crate) fn purge_through(&self, index: u64) -> io::Result<()> {
        let doomed: Vec<PathBuf> = {
            let mut state = self.lock();
            state.purge_locs(index);
            let mut doomed = Vec::new();
            while state.segments.len() > 1
                && state.segments.front().is_some_and(|front| front.last_entry.is_none_or(|last| last <= index))
            {
                if let Some(segment) = state.segments.pop_front() {
                    doomed.push(segment.path);
                }
            }
            doomed
        };
        for path in &doomed {
            std::fs::remove_file(path)?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The encoded entries from `start` (inclusive) to `end` (exclusive) that the log retains,
    /// consecutive from the first retained one at or after `start`, stopping once `max_bytes` of
    /// payload are gathered (always at least one entry when any is retained in the range).
    pub(crate) fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let plan: Vec<(u64, Source)> = {
            let state = self.lock();
            let from = start.max(state.first);
            let to = end.min(state.first + state.locs.len() as u64);
            let mut plan = Vec::new();
            let mut bytes = 0usize;
            let active_seq = state.active().seq;
            for index in from..to {
                if bytes >= max_bytes {
                    break;
                }
                let position = usize::try_from(index - state.first).unwrap_or(usize::MAX);
                let Some(&loc) = state.locs.get(position) else { break };
                bytes += loc.body_len as usize;
                let source = if loc.seq == active_seq && loc.offset >= state.written {
                    let at = usize::try_from(loc.offset - state.written).unwrap_or(usize::MAX);
                    let len = HEADER + loc.body_len as usize;
                    let record = state.pending.get(at..at + len).ok_or_else(|| {
                        io::Error::other(format!("log entry {index} is missing from the unwritten records"))
                    })?;
                    Source::Pending(record.to_vec())
                } else {
                    let segment = state.segment(loc.seq).ok_or_else(|| {
                        io::Error::other(format!("log entry {index} is in segment {} which is gone", loc.seq))
                    })?;
                    Source::File { file: segment.file.clone(), path: segment.path.clone(), loc }
                };
                plan.push((index, source));
            }
            plan
        };
        let mut entries = Vec::with_capacity(plan.len());
        for (index, source) in plan {
            let (record, path, offset) = match source {
                Source::Pending(record) => (record, None, 0),
                Source::File { file, path, loc } => {
                    let mut record = vec![0; HEADER + loc.body_len as usize];
                    file.read_exact_at(&mut record, loc.offset)?;
                    (record, Some(path), loc.offset)
                }
            };
            let check = |what: &str| match &path {
                Some(path) => corrupt(path, offset, what),
                None => io::Error::other(format!("unwritten log record for entry {index}: {what}")),
            };
            let body = &record[HEADER..];
            let crc = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
            if checksum(body) != crc {
                return Err(check("a record whose checksum does not match"));
            }
            let recorded = u64::from_le_bytes(body[1..BODY_PREFIX].try_into().unwrap_or_default());
            if body[0] != KIND_ENTRY || recorded != index {
                return Err(check(&format!("expected entry {index}, found a record for {recorded}")));
            }
            entries.push((index, body[BODY_PREFIX..].to_vec()));
        }
        Ok(entries)
    }

    /// Keeps zero-filled, synced space ahead of the active segment's records, so the syncs after
    /// appends change no file size or allocation. Called by the flusher between flushes; writes
    /// at most [`ZERO_STEP`] in chunks, taking the lock per chunk.
    pub(crate) fn zero_ahead(&self) -> io::Result<()> {
        let (seq, target, file) = {
            let state = self.lock();
            let end = state.end();
            if state.zeroed >= end + ZERO_LOW_WATER || state.zeroed >= self.segment_bytes {
                return Ok(());
            }
            let target = (end + ZERO_STEP).min(self.segment_bytes.max(end));
            (state.active().seq, target, state.active().file.clone())
        };
        let mut wrote = false;
        loop {
            let mut state = self.lock();
            if state.active().seq != seq {
                break;
            }
            let from = state.zeroed.max(state.written);
            if from >= target {
                break;
            }
            let len = usize::try_from(target - from).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK);
            file.write_all_at(&ZEROS[..len], from)?;
            state.zeroed = from + len as u64;
            wrote = true;
        }
        if wrote {
            file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Lcg;

    fn payload(index: u64, generation: u64) -> Vec<u8> {
        let mut bytes = format!("entry {index} of generation {generation}").into_bytes();
        bytes.resize(20 + (index as usize * 7) % 300, b'.');
        bytes
    }

    fn everything(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
        log.read(0, u64::MAX, usize::MAX).unwrap()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|d| d.unwrap().path()).collect();
        files.sort();
        files
    }

    #[test]
    fn the_log_reopens_as_it_was_synced_through_appends_truncations_purges_and_rollovers() {
        for seed in 1..=12u64 {
            let dir = tempfile::tempdir().unwrap();
            // Small segments, so rollovers and purges that delete files happen often.
            let segment_bytes = 4096;
            let mut log = SegmentLog::open(dir.path(), segment_bytes, None).unwrap();
            let mut rng = Lcg(seed);
            let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
            let (mut purged, mut generation) = (None::<u64>, 0u64);
            for step in 0..300 {
                let next = model.last().map_or(purged.map_or(1, |p| p + 1), |(i, _)| i + 1);
                match rng.below(12) {
                    0 if !model.is_empty() => {
                        let through = model[rng.below(model.len() as u64) as usize].0;
                        log.purge_through(through).unwrap();
                        model.retain(|(i, _)| *i > through);
                        purged = Some(through);
                    }
                    1 if !model.is_empty() => {
                        let from = model[rng.below(model.len() as u64) as usize].0;
                        log.truncate_from(from).unwrap();
                        model.retain(|(i, _)| *i < from);
                        generation += 1;
                    }
                    2 => {
                        log.sync().unwrap();
                        drop(log);
                        log = SegmentLog::open(dir.path(), segment_bytes, purged).unwrap();
                    }
                    3 => log.zero_ahead().unwrap(),
                    _ => {
                        let count = 1 + rng.below(6);
                        let entries: Vec<_> = (next..next + count).map(|i| (i, payload(i, generation))).collect();
                        log.append(&entries).unwrap();
                        model.extend(entries);
                        if rng.below(2) == 0 {
                            log.sync().unwrap();
                        }
                    }
                }
                assert_eq!(everything(&log), model, "seed {seed}, step {step}");
                assert_eq!(log.last_index(), model.last().map(|(i, _)| *i), "seed {seed}, step {step}");
            }
            log.sync().unwrap();
            drop(log);
            let log = SegmentLog::open(dir.path(), segment_bytes, purged).unwrap();
            assert_eq!(everything(&log), model, "seed {seed}, after the last reopen");
            // Purges deleted whole segments: the oldest file left is the active one or holds an
            // entry after the purge point.
            let state = log.lock();
            if state.segments.len() > 1
                && let (Some(front), Some(purged)) = (state.segments.front(), purged)
            {
                assert!(front.last_entry.is_some_and(|last| last > purged), "seed {seed}: {front:?}");
            }
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_stale_records_after_it_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, None).unwrap();
        log.append(&[(1, payload(1, 0)), (2, payload(2, 0)), (3, payload(3, 0))]).unwrap();
        log.sync().unwrap();
        drop(log);
        // Tear entry 3: its last bytes never reached the disk.
        let path = segment_files(dir.path()).remove(0);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 5).unwrap();
        drop(file);

        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, None).unwrap();
        assert_eq!(everything(&log), vec![(1, payload(1, 0)), (2, payload(2, 0))]);
        // A shorter entry 3 written where the torn one was is not followed by leftovers of it.
        log.append(&[(3, b"x".to_vec())]).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, None).unwrap();
        assert_eq!(everything(&log), vec![(1, payload(1, 0)), (2, payload(2, 0)), (3, b"x".to_vec())]);
    }

    #[test]
    fn a_damaged_record_in_an_older_segment_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), 512, None).unwrap();
        for index in 1..=20 {
            log.append(&[(index, payload(index, 0))]).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let first = segment_files(dir.path()).remove(0);
        let file = OpenOptions::new().write(true).open(&first).unwrap();
        file.write_all_at(b"\xff", 20).unwrap();
        drop(file);
        let err = SegmentLog::open(dir.path(), 512, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&first.display().to_string()), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn zero_fill_runs_ahead_of_the_records_and_never_overwrites_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, None).unwrap();
        log.append(&[(1, payload(1, 0))]).unwrap();
        // Zero-fill before the pending record is written, then write it: the record survives.
        log.zero_ahead().unwrap();
        log.append(&[(2, payload(2, 0))]).unwrap();
        log.sync().unwrap();
        log.zero_ahead().unwrap();
        let path = segment_files(dir.path()).remove(0);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len >= ZERO_STEP, "zero-filled to {len} bytes");
        assert_eq!(everything(&log), vec![(1, payload(1, 0)), (2, payload(2, 0))]);
        drop(log);
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, None).unwrap();
        assert_eq!(everything(&log), vec![(1, payload(1, 0)), (2, payload(2, 0))]);
    }

    #[test]
    fn entries_after_a_purge_must_resume_right_after_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, None).unwrap();
        log.append(&[(5, payload(5, 0)), (6, payload(6, 0))]).unwrap();
        log.sync().unwrap();
        drop(log);
        // The purge point says entries 1..=2 were purged, yet the log resumes at 5: entries lost.
        let err = SegmentLog::open(dir.path(), SEGMENT_BYTES, Some(2)).unwrap_err();
        assert!(err.to_string().contains("resumes at entry 5 after a purge through 2"), "{err}");
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, Some(5)).unwrap();
        assert_eq!(everything(&log), vec![(6, payload(6, 0))]);
        assert!(log.append(&[(9, payload(9, 0))]).is_err(), "a hole after entry 6 is refused");
    }
}
