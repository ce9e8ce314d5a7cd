//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run against Keel's log
//! store and state machine: on both backends with the entries in the backend, and on RocksDB with
//! the entries in segment files (what a member runs), small enough to roll over.

use std::sync::Arc;

use keel_store::backend::{Backend, MemBackend, RocksBackend, RocksOptions};
use keel_store::raft::{LogStore, StateMachine, StoreCore, TypeConfig};
use keel_store::watch::WatchConfig;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use tempfile::TempDir;

struct Builder {
    rocksdb: bool,
    /// Segment size of the log's files; `None` keeps the entries in the backend.
    segment_bytes: Option<u64>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let backend: Arc<dyn Backend> = if self.rocksdb {
            Arc::new(RocksBackend::open(dir.path().join("db"), &RocksOptions::default()).expect("open rocksdb"))
        } else {
            Arc::new(MemBackend::new())
        };
        let core = StoreCore::open(backend.clone(), &dir.path().join("snap"), 2, WatchConfig::default())
            .expect("open store core");
        let log = match self.segment_bytes {
            Some(bytes) => LogStore::with_segment_size(backend, &dir.path().join("wal"), bytes),
            None => LogStore::new(backend),
        }
        .expect("log store");
        Ok((dir, log, StateMachine::new(core)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_on_the_memory_backend() {
    Suite::test_all(Builder { rocksdb: false, segment_bytes: None }).await.expect("storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_on_the_rocksdb_backend() {
    Suite::test_all(Builder { rocksdb: true, segment_bytes: None }).await.expect("storage suite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_passes_with_the_log_in_segment_files() {
    Suite::test_all(Builder { rocksdb: true, segment_bytes: Some(1024) }).await.expect("storage suite");
}
