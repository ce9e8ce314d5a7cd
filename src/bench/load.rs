//! The load driver every request benchmark shares: connections (plain or TLS) spread over the
//! endpoints, clients spread over the connections, an optional global request rate, the key
//! space, and the summary (QPS and latency percentiles) printed as text or JSON.
//!
//! Invariants: a run issues exactly `--total` requests (each numbered once, from one shared
//! counter, so clients that finish early take the others' share); with `--rate` request `i` is
//! not sent before `start + i / rate`; every latency is kept (the total bounds them) so the
//! percentiles are exact; a failed request is counted and reported, not retried, and a run in
//! which every request failed is an error.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use keel_proto::etcdserverpb::StatusRequest;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_store::tls::{ClientTls, TlsFiles};
use tonic::transport::Channel;

/// How the summary is printed (`-w`, as etcdctl's `--write-out`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WriteOut {
    /// etcd benchmark's text summary.
    Simple,
    /// One JSON object, for scripts.
    Json,
}

/// Flags every request benchmark takes, named like etcd's `benchmark`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Client URLs, comma-separated; a bare host:port is http (https with TLS flags), as in
    /// etcd's benchmark.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// gRPC connections, spread over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, spread over the connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Total requests (for the watch benchmarks: puts, also as `--put-total`).
    #[arg(long, alias = "put-total", default_value_t = 10_000)]
    pub total: u64,
    /// Requests per second across all clients, 0 for as fast as they go (for the watch
    /// benchmarks: puts per second, also as `--put-rate`).
    #[arg(long, alias = "put-rate", default_value_t = 0)]
    pub rate: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Distinct keys used (1: one hot key, etcd's default).
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use the keys in order (request `i` uses key `i mod key-space-size`) instead of at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// CA bundle that verifies the endpoints' certificates.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate to present.
    #[arg(long, requires = "key_file")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long = "key", requires = "cert")]
    pub key_file: Option<PathBuf>,
    /// Summary format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = WriteOut::Simple)]
    pub write_out: WriteOut,
}

impl LoadArgs {
    /// Refuses settings that cannot run, naming the flag.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("--conns", self.conns as u64),
            ("--clients", self.clients as u64),
            ("--total", self.total),
            ("--key-size", self.key_size as u64),
            ("--key-space-size", self.key_space_size),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.endpoints.is_empty() {
            bail!("--endpoints names no endpoint");
        }
        Ok(())
    }

    /// The connections: `--conns` of them, spread over the endpoints, with TLS when a CA or a
    /// client certificate is given.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let tls = if self.cacert.is_some() || self.cert.is_some() {
            Some(
                ClientTls::new(TlsFiles {
                    cert_file: self.cert.clone(),
                    key_file: self.key_file.clone(),
                    trusted_ca_file: self.cacert.clone(),
                })
                .context("client TLS")?,
            )
        } else {
            None
        };
        connect(&self.endpoints, self.conns, tls).await
    }
}

/// `conns` connections spread over `endpoints`, each established (by a Status request) before
/// the run starts, so that connection set-up is not measured and an unreachable endpoint is
/// named at once.
pub async fn connect(endpoints: &[String], conns: usize, tls: Option<Arc<ClientTls>>) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(conns);
    // Like etcd's benchmark and etcdctl, a bare host:port means http, or https with TLS flags.
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> =
        endpoints.iter().map(|e| if e.contains("://") { e.clone() } else { format!("{scheme}://{e}") }).collect();
    for i in 0..conns {
        let url = &endpoints[i % endpoints.len()];
        let channel =
            keel_store::tls::lazy_channel(url, tls.clone(), None, |e| e.connect_timeout(Duration::from_secs(5)))
                .with_context(|| format!("endpoint {url}"))?;
        let mut maintenance = MaintenanceClient::new(channel.clone());
        tokio::time::timeout(Duration::from_secs(10), maintenance.status(StatusRequest {}))
            .await
            .map_err(|_| anyhow::anyhow!("{url} did not answer within 10 s"))?
            .with_context(|| format!("connecting to {url}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The key number request `op` uses: `op mod space` with `sequential`, else one drawn from the
/// key space by the request's number.
pub fn key_index(op: u64, space: u64, sequential: bool) -> u64 {
    (if sequential { op } else { mix(op) }) % space.max(1)
}

/// Key number `index`, zero-padded to `size` bytes (etcd benchmark's keys).
pub fn key_bytes(index: u64, size: usize) -> Vec<u8> {
    let mut key = format!("{index:0size$}").into_bytes();
    key.truncate(size);
    key
}

/// SplitMix64's finalizer: spreads request numbers over the key space without a shared RNG.
pub fn mix(op: u64) -> u64 {
    let mut z = op.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One benchmark client: it owns its connection state and issues requests by number.
pub trait Worker: Send + 'static {
    /// Issues request number `op` and waits for its answer.
    fn call(&mut self, op: u64) -> impl Future<Output = Result<()>> + Send;
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    /// Latencies of the successful requests, sorted.
    latencies: Vec<Duration>,
    /// Failed requests, and the first failure.
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Runs `args.total` requests spread over `workers` (one task each) and returns what it
/// measured.
pub async fn drive<W: Worker>(args: &LoadArgs, workers: Vec<W>) -> Result<Report> {
    let next = Arc::new(AtomicU64::new(0));
    let total = args.total;
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let started = tokio::time::Instant::now();
    let progress = (std::io::stderr().is_terminal()).then(|| tokio::spawn(show_progress(next.clone(), total)));
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            loop {
                let op = next.fetch_add(1, Ordering::Relaxed);
                if op >= total {
                    return (latencies, errors, first_error);
                }
                if let Some(interval) = interval {
                    tokio::time::sleep_until(started + interval.mul_f64(op as f64)).await;
                }
                let sent = Instant::now();
                match worker.call(op).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{err:#}"));
                    }
                }
            }
        }));
    }
    let (mut latencies, mut errors, mut first) = (Vec::new(), 0, None);
    for task in tasks {
        let (done, failed, first_error) = task.await.context("benchmark client")?;
        latencies.extend(done);
        errors += failed;
        first = first.or(first_error);
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    Report::new(latencies, errors, first, elapsed)
}

/// Prints `done/total` on the terminal a few times a second until aborted.
async fn show_progress(next: Arc<AtomicU64>, total: u64) {
    loop {
        let done = next.load(Ordering::Relaxed).min(total);
        eprint!("\r{done}/{total} requests ({:.0}%)", done as f64 * 100.0 / total as f64);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Report {
    /// A report of `latencies` (in any order) and `errors` failures over `elapsed`; an error when
    /// nothing succeeded.
    pub fn new(
        mut latencies: Vec<Duration>,
        errors: u64,
        first_error: Option<String>,
        elapsed: Duration,
    ) -> Result<Self> {
        if latencies.is_empty() {
            bail!("every request failed; the first: {}", first_error.unwrap_or_default());
        }
        latencies.sort_unstable();
        Ok(Self { latencies, errors, first_error, elapsed })
    }

    /// How many requests succeeded.
    pub fn requests(&self) -> usize {
        self.latencies.len()
    }

    /// How many requests failed (for the watch benchmarks: events lost).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Successful requests per second.
    pub fn qps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` latency quantile.
    pub fn latency(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }

    /// The mean latency.
    pub fn mean(&self) -> Duration {
        self.latencies.iter().sum::<Duration>() / self.latencies.len() as u32
    }

    /// Prints the summary in `format`, titled `name`.
    pub fn print(&self, name: &str, format: WriteOut) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let n = self.latencies.len();
        let at = |q: f64| ms(quantile(&self.latencies, q));
        let average = ms(self.latencies.iter().sum::<Duration>() / n as u32);
        let qps = n as f64 / self.elapsed.as_secs_f64();
        match format {
            WriteOut::Json => {
                let summary = serde_json::json!({
                    "benchmark": name,
                    "requests": n,
                    "errors": self.errors,
                    "first_error": self.first_error,
                    "elapsed_s": self.elapsed.as_secs_f64(),
                    "qps": qps,
                    "latency_ms": {
                        "average": average,
                        "fastest": ms(self.latencies[0]),
                        "slowest": ms(self.latencies[n - 1]),
                        "p50": at(0.50),
                        "p90": at(0.90),
                        "p99": at(0.99),
                        "p99.9": at(0.999),
                    },
                });
                println!("{summary}");
            }
            WriteOut::Simple => {
                println!("Summary ({name}):");
                println!("  Total:\t{:.4} secs.", self.elapsed.as_secs_f64());
                println!("  Slowest:\t{:.4} ms.", ms(self.latencies[n - 1]));
                println!("  Fastest:\t{:.4} ms.", ms(self.latencies[0]));
                println!("  Average:\t{average:.4} ms.");
                println!("  Requests/sec:\t{qps:.1}");
                println!("  p50:\t{:.4} ms.", at(0.50));
                println!("  p90:\t{:.4} ms.", at(0.90));
                println!("  p99:\t{:.4} ms.", at(0.99));
                println!("  p99.9:\t{:.4} ms.", at(0.999));
                if self.errors > 0 {
                    println!("  Errors:\t{} (first: {})", self.errors, self.first_error.as_deref().unwrap_or(""));
                }
            }
        }
    }
}

/// The `q` quantile (0 < q ≤ 1) of sorted, non-empty `latencies`: the smallest value at or above
/// which a fraction `q` of them lie (nearest rank).
pub fn quantile(latencies: &[Duration], q: f64) -> Duration {
    let n = latencies.len();
    latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles_pick_the_sample_at_or_above_the_fraction() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(500));
        assert_eq!(quantile(&samples, 0.999), Duration::from_millis(999));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(1000));
        assert_eq!(quantile(&samples[..1], 0.99), Duration::from_millis(1));
    }

    #[test]
    fn keys_are_padded_to_their_size_and_stay_in_the_key_space() {
        assert_eq!(key_bytes(42, 8), b"00000042".to_vec());
        assert_eq!(key_bytes(123_456_789, 4), b"1234".to_vec());
        let spread: std::collections::BTreeSet<u64> = (0..1000).map(|op| key_index(op, 10, false)).collect();
        assert_eq!(spread.len(), 10, "random keys cover a small key space");
    }
}
