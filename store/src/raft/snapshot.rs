//! State-machine snapshots as files.
//!
//! A snapshot is built from a RocksDB checkpoint (a consistent, hard-linked copy of the database
//! taken without stopping apply), streamed into a file; the data set is never held in memory.
//!
//! File layout (all integers big-endian):
//! `"KEELSNAP" | version u32 | meta_len u32 | meta | records… | 0x00 | record_count u64 | crc32 u32`,
//! where a record is `cf_tag u8 (≥ 1) | key_len u32 | key | value_len u32 | value`, `meta` is the
//! bincode-encoded openraft [`SnapshotMeta`], and the CRC-32 covers every byte before it.
//!
//! Invariants: a snapshot file is written under a temporary name, fsynced, then renamed, so a file
//! with the final name is always complete; a snapshot is verified end to end (checksum and record
//! count) before anything is installed from it.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::StoredMembership;

use super::{LogId, SnapshotMeta, StoredMembership as Membership, decode, encode};
use crate::backend::{Backend, Cf};
use crate::format;

const MAGIC: &[u8; 8] = b"KEELSNAP";
const VERSION: u32 = 1;
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
/// Suffix of a snapshot being received from the leader.
pub const PARTIAL_SUFFIX: &str = ".snap.part";
/// Largest key or value a snapshot record may carry; larger lengths mean corruption.
const MAX_FIELD: u32 = 512 << 20;

/// A snapshot file on disk; what openraft moves between the state machine and the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    /// Wraps an existing file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> io::Result<u64> {
        Ok(fs::metadata(&self.path)?.len())
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_record(out: &mut impl Write, cf: Cf, key: &[u8], value: &[u8]) -> io::Result<()> {
    out.write_all(&[cf.tag()])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Builds a snapshot of the backend's state machine into `dir`; returns its metadata and file.
/// Older snapshots in `dir` are removed once the new one is complete.
pub fn build(backend: &dyn Backend, dir: &Path) -> io::Result<(SnapshotMeta, SnapshotFile)> {
    fs::create_dir_all(dir)?;
    let nonce =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let tmp = dir.join(format!("building-{nonce}{TMP_SUFFIX}"));
    let mut out =
        Crc { inner: BufWriter::with_capacity(1 << 20, File::create(&tmp)?), hasher: crc32fast::Hasher::new() };

    // The metadata column family comes first in the export; buffer it (it is small) until the
    // applied log id and membership it holds are known, then write the header.
    let mut meta_records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut meta: Option<SnapshotMeta> = None;
    let mut count: u64 = 0;
    let mut write_error: Option<io::Error> = None;
    let exported = backend.export_checkpoint(dir, &Cf::STATE_MACHINE, &mut |cf, key, value| {
        count += 1;
        let written = if cf == Cf::Meta {
            meta_records.push((key.to_vec(), value.to_vec()));
            Ok(())
        } else {
            let header = match meta {
                Some(_) => Ok(()),
                None => write_header(&mut meta_records, &mut out).map(|m| meta = Some(m)),
            };
            header.and_then(|()| write_record(&mut out, cf, key, value))
        };
        written.map_err(|err| {
            write_error = Some(err);
            crate::backend::BackendError::Engine("writing the snapshot file failed".into())
        })
    });
    if let Err(err) = exported {
        return Err(write_error.unwrap_or_else(|| io::Error::other(err.to_string())));
    }
    let meta = match meta {
        Some(meta) => meta,
        None => write_header(&mut meta_records, &mut out)?,
    };
    out.write_all(&[0])?;
    out.write_all(&count.to_be_bytes())?;
    let crc = out.hasher.clone().finalize();
    let mut file = out.inner.into_inner().map_err(|err| err.into_error())?;
    file.write_all(&crc.to_be_bytes())?;
    file.sync_all()?;
    drop(file);

    let path = dir.join(format!("{}{SUFFIX}", name(&meta)));
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    remove_others(dir, &path)?;
    Ok((meta, SnapshotFile { path }))
}

/// Writes the file header (magic, version, metadata) and the buffered metadata records.
fn write_header(meta_records: &mut Vec<(Vec<u8>, Vec<u8>)>, out: &mut impl Write) -> io::Result<SnapshotMeta> {
    let meta = snapshot_meta(meta_records)?;
    let encoded = encode(&meta)?;
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_be_bytes())?;
    out.write_all(&(encoded.len() as u32).to_be_bytes())?;
    out.write_all(&encoded)?;
    for (key, value) in meta_records.drain(..) {
        write_record(out, Cf::Meta, &key, &value)?;
    }
    Ok(meta)
}

fn snapshot_meta(meta_records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<SnapshotMeta> {
    let lookup = |key: &[u8]| meta_records.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice());
    let last_log_id: Option<LogId> = lookup(format::APPLIED_KEY).map(decode).transpose()?;
    let last_membership: Membership = match lookup(format::MEMBERSHIP_KEY) {
        Some(bytes) => decode(bytes)?,
        None => StoredMembership::default(),
    };
    Ok(SnapshotMeta { last_log_id, last_membership })
}

/// A snapshot's file name (without suffix), derived from the last log id it includes. Two snapshots
/// at the same log id hold the same logical state, so one may replace the other.
pub fn name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(log_id) => format!("{:020}-{:020}", log_id.index(), log_id.committed_leader_id().term),
        None => "empty".to_string(),
    }
}

fn remove_others(dir: &Path, keep: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // Only complete snapshots: a build or a receive may be in progress beside this one.
        if path != keep && name.ends_with(SUFFIX) {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Removes files left by builds or transfers that a crash interrupted, and client snapshots
/// whose streams a crash cut short. Call only at start-up.
pub fn remove_leftovers(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(TMP_SUFFIX) || name.ends_with(PARTIAL_SUFFIX) {
            fs::remove_file(&path)?;
        } else if (name.starts_with(crate::backend::CHECKPOINT_DIR_PREFIX) || name.starts_with(CLIENT_DIR_PREFIX))
            && path.is_dir()
        {
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// Prefix of the scratch directories that hold snapshots built for clients (Maintenance
/// Snapshot), beside the Raft snapshots but never mistaken for them.
const CLIENT_DIR_PREFIX: &str = "client-";

/// A snapshot built for a client, in its own scratch directory under the snapshot directory;
/// the directory is removed when this is dropped (the stream ended or was abandoned).
#[derive(Debug)]
pub struct ClientSnapshot {
    dir: PathBuf,
    /// What it holds.
    pub meta: SnapshotMeta,
    /// The file.
    pub file: SnapshotFile,
}

impl ClientSnapshot {
    /// Builds a snapshot of the backend's state machine for a client.
    pub fn build(backend: &dyn Backend, snapshot_dir: &Path) -> io::Result<Self> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = snapshot_dir.join(format!("{CLIENT_DIR_PREFIX}{nonce}"));
        match build(backend, &dir) {
            Ok((meta, file)) => Ok(Self { dir, meta, file }),
            Err(err) => {
                let _ = fs::remove_dir_all(&dir);
                Err(err)
            }
        }
    }
}

impl Drop for ClientSnapshot {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(%err, dir = %self.dir.display(), "removing a client snapshot failed");
        }
    }
}

/// The newest complete snapshot in `dir`, if any.
pub fn current(dir: &Path) -> io::Result<Option<(SnapshotMeta, SnapshotFile)>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut newest: Option<PathBuf> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(SUFFIX) && newest.as_ref().is_none_or(|n| path > *n) {
            newest = Some(path);
        }
    }
    match newest {
        None => Ok(None),
        Some(path) => Ok(Some((read_meta(&path)?, SnapshotFile { path }))),
    }
}

fn read_exact_array<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_header(input: &mut impl Read) -> io::Result<SnapshotMeta> {
    let magic: [u8; 8] = read_exact_array(input)?;
    if &magic != MAGIC {
        return Err(invalid("not a Keel snapshot file (bad magic)"));
    }
    let version = u32::from_be_bytes(read_exact_array(input)?);
    if version != VERSION {
        return Err(invalid(format!("snapshot format {version} is not supported (expected {VERSION})")));
    }
    let len = u32::from_be_bytes(read_exact_array(input)?);
    if len > MAX_FIELD {
        return Err(invalid("snapshot header is implausibly large"));
    }
    let mut meta = vec![0u8; len as usize];
    input.read_exact(&mut meta)?;
    decode(&meta)
}

/// Reads a snapshot's metadata from its header.
pub fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    read_header(&mut BufReader::new(File::open(path)?))
}

struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Visits every record of a snapshot, then checks the record count and checksum. Returns the
/// metadata. A visitor that writes must not treat the data as valid until this returns `Ok`.
pub fn for_each_record(
    path: &Path,
    mut visit: impl FnMut(Cf, Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<SnapshotMeta> {
    let mut input =
        CrcReader { inner: BufReader::with_capacity(1 << 20, File::open(path)?), hasher: crc32fast::Hasher::new() };
    let meta = read_header(&mut input)?;
    let mut count = 0u64;
    loop {
        let [tag] = read_exact_array::<1>(&mut input)?;
        if tag == 0 {
            break;
        }
        let cf = Cf::from_tag(tag)
            .filter(|cf| Cf::STATE_MACHINE.contains(cf))
            .ok_or_else(|| invalid(format!("snapshot record names unknown column family tag {tag}")))?;
        let key = read_field(&mut input)?;
        let value = read_field(&mut input)?;
        visit(cf, key, value)?;
        count += 1;
    }
    let stored_count = u64::from_be_bytes(read_exact_array(&mut input)?);
    let computed = input.hasher.clone().finalize();
    let stored_crc = u32::from_be_bytes(read_exact_array(&mut input.inner)?);
    if stored_count != count {
        return Err(invalid(format!("snapshot holds {count} records but says {stored_count}")));
    }
    if stored_crc != computed {
        return Err(invalid("snapshot checksum mismatch: the file is corrupted"));
    }
    let mut rest = Vec::new();
    (&mut input.inner).take(ETCD_PAGE + ETCD_DIGEST as u64 + 1).read_to_end(&mut rest)?;
    if !rest.is_empty() {
        check_etcd_trailer(path, &rest)?;
    }
    Ok(meta)
}

/// etcd streams snapshots padded to a multiple of this many bytes, then appends a SHA-256 digest;
/// etcdctl refuses a stream of any other shape. Keel's Snapshot RPC streams the same trailer, and
/// snapshot readers accept a file with or without it.
pub const ETCD_PAGE: u64 = 512;
/// Length of the SHA-256 digest that ends an etcd-style snapshot stream.
pub const ETCD_DIGEST: usize = 32;

/// Zero bytes that pad a snapshot of `len` bytes to an [`ETCD_PAGE`] boundary.
pub fn etcd_padding(len: u64) -> u64 {
    (ETCD_PAGE - len % ETCD_PAGE) % ETCD_PAGE
}

/// Checks the bytes after a snapshot's checksum: zero padding to a page boundary and the SHA-256
/// of everything before the digest.
fn check_etcd_trailer(path: &Path, rest: &[u8]) -> io::Result<()> {
    let bad = || invalid("trailing bytes after the snapshot checksum are not an etcd-style padding and SHA-256");
    if rest.len() < ETCD_DIGEST || rest.len() > ETCD_DIGEST + ETCD_PAGE as usize {
        return Err(bad());
    }
    let (padding, digest) = rest.split_at(rest.len() - ETCD_DIGEST);
    let body = fs::metadata(path)?.len() - ETCD_DIGEST as u64;
    if padding.iter().any(|b| *b != 0) || !body.is_multiple_of(ETCD_PAGE) {
        return Err(bad());
    }
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?).take(body);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finish().as_ref() != digest {
        return Err(invalid("snapshot SHA-256 mismatch: the file is corrupted"));
    }
    Ok(())
}

fn read_field(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let len = u32::from_be_bytes(read_exact_array(input)?);
    if len > MAX_FIELD {
        return Err(invalid("snapshot record field is implausibly large"));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// Checks a snapshot end to end without installing it.
pub fn verify(path: &Path) -> io::Result<SnapshotMeta> {
    for_each_record(path, |_, _, _| Ok(()))
}

/// Places `file` in `dir` under its final name (moving it when it is already in `dir`, copying
/// otherwise), fsynced, and removes other snapshots there.
pub fn adopt(file: &SnapshotFile, meta: &SnapshotMeta, dir: &Path) -> io::Result<SnapshotFile> {
    fs::create_dir_all(dir)?;
    let target = dir.join(format!("{}{SUFFIX}", name(meta)));
    if file.path != target {
        if file.path.parent() == Some(dir) {
            fs::rename(&file.path, &target)?;
        } else {
            let tmp = dir.join(format!("{}{TMP_SUFFIX}", name(meta)));
            fs::copy(&file.path, &tmp)?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &target)?;
        }
        sync_dir(dir)?;
    }
    remove_others(dir, &target)?;
    Ok(SnapshotFile { path: target })
}

/// Finds the snapshot file with the given name (see [`name`]) in `dir`.
pub fn find(dir: &Path, name: &str) -> Option<SnapshotFile> {
    let path = dir.join(format!("{name}{SUFFIX}"));
    path.exists().then_some(SnapshotFile { path })
}
