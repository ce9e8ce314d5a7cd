//! Key-value benchmarks: `put`, `range`, `txn-put` and `txn-mixed`, each request one RPC of the
//! etcd v3 KV service, driven by [`super::load`].
//!
//! Invariant: every request is built from its number alone (key, value, and for `txn-mixed`
//! whether it reads or writes), so two runs with the same flags send the same requests whichever
//! client sends them. Values are pseudo-random bytes, different for every put, so a store that
//! compresses its data gains nothing a real workload would not give it.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use tonic::transport::Channel;

use super::load::{LoadArgs, Report, Worker, drive};

/// etcd benchmark's `--consistency`: linearizable or serializable reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable (`l`): confirmed with the leader's quorum.
    #[value(name = "l")]
    Linearizable,
    /// Serializable (`s`): served from the member's own state.
    #[value(name = "s")]
    Serializable,
}

/// Flags of `range`.
#[derive(Debug, Args)]
pub struct RangeArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Read consistency: `l` (linearizable) or `s` (serializable).
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    consistency: Consistency,
}

/// Flags of `txn-put`.
#[derive(Debug, Args)]
pub struct TxnPutArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Puts per transaction.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=128))]
    txn_ops: u64,
}

/// Flags of `txn-mixed`.
#[derive(Debug, Args)]
pub struct TxnMixedArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Reads per write (etcd's `--rw-ratio`).
    #[arg(long, default_value_t = 1.0)]
    rw_ratio: f64,
    /// Read consistency: `l` (linearizable) or `s` (serializable).
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    consistency: Consistency,
}

/// What a KV client sends.
#[derive(Clone, Debug)]
enum Request {
    Put,
    Range(Consistency),
    TxnPut(u64),
    /// Reads for a fraction `reads` of requests, puts for the rest.
    Mixed {
        reads: f64,
        consistency: Consistency,
    },
}

/// One client of a KV benchmark.
struct KvWorker {
    client: KvClient<Channel>,
    request: Request,
    args: std::sync::Arc<KeyValues>,
}

/// The key and value settings, shared by the clients.
#[derive(Debug)]
struct KeyValues {
    key_space_size: u64,
    key_size: usize,
    sequential_keys: bool,
    val_size: usize,
}

impl KeyValues {
    /// The key request `op` uses.
    fn key(&self, op: u64) -> Vec<u8> {
        self.nth_key(op, 0)
    }

    /// The `n`th key after the one request `op` uses, wrapping around the key space: distinct
    /// for `n` below the key space's size, as the puts of one transaction must be.
    fn nth_key(&self, op: u64, n: u64) -> Vec<u8> {
        let first = super::load::key_index(op, self.key_space_size, self.sequential_keys);
        super::load::key_bytes((first + n) % self.key_space_size, self.key_size)
    }

    /// The value of the `n`th put of request `op`: `val_size` pseudo-random bytes.
    fn nth_value(&self, op: u64, n: u64) -> Vec<u8> {
        let seed = super::load::mix(op).wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut value = Vec::with_capacity(self.val_size + 8);
        let mut word = 0u64;
        while value.len() < self.val_size {
            word += 1;
            value.extend_from_slice(&super::load::mix(seed ^ word).to_le_bytes());
        }
        value.truncate(self.val_size);
        value
    }
}

impl Worker for KvWorker {
    async fn call(&mut self, op: u64) -> Result<()> {
        let key = self.args.key(op);
        let put = |key: Vec<u8>, n: u64| PutRequest { key, value: self.args.nth_value(op, n), ..Default::default() };
        let range = |key: Vec<u8>, consistency: Consistency| RangeRequest {
            key,
            serializable: consistency == Consistency::Serializable,
            ..Default::default()
        };
        match &self.request {
            Request::Put => {
                self.client.put(put(key, 0)).await.context("put")?;
            }
            Request::Range(consistency) => {
                self.client.range(range(key, *consistency)).await.context("range")?;
            }
            Request::TxnPut(ops) => {
                let success = (0..*ops)
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(put(self.args.nth_key(op, i), i))),
                    })
                    .collect();
                self.client.txn(TxnRequest { success, ..Default::default() }).await.context("txn")?;
            }
            Request::Mixed { reads, consistency } => {
                // Whether request `op` reads is a function of its number: the same requests in
                // every run.
                let reads_now = (super::load::mix(op ^ 0x5eed) % 1_000_000) as f64 / 1_000_000.0 < *reads;
                let request = if reads_now {
                    request_op::Request::RequestRange(range(key, *consistency))
                } else {
                    request_op::Request::RequestPut(put(key, 0))
                };
                let success = vec![RequestOp { request: Some(request) }];
                self.client.txn(TxnRequest { success, ..Default::default() }).await.context("txn")?;
            }
        }
        Ok(())
    }
}

async fn run(load: &LoadArgs, request: Request) -> Result<Report> {
    load.validate()?;
    let channels = load.channels().await?;
    let shared = std::sync::Arc::new(KeyValues {
        key_space_size: load.key_space_size,
        key_size: load.key_size,
        sequential_keys: load.sequential_keys,
        val_size: load.val_size,
    });
    let workers = (0..load.clients)
        .map(|c| KvWorker {
            client: KvClient::new(channels[c % channels.len()].clone()),
            request: request.clone(),
            args: shared.clone(),
        })
        .collect();
    drive(load, workers).await
}

/// The store's current revision, from the header of a count-only range.
pub(super) async fn current_revision(kv: &mut KvClient<Channel>) -> Result<i64> {
    let response = kv
        .range(RangeRequest { key: vec![0], count_only: true, ..Default::default() })
        .await
        .context("reading the revision")?;
    Ok(response.into_inner().header.map_or(0, |h| h.revision))
}

/// `keel bench put`.
pub async fn put(load: &LoadArgs) -> Result<Report> {
    run(load, Request::Put).await
}

/// `keel bench range`.
pub async fn range(args: &RangeArgs) -> Result<Report> {
    run(&args.load, Request::Range(args.consistency)).await
}

/// `keel bench txn-put`.
pub async fn txn_put(args: &TxnPutArgs) -> Result<Report> {
    if args.txn_ops > args.load.key_space_size {
        anyhow::bail!(
            "--txn-ops {} needs --key-space-size of at least {0}: a transaction may not put one key twice",
            args.txn_ops
        );
    }
    run(&args.load, Request::TxnPut(args.txn_ops)).await
}

/// `keel bench txn-mixed`.
pub async fn txn_mixed(args: &TxnMixedArgs) -> Result<Report> {
    if !(args.rw_ratio.is_finite() && args.rw_ratio >= 0.0) {
        anyhow::bail!("--rw-ratio must be a non-negative number of reads per write");
    }
    let reads = args.rw_ratio / (args.rw_ratio + 1.0);
    run(&args.load, Request::Mixed { reads, consistency: args.consistency }).await
}
