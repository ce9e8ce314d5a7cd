//! The RocksDB [`Backend`]: one database directory, one column family per [`Cf`], one write-ahead log.
//!
//! Invariants:
//! - a single WAL orders every write across column families, and recovery uses point-in-time mode, so
//!   a recovered database is always a prefix of the writes issued (an acknowledged, synced write is
//!   never lost and nothing after a lost write survives);
//! - synced writes use `WriteOptions::set_sync(true)`; `flush_wal` is `FlushWAL(sync = true)`;
//! - buffered writes reach the WAL file only at the next synced write or `flush_wal` (manual WAL
//!   flush), so a process crash loses exactly what a power cut would: an unsynced suffix;
//! - `defragment` is a full manual compaction of every column family that never excludes
//!   automatic compactions, so writes go on (and L0 files keep being merged) while it runs.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor, CompactOptions, DB,
    DBCompressionType, DBRawIterator, DBRecoveryMode, Options, WriteOptions,
};

use super::{Backend, BackendError, BatchOp, CHECKPOINT_DIR_PREFIX, Cf, Cursor, Durability, ExportVisitor, WriteBatch};
use crate::planted::{self, PlantedBug};

/// Entries per sliding window in which half being deletes marks a new file for compaction.
const DELETION_WINDOW: usize = 10_000;
/// Share of deletes among all of a new file's entries that marks it for compaction.
const DELETION_RATIO: f64 = 0.5;

/// Tuning knobs for the RocksDB backend.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Size of the block cache shared by every column family.
    pub block_cache_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self { block_cache_bytes: 64 << 20 }
    }
}

/// A RocksDB database holding every column family of the store.
pub struct RocksBackend {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend").field("path", &self.path).finish()
    }
}

fn engine(err: rocksdb::Error) -> BackendError {
    BackendError::Engine(err.into_string())
}

impl RocksBackend {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>, options: &RocksOptions) -> Result<Self, BackendError> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path)?;

        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_paranoid_checks(true);
        db_opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_log_file_size(16 << 20);
        db_opts.set_max_total_wal_size(256 << 20);
        // Buffered writes stay in RocksDB's WAL buffer (bounded by `writable_file_max_buffer_size`,
        // 1 MiB) until the next synced write or `flush_wal`, which writes and syncs them in one go.
        // Without it every buffered write (a log append, each applied entry) was its own write(2):
        // about 5 % of a member's CPU under concurrent puts. The durability contract is unchanged:
        // a buffered write was never promised to survive a crash, only to be made durable by the
        // next sync, and the WAL is still one sequence, so a recovered database is still a prefix.
        db_opts.set_manual_wal_flush(true);

        let descriptors = Cf::ALL.iter().map(|cf| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&table);
            cf_opts.set_compression_type(DBCompressionType::Lz4);
            cf_opts.set_bottommost_compression_type(DBCompressionType::Zstd);
            // A file written mostly of deletes (what an MVCC compaction leaves) is marked for
            // compaction as soon as it is written, so the history it deletes is dropped from disk
            // without waiting for the level to fill or for a defragmentation.
            cf_opts.add_compact_on_deletion_collector_factory(DELETION_WINDOW, DELETION_WINDOW / 2, DELETION_RATIO);
            ColumnFamilyDescriptor::new(cf.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, &path, descriptors).map_err(engine)?;
        Ok(Self { db, path })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Background errors (failed flushes and compactions) since the database opened.
    fn background_errors(&self) -> u64 {
        self.db.property_int_value("rocksdb.background-errors").ok().flatten().unwrap_or(0)
    }

    fn handle(&self, cf: Cf) -> &ColumnFamily {
        // Every Cf is created at open (`create_missing_column_families`), so a missing handle is a
        // programming error in this module, not a runtime condition.
        #[allow(clippy::expect_used)]
        self.db.cf_handle(cf.name()).expect("every column family is created when the database opens")
    }

    /// Sums a size property over the state-machine column families: like etcd's database size,
    /// the sizes leave out the Raft log (etcd's WAL), which is purged on its own schedule.
    fn sum_property(&self, name: &str) -> u64 {
        Cf::STATE_MACHINE
            .iter()
            .filter_map(|&cf| self.db.property_int_value_cf(self.handle(cf), name).ok().flatten())
            .sum()
    }
}

impl Backend for RocksBackend {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.db.get_cf(self.handle(cf), key).map_err(engine)
    }

    fn multi_get(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let handle = self.handle(cf);
        self.db
            .batched_multi_get_cf(handle, keys.iter(), false)
            .into_iter()
            .map(|res| res.map(|slice| slice.map(|s| s.to_vec())).map_err(engine))
            .collect()
    }

    fn cursor(&self, cf: Cf) -> Box<dyn Cursor + '_> {
        Box::new(RocksCursor { inner: self.db.raw_iterator_cf(self.handle(cf)) })
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), BackendError> {
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => rocks_batch.put_cf(self.handle(cf), key, value),
                BatchOp::Delete { cf, key } => rocks_batch.delete_cf(self.handle(cf), key),
                BatchOp::DeleteRange { cf, from, to } => {
                    if from < to {
                        rocks_batch.delete_range_cf(self.handle(cf), from, to);
                    }
                }
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Synced);
        if durability == Durability::Buffered && planted::active(PlantedBug::AckBeforeFsync) {
            opts.disable_wal(true);
        }
        self.db.write_opt(rocks_batch, &opts).map_err(engine)
    }

    fn flush_wal(&self) -> Result<(), BackendError> {
        self.db.flush_wal(true).map_err(engine)
    }

    fn export(&self, cfs: &[Cf], visit: &mut ExportVisitor<'_>) -> Result<(), BackendError> {
        let snapshot = self.db.snapshot();
        for &cf in cfs {
            let mut iter = snapshot.raw_iterator_cf(self.handle(cf));
            iter.seek_to_first();
            while let Some((key, value)) = iter.item() {
                visit(cf, key, value)?;
                iter.next();
            }
            iter.status().map_err(engine)?;
        }
        Ok(())
    }

    fn export_checkpoint(&self, scratch: &Path, cfs: &[Cf], visit: &mut ExportVisitor<'_>) -> Result<(), BackendError> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        std::fs::create_dir_all(scratch)?;
        let dir = scratch.join(format!("{CHECKPOINT_DIR_PREFIX}{nonce}"));
        Checkpoint::new(&self.db).and_then(|c| c.create_checkpoint(&dir)).map_err(engine)?;
        let result = (|| -> Result<(), BackendError> {
            let copy = DB::open_cf_for_read_only(&Options::default(), &dir, Cf::ALL.iter().map(|cf| cf.name()), false)
                .map_err(engine)?;
            for &cf in cfs {
                let handle = copy
                    .cf_handle(cf.name())
                    .ok_or_else(|| BackendError::Engine(format!("checkpoint lacks column family {}", cf.name())))?;
                let mut iter = copy.raw_iterator_cf(handle);
                iter.seek_to_first();
                while let Some((key, value)) = iter.item() {
                    visit(cf, key, value)?;
                    iter.next();
                }
                iter.status().map_err(engine)?;
            }
            Ok(())
        })();
        let removed = std::fs::remove_dir_all(&dir);
        result?;
        removed?;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.sum_property("rocksdb.total-sst-files-size") + self.sum_property("rocksdb.size-all-mem-tables")
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.sum_property("rocksdb.live-sst-files-size") + self.sum_property("rocksdb.size-all-mem-tables")
    }

    fn reclaim_deleted(&self, cfs: &[Cf]) -> Result<(), BackendError> {
        // Deletes still in a memtable shadow the data in files below but free nothing; flushed,
        // they form files the deletion collector marks, and the compaction of those files drops
        // the data they delete.
        let handles: Vec<&ColumnFamily> = cfs.iter().map(|&cf| self.handle(cf)).collect();
        self.db.flush_cfs_opt(&handles, &rocksdb::FlushOptions::default()).map_err(engine)
    }

    fn defragment(&self) -> Result<(), BackendError> {
        let mut opts = CompactOptions::default();
        // Deletes only shadow the data below them until a compaction reaches the level holding
        // that data, and after a long life most data sits in the bottommost level, which a
        // default manual compaction skips: force it, or nothing is reclaimed.
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        // An exclusive manual compaction would hold back automatic ones, letting L0 files from
        // ongoing writes pile up until RocksDB slows and then stops writes.
        opts.set_exclusive_manual_compaction(false);
        let errors_before = self.background_errors();
        for cf in Cf::ALL {
            let started = std::time::Instant::now();
            // The whole key range; the memtable is flushed first, so recent deletes count too.
            self.db.compact_range_cf_opt(self.handle(cf), None::<&[u8]>, None::<&[u8]>, &opts);
            tracing::debug!(cf = cf.name(), elapsed = ?started.elapsed(), "column family compacted");
            // RocksDB's C API drops the compaction's status; a failed compaction (or flush) is
            // counted among the background errors, so that is where a failure shows.
            let errors = self.background_errors();
            if errors > errors_before {
                return Err(BackendError::Engine(format!(
                    "compacting column family {} failed ({} new background error(s); see RocksDB's LOG)",
                    cf.name(),
                    errors - errors_before
                )));
            }
        }
        Ok(())
    }
}

struct RocksCursor<'a> {
    inner: DBRawIterator<'a>,
}

impl Cursor for RocksCursor<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.inner.seek(key);
    }

    fn seek_for_prev(&mut self, key: &[u8]) {
        self.inner.seek_for_prev(key);
    }

    fn seek_to_first(&mut self) {
        self.inner.seek_to_first();
    }

    fn seek_to_last(&mut self) {
        self.inner.seek_to_last();
    }

    fn next(&mut self) {
        if self.inner.valid() {
            self.inner.next();
        }
    }

    fn prev(&mut self) {
        if self.inner.valid() {
            self.inner.prev();
        }
    }

    fn entry(&self) -> Option<(&[u8], &[u8])> {
        self.inner.item()
    }

    fn status(&self) -> Result<(), BackendError> {
        self.inner.status().map_err(engine)
    }
}
