//! `keel bench lease-keepalive`: keep-alive throughput and latency. Each client grants one lease
//! and keeps it alive over its own `LeaseKeepAlive` stream, one request and its answer at a time,
//! as etcd's `benchmark lease-keepalive` does.
//!
//! Invariants: a client's stream carries one outstanding keep-alive at a time; a keep-alive
//! answered with TTL <= 0 (the lease is gone) counts as a failed request; the clients' leases are
//! revoked when the run ends.

use anyhow::{Context, Result, bail};
use keel_proto::etcdserverpb::lease_client::LeaseClient;
use keel_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::load::{LoadArgs, Report, Worker, drive};

/// TTL of the benchmark's leases: long enough that none expires during a run however slow.
const LEASE_TTL_S: i64 = 600;

/// One client: its lease and keep-alive stream.
struct KeepAliveWorker {
    lease: i64,
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    answers: Streaming<LeaseKeepAliveResponse>,
}

impl Worker for KeepAliveWorker {
    async fn call(&mut self, _op: u64) -> Result<()> {
        self.requests.send(LeaseKeepAliveRequest { id: self.lease }).await.context("keep-alive stream closed")?;
        let answer = self.answers.message().await.context("keep-alive")?.context("keep-alive stream ended")?;
        if answer.ttl <= 0 {
            bail!("lease {:x} is gone", self.lease);
        }
        Ok(())
    }
}

/// `keel bench lease-keepalive`.
pub async fn lease_keepalive(load: &LoadArgs) -> Result<Report> {
    load.validate()?;
    let channels = load.channels().await?;
    let mut workers = Vec::with_capacity(load.clients);
    let mut leases = Vec::with_capacity(load.clients);
    for c in 0..load.clients {
        let channel = channels[c % channels.len()].clone();
        let mut client = LeaseClient::new(channel);
        let lease = client.lease_grant(LeaseGrantRequest { ttl: LEASE_TTL_S, id: 0 }).await.context("lease grant")?;
        let lease = lease.into_inner().id;
        // One request in flight per client, so a buffer of one never blocks. The first is queued
        // before the call, and answered before the run: a server may hold its response headers
        // back until the stream's first message (etcd does), and the call returns only then.
        let (requests, outgoing) = mpsc::channel(1);
        requests.send(LeaseKeepAliveRequest { id: lease }).await.context("keep-alive stream closed")?;
        let mut answers = client
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .context("opening a keep-alive stream")?
            .into_inner();
        answers.message().await.context("keep-alive")?.context("keep-alive stream ended")?;
        leases.push((client, lease));
        workers.push(KeepAliveWorker { lease, requests, answers });
    }
    let report = drive(load, workers).await;
    for (mut client, lease) in leases {
        // Best effort: a lease left behind expires after its TTL anyway.
        let _ = client.lease_revoke(LeaseRevokeRequest { id: lease }).await;
    }
    report
}
