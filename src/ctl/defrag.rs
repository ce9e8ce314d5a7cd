//! `keel ctl defrag [--cluster]`: asks each endpoint (with `--cluster`, every member's client
//! URLs from the member list) to defragment its storage, printing what etcdctl 3.4 prints:
//! `Finished defragmenting etcd member[URL]`, or `Failed to defragment etcd member[URL] (error)`
//! on standard error.
//!
//! Keel's defragmentation is online (writes go on during it), so unlike with etcd there is no need
//! to defragment members one at a time out of service; the members are still visited one after
//! the other, so at most one of them spends its disk bandwidth on it at any moment.
//!
//! Invariants: each member is asked separately and each failure is reported by endpoint; the
//! command exits non-zero if any member failed. Each request carries the command timeout, as
//! etcdctl's does: a large store needs a larger `--command-timeout`, and a member whose request
//! timed out still finishes the defragmentation it started.

use anyhow::{Result, bail};
use clap::Args;
use keel_proto::etcdserverpb as pb;

use super::cluster::target_endpoints;
use super::{Client, Global, status_error};

/// `defrag`.
#[derive(Debug, Args)]
pub struct Defrag {
    /// Defragment every member (their client URLs from the member list) instead of --endpoints.
    #[arg(long)]
    cluster: bool,
}

/// Runs `defrag`.
pub async fn run(global: &Global, cmd: Defrag) -> Result<()> {
    let client = Client::connect(global).await?;
    let endpoints = target_endpoints(&client, cmd.cluster).await?;
    let mut failures = 0;
    for endpoint in &endpoints {
        match defragment(&client, endpoint).await {
            Ok(()) => println!("Finished defragmenting etcd member[{endpoint}]"),
            Err(e) => {
                failures += 1;
                eprintln!("Failed to defragment etcd member[{endpoint}] ({e:#})");
            }
        }
    }
    if failures > 0 {
        bail!("failed to defragment {failures} of {} member(s)", endpoints.len());
    }
    Ok(())
}

async fn defragment(client: &Client, endpoint: &str) -> Result<()> {
    let channel = client.channel(endpoint)?;
    pb::maintenance_client::MaintenanceClient::new(channel)
        .defragment(client.request(pb::DefragmentRequest {}))
        .await
        .map_err(status_error)?;
    Ok(())
}
