//! `keel bench`: load generators for Keel or any etcd v3 endpoint, modeled on etcd's `benchmark`
//! tool so results compare directly: the same flags, defaults and summary, so one client drives
//! both stores.
//!
//! `load.rs` is the shared driver (connections, clients, rate, key space, percentiles, text or
//! JSON summary); `kv.rs` the KV benchmarks (`put`, `range`, `txn-put`, `txn-mixed`); `lease.rs`
//! `lease-keepalive`; `watch.rs` `watch-latency` and `watch-fanout`; `defrag.rs`
//! `defrag-latency`, which measures what an online defragmentation costs writers; `compare.rs`
//! `compare-etcd`, the same suite against Keel and etcd side by side. Every run is bounded by
//! `--total` requests (or by its phases).

mod compare;
mod defrag;
mod kv;
mod lease;
mod load;
mod watch;

use anyhow::Result;
use clap::{Args, Subcommand};

/// `keel bench`: the benchmark, and the load generator's own settings.
#[derive(Debug, Args)]
pub struct BenchCommand {
    /// Worker threads of the load generator's runtime (default: one per CPU, as etcd's
    /// `benchmark` uses every CPU). A load generator sharing the machine with the servers it
    /// measures takes CPU they cannot use; fewer threads take less per request (on two vCPUs, one
    /// thread spent about half the CPU per single-client read that two did) but receive fan-out
    /// (the watch benchmarks) on fewer cores.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// The benchmark.
    #[command(subcommand)]
    pub bench: Bench,
}

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
    /// Keel and etcd side by side: the same suite against each, as ratios, into a Markdown table.
    CompareEtcd(compare::CompareArgs),
}

/// Runs a benchmark and prints its summary.
pub async fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::DefragLatency(args) => return defrag::defrag_latency(args).await,
        Bench::CompareEtcd(args) => return compare::compare(args).await,
        _ => {}
    }
    let format = bench.load().map_or(load::WriteOut::Simple, |load| load.write_out);
    let (name, report) = measure(&bench).await?;
    report.print(name, format);
    if matches!(bench, Bench::WatchFanout(_)) && report.errors() > 0 {
        anyhow::bail!("{} events were lost", report.errors());
    }
    Ok(())
}

/// Runs a request benchmark and returns its name and what it measured.
pub async fn measure(bench: &Bench) -> Result<(&'static str, load::Report)> {
    Ok(match bench {
        Bench::Put(args) => ("put", kv::put(args).await?),
        Bench::Range(args) => ("range", kv::range(args).await?),
        Bench::TxnPut(args) => ("txn-put", kv::txn_put(args).await?),
        Bench::TxnMixed(args) => ("txn-mixed", kv::txn_mixed(args).await?),
        Bench::LeaseKeepalive(args) => ("lease-keepalive", lease::lease_keepalive(args).await?),
        Bench::WatchLatency(args) => ("watch-latency", watch::run(args).await?),
        Bench::WatchFanout(args) => ("watch-fanout", watch::run(args).await?),
        Bench::DefragLatency(_) | Bench::CompareEtcd(_) => {
            anyhow::bail!("defrag-latency and compare-etcd run their own phases; run them on their own")
        }
    })
}

impl Bench {
    /// The load flags of a request benchmark.
    fn load(&self) -> Option<&load::LoadArgs> {
        match self {
            Bench::Put(load) | Bench::LeaseKeepalive(load) => Some(load),
            Bench::Range(args) => Some(&args.load),
            Bench::TxnPut(args) => Some(&args.load),
            Bench::TxnMixed(args) => Some(&args.load),
            Bench::WatchLatency(args) | Bench::WatchFanout(args) => Some(&args.load),
            Bench::DefragLatency(_) | Bench::CompareEtcd(_) => None,
        }
    }
}
