//! `keel bench`: load generators for Keel or any etcd v3 endpoint, modeled on etcd's `benchmark`
//! tool so results compare directly: the same flags, defaults and summary, so one client drives
//! both stores.
//!
//! `load.rs` is the shared driver (connections, clients, rate, key space, percentiles, text or
//! JSON summary); `kv.rs` the KV benchmarks (`put`, `range`, `txn-put`, `txn-mixed`); `lease.rs`
//! `lease-keepalive`; `watch.rs` `watch-latency` and `watch-fanout`; `defrag.rs`
//! `defrag-latency`, which measures what an online defragmentation costs writers. Every run is
//! bounded by `--total` requests (or, for `defrag-latency`, by its phases).

mod defrag;
mod kv;
mod lease;
mod load;
mod watch;

use anyhow::Result;
use clap::Subcommand;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Put throughput and latency.
    Put(load::LoadArgs),
    /// Range (get) throughput and latency, linearizable or serializable.
    Range(kv::RangeArgs),
    /// Transactions of puts.
    TxnPut(kv::TxnPutArgs),
    /// Transactions that read or write, at a read/write ratio.
    TxnMixed(kv::TxnMixedArgs),
    /// Lease keep-alive throughput and latency, one lease and stream per client.
    LeaseKeepalive(load::LoadArgs),
    /// Put-to-event latency at every watcher of a key.
    WatchLatency(watch::WatchArgs),
    /// Many watchers of one key: every one must get every event (fails otherwise).
    WatchFanout(watch::WatchArgs),
    /// Put latency while one member defragments a large store (builds the store first).
    DefragLatency(defrag::DefragArgs),
}

/// Runs a benchmark and prints its summary.
pub async fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Put(args) => kv::put(args).await,
        Bench::Range(args) => kv::range(args).await,
        Bench::TxnPut(args) => kv::txn_put(args).await,
        Bench::TxnMixed(args) => kv::txn_mixed(args).await,
        Bench::LeaseKeepalive(args) => lease::lease_keepalive(args).await,
        Bench::WatchLatency(args) => watch::run(args, "watch-latency", false).await,
        Bench::WatchFanout(args) => watch::run(args, "watch-fanout", true).await,
        Bench::DefragLatency(args) => defrag::defrag_latency(args).await,
    }
}
