//! `keel bench`: load generators for Keel (or any etcd v3 endpoint), modeled on etcd's `benchmark`
//! tool so results compare directly: the same flags, defaults and summary.
//!
//! Every run is bounded by `--total` requests; latencies of every request are kept (the total is
//! bounded) to report exact percentiles.
//!
//! `defrag-latency` measures what an online defragmentation costs the writers: it builds a large
//! store with garbage in it, then runs a steady put stream first alone (the baseline) and then
//! while the member defragments, and compares the two. Its write stream is bounded by the
//! defragmentation's duration (and `--baseline-secs`), and its latencies are kept likewise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{CompactionRequest, DefragmentRequest, PutRequest, RangeRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Put throughput and latency.
    Put(PutArgs),
    /// Put latency while one member defragments a large store (builds the store first).
    DefragLatency(DefragArgs),
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
        Bench::DefragLatency(args) => defrag_latency(args).await,
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
    let at = |q: f64| quantile(latencies, q);
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

/// The `q` quantile (0 < q ≤ 1) of sorted, non-empty `latencies`: the smallest value at or above
/// which a fraction `q` of them lie (nearest rank).
fn quantile(latencies: &[Duration], q: f64) -> Duration {
    let n = latencies.len();
    latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

/// Flags of `defrag-latency`.
#[derive(Debug, Args)]
pub struct DefragArgs {
    /// The member's client URL: the store is built, written and defragmented through it.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// Keys in the store (each written once with a value of --val-size bytes).
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Value size in bytes; values are random, so compression cannot shrink them.
    #[arg(long, default_value_t = 1024)]
    val_size: usize,
    /// Concurrent clients building the store and making garbage.
    #[arg(long, default_value_t = 64)]
    fill_clients: usize,
    /// gRPC connections for the building clients.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Writer counts for the measured stream, comma-separated: one round (garbage, compaction,
    /// baseline, defragmentation) per entry. Each writer puts sequentially, one request at a time.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Distinct keys the measured stream overwrites.
    #[arg(long, default_value_t = 1000)]
    stream_keys: usize,
    /// Seconds of the measured stream without a defragmentation, for comparison.
    #[arg(long, default_value_t = 15)]
    baseline_secs: u64,
    /// Skip building the store (it was built by an earlier run against the same member).
    #[arg(long)]
    skip_fill: bool,
}

/// xorshift64: fast, and its output is as incompressible to LZ4 and Zstd as real random data,
/// which is what matters here (no dependency on a random-number crate for one benchmark).
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            out.extend_from_slice(&self.0.to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

fn store_key(index: usize) -> Vec<u8> {
    format!("defrag/{index:08}").into_bytes()
}

/// Puts a random value at `store_key(i)` for every `i` in `indexes`, from `clients` concurrent
/// clients over `conns`; returns the elapsed time.
async fn fill(conns: &[KvClient<Channel>], clients: usize, indexes: Vec<usize>, val_size: usize) -> Result<Duration> {
    let started = Instant::now();
    let indexes = Arc::new(indexes);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (mut client, indexes, next) = (conns[c % conns.len()].clone(), indexes.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            // Seeded from the clock as well, so no two fills write the same values.
            let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let mut noise = Noise::new((c as u64 + 1) ^ clock.as_nanos() as u64);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = indexes.get(n) else { return Ok::<_, anyhow::Error>(()) };
                let request = PutRequest { key: store_key(i), value: noise.bytes(val_size), ..Default::default() };
                client.put(request).await.with_context(|| format!("building the store: put {n}"))?;
                if (n + 1) % 100_000 == 0 {
                    println!("  {} puts, {:.0} s", n + 1, started.elapsed().as_secs_f64());
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("building client")??;
    }
    Ok(started.elapsed())
}

/// One measured put: when it was sent, how long it took, whether it failed.
struct Sample {
    sent: Instant,
    took: Duration,
    failed: bool,
}

/// Latency figures of a set of samples.
fn describe(samples: &[&Sample], window: Duration) -> String {
    let failed = samples.iter().filter(|s| s.failed).count();
    let mut latencies: Vec<Duration> = samples.iter().filter(|s| !s.failed).map(|s| s.took).collect();
    if latencies.is_empty() {
        return format!("no successful puts ({failed} failed)");
    }
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{} puts ({failed} failed), {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, worst {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / window.as_secs_f64().max(f64::EPSILON),
        ms(quantile(&latencies, 0.50)),
        ms(quantile(&latencies, 0.99)),
        ms(quantile(&latencies, 0.999)),
        ms(latencies[latencies.len() - 1]),
    )
}

async fn db_size(maintenance: &mut MaintenanceClient<Channel>) -> Result<(i64, i64)> {
    let status = maintenance.status(StatusRequest {}).await.context("status")?.into_inner();
    Ok((status.db_size, status.db_size_in_use))
}

fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

async fn defrag_latency(args: DefragArgs) -> Result<()> {
    if args.keys < 2 || args.val_size == 0 || args.fill_clients == 0 || args.conns == 0 || args.stream_keys == 0 {
        bail!("--keys (at least 2), --val-size, --fill-clients, --conns and --stream-keys must be positive");
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients must list positive writer counts");
    }
    let endpoints = std::slice::from_ref(&args.endpoint);
    let conns = connect(endpoints, args.conns).await?;
    let channel = Endpoint::from_shared(args.endpoint.clone())
        .with_context(|| format!("endpoint {}", args.endpoint))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.endpoint))?;
    let mut maintenance = MaintenanceClient::new(channel.clone());
    let mut kv = KvClient::new(channel);

    println!("== defrag-latency against {}", args.endpoint);
    if args.skip_fill {
        println!("-- skipping the build of the store (--skip-fill)");
    } else {
        println!(
            "-- building the store: {} keys of {} random bytes, {} clients",
            args.keys, args.val_size, args.fill_clients
        );
        let took = fill(&conns, args.fill_clients, (0..args.keys).collect(), args.val_size).await?;
        let (size, _) = db_size(&mut maintenance).await?;
        println!("   built in {:.1} s; db size {}", took.as_secs_f64(), mib(size));
    }

    for (round, &writers) in args.clients.iter().enumerate() {
        println!("== round {}: {writers} writer(s)", round + 1);
        // Garbage: overwrite half the keys (alternating halves between rounds), then compact at
        // the current revision and wait until the history is physically removed, so the
        // defragmentation has deleted data to reclaim and no compaction runs during it.
        let half: Vec<usize> = (0..args.keys).filter(|i| i % 2 == round % 2).collect();
        println!("-- overwriting {} keys", half.len());
        let took = fill(&conns, args.fill_clients, half, args.val_size).await?;
        let revision = kv
            .range(RangeRequest { key: vec![0], count_only: true, ..Default::default() })
            .await
            .context("reading the revision")?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        let compacting = Instant::now();
        kv.compact(CompactionRequest { revision, physical: true }).await.context("compact")?;
        let (size_before, in_use_before) = db_size(&mut maintenance).await?;
        println!(
            "   overwritten in {:.1} s; compacted at revision {revision} in {:.1} s; db size {} (in use {})",
            took.as_secs_f64(),
            compacting.elapsed().as_secs_f64(),
            mib(size_before),
            mib(in_use_before)
        );

        // The measured stream: `writers` clients, each putting sequentially over its own connection.
        let stream_conns = connect(endpoints, writers).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let sequence = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(writers);
        for (w, mut client) in stream_conns.into_iter().enumerate() {
            let (stop, sequence, val_size, space) =
                (stop.clone(), sequence.clone(), args.val_size, args.stream_keys as u64);
            tasks.push(tokio::spawn(async move {
                let mut noise = Noise::new(0x5eed + w as u64);
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = sequence.fetch_add(1, Ordering::Relaxed);
                    let request = PutRequest {
                        key: format!("stream/{:06}", n % space).into_bytes(),
                        value: noise.bytes(val_size),
                        ..Default::default()
                    };
                    let sent = Instant::now();
                    let failed = client.put(request).await.is_err();
                    samples.push(Sample { sent, took: sent.elapsed(), failed });
                }
                samples
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.baseline_secs)).await;
        let defrag_start = Instant::now();
        let defragmented = maintenance.defragment(DefragmentRequest {}).await;
        let defrag_end = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.context("stream writer")?);
        }
        defragmented.context("defragment")?;
        let (size_after, in_use_after) = db_size(&mut maintenance).await?;

        let stream_start = samples.iter().map(|s| s.sent).min().unwrap_or(defrag_start);
        // Baseline: puts answered before the defragmentation began (the first second is warm-up).
        let warm = stream_start + Duration::from_secs(1).min(Duration::from_secs(args.baseline_secs) / 2);
        let baseline: Vec<&Sample> =
            samples.iter().filter(|s| s.sent >= warm && s.sent + s.took <= defrag_start).collect();
        // During: every put whose time in flight overlaps the defragmentation.
        let during: Vec<&Sample> =
            samples.iter().filter(|s| s.sent <= defrag_end && s.sent + s.took >= defrag_start).collect();
        let defrag_took = defrag_end - defrag_start;
        println!(
            "   defragment took {:.1} s; db size {} -> {} (in use {} -> {})",
            defrag_took.as_secs_f64(),
            mib(size_before),
            mib(size_after),
            mib(in_use_before),
            mib(in_use_after)
        );
        println!("   baseline:        {}", describe(&baseline, defrag_start.saturating_duration_since(warm)));
        println!("   during defrag:   {}", describe(&during, defrag_took));
    }
    Ok(())
}
