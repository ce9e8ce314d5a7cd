//! `keel bench defrag-latency`: what an online defragmentation costs the writers. It builds a
//! large store with garbage in it, then runs a steady put stream first alone (the baseline) and
//! then while the member defragments, and compares the two. Its write stream is bounded by the
//! defragmentation's duration (and `--baseline-secs`), and its latencies are kept likewise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{CompactionRequest, DefragmentRequest, PutRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use super::load::quantile;

/// One KV client per connection, spread over `endpoints` (plain connections: the member under
/// test is started without TLS by the benchmark's own procedure).
async fn kv_clients(endpoints: &[String], conns: usize) -> Result<Vec<KvClient<Channel>>> {
    Ok(super::load::connect(endpoints, conns, None).await?.into_iter().map(KvClient::new).collect())
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

pub async fn defrag_latency(args: DefragArgs) -> Result<()> {
    if args.keys < 2 || args.val_size == 0 || args.fill_clients == 0 || args.conns == 0 || args.stream_keys == 0 {
        bail!("--keys (at least 2), --val-size, --fill-clients, --conns and --stream-keys must be positive");
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients must list positive writer counts");
    }
    let endpoints = std::slice::from_ref(&args.endpoint);
    let conns = kv_clients(endpoints, args.conns).await?;
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
        let revision = super::kv::current_revision(&mut kv).await?;
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
        let stream_conns = kv_clients(endpoints, writers).await?;
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
