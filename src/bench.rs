//! `keel bench`: load generators for Keel (or any etcd v3 endpoint), modeled on etcd's `benchmark`
//! tool so results compare directly: the same flags, defaults and summary.
//!
//! Every run is bounded by `--total` requests; latencies of every request are kept (the total is
//! bounded) to report exact percentiles.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb::PutRequest;
use keel_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Put throughput and latency.
    Put(PutArgs),
}

/// Flags named like etcd's `benchmark put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// Client URLs, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// gRPC connections, spread over the endpoints.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total puts.
    #[arg(long, default_value_t = 10_000)]
    total: usize,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys written (1: one hot key, etcd's default).
    #[arg(long, default_value_t = 1)]
    key_space_size: usize,
}

/// Runs a benchmark and prints its summary.
pub async fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Put(args) => put(args).await,
    }
}

async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<KvClient<Channel>>> {
    let mut clients = Vec::with_capacity(conns);
    for i in 0..conns {
        let url = &endpoints[i % endpoints.len()];
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("endpoint {url}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        clients.push(KvClient::new(channel));
    }
    Ok(clients)
}

fn key(index: usize, size: usize) -> Vec<u8> {
    let mut key = format!("{index:0width$}", width = size).into_bytes();
    key.truncate(size.max(1));
    key
}

async fn put(args: PutArgs) -> Result<()> {
    if args.conns == 0 || args.clients == 0 || args.total == 0 || args.endpoints.is_empty() {
        bail!("--conns, --clients, --total and --endpoints must all be positive");
    }
    let conns = connect(&args.endpoints, args.conns).await?;
    let value = vec![b'v'; args.val_size];
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let mut client = conns[c % conns.len()].clone();
        let share = args.total / args.clients + usize::from(c < args.total % args.clients);
        let (value, key_size, space) = (value.clone(), args.key_size, args.key_space_size.max(1));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for i in 0..share {
                let request = PutRequest {
                    key: key((c + i * 7919) % space, key_size),
                    value: value.clone(),
                    ..Default::default()
                };
                let sent = Instant::now();
                client.put(request).await.context("put")?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.total);
    for task in tasks {
        latencies.extend(task.await.context("benchmark client")??);
    }
    let elapsed = started.elapsed();
    summarize(&mut latencies, elapsed);
    Ok(())
}

fn summarize(latencies: &mut [Duration], elapsed: Duration) {
    latencies.sort_unstable();
    let n = latencies.len();
    let at = |q: f64| latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    let total: Duration = latencies.iter().sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("Summary:");
    println!("  Total:\t{:.4} secs.", elapsed.as_secs_f64());
    println!("  Slowest:\t{:.4} ms.", ms(latencies[n - 1]));
    println!("  Fastest:\t{:.4} ms.", ms(latencies[0]));
    println!("  Average:\t{:.4} ms.", ms(total / n as u32));
    println!("  Requests/sec:\t{:.1}", n as f64 / elapsed.as_secs_f64());
    println!("  p50:\t{:.4} ms.", ms(at(0.50)));
    println!("  p90:\t{:.4} ms.", ms(at(0.90)));
    println!("  p99:\t{:.4} ms.", ms(at(0.99)));
}
