//! `keel bench watch-latency` and `watch-fanout`: how long a put takes to reach its watchers, and
//! whether every watcher gets every event. `--streams` watch streams (spread over the
//! connections) each carry `--watchers-per-stream` watches on one key; `--total` puts of that key
//! (at `--rate` per second, from `--clients` putters) carry their own number in the value, so the
//! latency of each delivery is measured from the moment its put was sent.
//!
//! Invariants: every watch is confirmed created before the first put; collection ends when every
//! watcher has every event, or [`STRAGGLER_BOUND`] after the last put was answered; an event that
//! never arrived is counted as lost, and `watch-fanout` fails when any was.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::watch_client::WatchClient;
use keel_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, watch_request};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::load::{LoadArgs, Report, Worker, drive};

/// How long watchers may still receive events once the last put was answered.
const STRAGGLER_BOUND: Duration = Duration::from_secs(10);

/// Flags of `watch-latency` and `watch-fanout`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Watch streams, spread over the connections.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Watches per stream, all on the benchmark's key.
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
}

/// A putter: puts the watched key with the request's number as the value, stamping when it sent.
struct Putter {
    client: KvClient<Channel>,
    key: Vec<u8>,
    sent: Arc<Vec<AtomicU64>>,
    started: Instant,
}

impl Worker for Putter {
    async fn call(&mut self, op: u64) -> Result<()> {
        let stamp = self.started.elapsed().as_nanos() as u64;
        self.sent[op as usize].store(stamp.max(1), Ordering::Release);
        let request = PutRequest { key: self.key.clone(), value: op.to_string().into_bytes(), ..Default::default() };
        self.client.put(request).await.context("put")?;
        Ok(())
    }
}

/// What one stream's watchers received: a latency per delivered event, and events per watcher.
struct Received {
    latencies: Vec<Duration>,
    delivered: u64,
}

/// Opens one stream with `watchers` watches on `key` and waits until each is confirmed.
async fn open_stream(
    channel: Channel,
    key: &[u8],
    watchers: usize,
) -> Result<(mpsc::Sender<WatchRequest>, tonic::Streaming<keel_proto::etcdserverpb::WatchResponse>)> {
    let create = || WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    };
    let (requests, outgoing) = mpsc::channel(watchers.max(1));
    // The first request is queued before the call: a server may hold its response headers back
    // until the stream's first message (etcd does), and the call returns only once they arrive.
    requests.send(create()).await.context("watch stream closed")?;
    let mut responses = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .context("opening a watch stream")?
        .into_inner();
    for n in 0..watchers {
        if n > 0 {
            requests.send(create()).await.context("watch stream closed")?;
        }
        // Creations are answered in order; waiting for each keeps the stream's buffer small.
        loop {
            let response = responses.message().await.context("watch")?.context("watch stream ended")?;
            if response.canceled {
                bail!("watch refused: {}", response.cancel_reason);
            }
            if response.created {
                break;
            }
        }
    }
    Ok((requests, responses))
}

/// Collects a stream's events until its watchers have all `total` or `stop` turns true.
async fn collect(
    mut responses: tonic::Streaming<keel_proto::etcdserverpb::WatchResponse>,
    expected: u64,
    sent: Arc<Vec<AtomicU64>>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut received = Received { latencies: Vec::new(), delivered: 0 };
    while received.delivered < expected {
        let response = tokio::select! {
            message = responses.message() => match message {
                Ok(Some(response)) => response,
                _ => break,
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let now = started.elapsed().as_nanos() as u64;
        for event in &response.events {
            let Some(op) = event.kv.as_ref().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<usize>().ok())
            else {
                continue;
            };
            let stamp = sent.get(op).map_or(0, |s| s.load(Ordering::Acquire));
            received.delivered += 1;
            received.latencies.push(Duration::from_nanos(now.saturating_sub(stamp)));
        }
    }
    received
}

/// Runs a watch benchmark. Lost events are the report's errors.
pub async fn run(args: &WatchArgs) -> Result<Report> {
    let load = &args.load;
    load.validate()?;
    if args.streams == 0 || args.watchers_per_stream == 0 {
        bail!("--streams and --watchers-per-stream must be at least 1");
    }
    let total = usize::try_from(load.total).context("--total")?;
    let channels = load.channels().await?;
    let key = super::load::key_bytes(0, load.key_size);
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut collectors = Vec::with_capacity(args.streams);
    let mut keep_open = Vec::with_capacity(args.streams);
    for s in 0..args.streams {
        let (requests, responses) =
            open_stream(channels[s % channels.len()].clone(), &key, args.watchers_per_stream).await?;
        keep_open.push(requests);
        let expected = load.total * args.watchers_per_stream as u64;
        collectors.push(tokio::spawn(collect(responses, expected, sent.clone(), started, stop_rx.clone())));
    }
    let putters = (0..load.clients)
        .map(|c| Putter {
            client: KvClient::new(channels[c % channels.len()].clone()),
            key: key.clone(),
            sent: sent.clone(),
            started,
        })
        .collect();
    let puts = drive(load, putters).await?;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(STRAGGLER_BOUND).await;
        stop_tx.send_replace(true);
    });
    let mut latencies = Vec::new();
    let mut delivered = 0;
    for collector in collectors {
        let received = collector.await.context("watch collector")?;
        delivered += received.delivered;
        latencies.extend(received.latencies);
    }
    stopper.abort();
    drop(keep_open);
    let expected = (puts.requests() as u64) * (args.streams * args.watchers_per_stream) as u64;
    let lost = expected.saturating_sub(delivered);
    Report::new(
        latencies,
        lost,
        (lost > 0).then(|| format!("{lost} of {expected} events never arrived")),
        started.elapsed(),
    )
}
