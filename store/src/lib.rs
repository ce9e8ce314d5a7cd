//! Keel's store: an etcd-v3-compatible, Raft-replicated MVCC key-value store.
//!
//! Layers, top to bottom (only `api` knows protobuf or gRPC):
//! - `api`: gRPC services wire-compatible with etcd v3; validation and error mapping.
//! - `peer`: the member-to-member gRPC protocol (Raft traffic, requests forwarded to the leader).
//! - `server`: a running member: proposals to Raft and waiting for their results, linearizable
//!   reads, the lease expiry loop, metrics.
//! - `raft`: the replicated log (openraft), the log store, the deterministic state machine, snapshots.
//! - `concurrency`: locks and leader elections (etcd's v3lock and v3election semantics), built on
//!   proposals of ordinary transactions, linearizable reads and the watch hub.
//! - `mvcc`, `lease`, `watch`, `auth`: the data model the state machine applies to.
//! - `alarm`: cluster-wide alarms (NOSPACE) and which commands they refuse.
//! - `backend`: ordered key-value storage (RocksDB, or memory for tests).
//! - `backup`: snapshot files as backups: inspecting one, restoring one into a new data directory.
//! - `tls`: rustls configurations for listeners and peer connections, reloaded on rotation, and the
//!   certificate tooling behind `keel certs`.
//!
//! Invariant: every state change, lease expiry included, is a Raft log entry applied by the state
//! machine; nothing else writes the state-machine column families.

pub mod alarm;
pub mod api;
pub mod auth;
pub mod backend;
pub mod backup;
pub mod concurrency;
pub mod error;
pub mod format;
pub mod lease;
pub mod mvcc;
pub mod peer;
pub mod planted;
pub mod raft;
pub mod server;
pub mod tls;
pub mod watch;

mod serde_bytes;
