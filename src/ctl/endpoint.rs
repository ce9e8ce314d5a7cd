//! `keel ctl endpoint status|health` and `keel ctl check hashkv`: commands that visit endpoints
//! one by one (with `--cluster`, every member's client URLs), printing what etcdctl 3.5 prints
//! for `endpoint` (`check hashkv` has no etcdctl counterpart and follows `endpoint status`'s
//! style).
//!
//! Invariants: each endpoint is contacted separately and each failure is reported by endpoint;
//! the command exits non-zero if any endpoint failed; every retry loop has a fixed bound.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb as pb;
use serde_json::{Value, json};

use super::cluster::{alarm_name, status_of, target_endpoints};
use super::kv::{header_json, omit_empty, print_json};
use super::output::{WriteOut, human_bytes, print_rows};
use super::{Client, Global, status_error};

/// `--cluster`, for commands that visit endpoints one by one.
#[derive(Debug, Args)]
pub struct ClusterFlag {
    /// Use every member's client URLs (from the member list) instead of --endpoints.
    #[arg(long)]
    cluster: bool,
}

/// Endpoint commands.
#[derive(Debug, Subcommand)]
pub enum Endpoint {
    /// Print each endpoint's status: id, version, database size, leadership, Raft term and indexes.
    Status(ClusterFlag),
    /// Check each endpoint's health: a linearizable read must succeed and no alarm be raised.
    Health(ClusterFlag),
}

/// Consistency checks.
#[derive(Debug, Subcommand)]
pub enum Check {
    /// Compare every endpoint's HashKV at one revision; fail naming the members that differ from
    /// the majority.
    Hashkv(ClusterFlag),
}

/// Runs an endpoint command.
pub async fn endpoint(global: &Global, cmd: Endpoint) -> Result<()> {
    let client = Client::connect(global).await?;
    match cmd {
        Endpoint::Status(flag) => endpoint_status(&client, flag.cluster).await,
        Endpoint::Health(flag) => endpoint_health(&client, flag.cluster).await,
    }
}

async fn endpoint_status(client: &Client, cluster: bool) -> Result<()> {
    let endpoints = target_endpoints(client, cluster).await?;
    let mut statuses = Vec::new();
    let mut failed = false;
    for endpoint in &endpoints {
        match status_of(client, endpoint).await {
            Ok((_, resp)) => statuses.push((endpoint.clone(), resp)),
            Err(e) => {
                failed = true;
                eprintln!("Failed to get the status of endpoint {endpoint} ({e:#})");
            }
        }
    }
    let format = client.global().write_out;
    if format == WriteOut::Json {
        let list: Vec<Value> =
            statuses.iter().map(|(ep, s)| json!({ "Endpoint": ep, "Status": status_json(s) })).collect();
        print_json(&Value::Array(list));
    } else {
        let rows: Vec<Vec<String>> = statuses
            .iter()
            .map(|(endpoint, s)| {
                let id = s.header.as_ref().map_or(0, |h| h.member_id);
                vec![
                    endpoint.clone(),
                    format!("{id:x}"),
                    s.version.clone(),
                    human_bytes(u64::try_from(s.db_size).unwrap_or(0)),
                    (s.leader == id && id != 0).to_string(),
                    s.is_learner.to_string(),
                    s.raft_term.to_string(),
                    s.raft_index.to_string(),
                    s.raft_applied_index.to_string(),
                    s.errors.join(", "),
                ]
            })
            .collect();
        print_rows(
            format,
            &[
                "ENDPOINT",
                "ID",
                "VERSION",
                "DB SIZE",
                "IS LEADER",
                "IS LEARNER",
                "RAFT TERM",
                "RAFT INDEX",
                "RAFT APPLIED INDEX",
                "ERRORS",
            ],
            &rows,
        );
    }
    if failed {
        bail!("could not get the status of every endpoint");
    }
    Ok(())
}

fn status_json(s: &pb::StatusResponse) -> Value {
    omit_empty(json!({
        "header": header_json(s.header.as_ref()),
        "version": s.version,
        "dbSize": s.db_size,
        "leader": s.leader,
        "raftIndex": s.raft_index,
        "raftTerm": s.raft_term,
        "raftAppliedIndex": s.raft_applied_index,
        "errors": s.errors,
        "dbSizeInUse": s.db_size_in_use,
        "isLearner": s.is_learner,
    }))
}

/// One endpoint's health, as etcdctl's `epHealth`.
struct Health {
    endpoint: String,
    took: Duration,
    error: Option<String>,
}

/// etcdctl's health check: a linearizable read of key "health" (denied permission still proves the
/// read went through consensus), then no raised alarm.
async fn check_health(client: &Client, endpoint: &str) -> Health {
    let started = Instant::now();
    let result: Result<()> = async {
        let channel = client.channel(endpoint)?;
        let read = pb::kv_client::KvClient::new(channel.clone())
            .range(client.request(pb::RangeRequest { key: b"health".to_vec(), ..Default::default() }))
            .await;
        match read {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::PermissionDenied => {}
            Err(status) => return Err(status_error(status)),
        }
        let alarms = pb::maintenance_client::MaintenanceClient::new(channel)
            .alarm(client.request(pb::AlarmRequest::default()))
            .await
            .map_err(|_| anyhow!("Unable to fetch the alarm list"))?
            .into_inner()
            .alarms;
        if !alarms.is_empty() {
            let names: String = alarms.iter().map(|a| format!("{} ", alarm_name(a.alarm))).collect();
            bail!("Active Alarm(s): {names}");
        }
        Ok(())
    }
    .await;
    Health { endpoint: endpoint.to_string(), took: started.elapsed(), error: result.err().map(|e| format!("{e:#}")) }
}

async fn endpoint_health(client: &Client, cluster: bool) -> Result<()> {
    let endpoints = target_endpoints(client, cluster).await?;
    let mut results = Vec::new();
    for endpoint in &endpoints {
        results.push(check_health(client, endpoint).await);
    }
    let format = client.global().write_out;
    match format {
        WriteOut::Json => {
            let list: Vec<Value> = results
                .iter()
                .map(|h| {
                    let mut v =
                        json!({ "endpoint": h.endpoint, "health": h.error.is_none(), "took": go_duration(h.took) });
                    if let Some(error) = &h.error {
                        v["error"] = json!(error);
                    }
                    v
                })
                .collect();
            print_json(&Value::Array(list));
        }
        WriteOut::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|h| {
                    vec![
                        h.endpoint.clone(),
                        h.error.is_none().to_string(),
                        go_duration(h.took),
                        h.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_rows(format, &["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows);
        }
        WriteOut::Simple => {
            for h in &results {
                match &h.error {
                    None => println!(
                        "{} is healthy: successfully committed proposal: took = {}",
                        h.endpoint,
                        go_duration(h.took)
                    ),
                    Some(error) => eprintln!("{} is unhealthy: failed to commit proposal: {error}", h.endpoint),
                }
            }
        }
    }
    if results.iter().any(|h| h.error.is_some()) {
        bail!("unhealthy cluster");
    }
    Ok(())
}

/// A duration as Go's `time.Duration.String` writes it (`1.234567ms`, `850µs`, `2.5s`, `1m3s`).
fn go_duration(d: Duration) -> String {
    fn decimal(value: u128, unit: u128) -> String {
        let (whole, rest) = (value / unit, value % unit);
        if rest == 0 {
            return whole.to_string();
        }
        let digits = unit.ilog10() as usize;
        let text = format!("{whole}.{rest:0digits$}");
        text.trim_end_matches('0').to_string()
    }
    let ns = d.as_nanos();
    match ns {
        0 => "0s".to_string(),
        1..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{}µs", decimal(ns, 1_000)),
        1_000_000..=999_999_999 => format!("{}ms", decimal(ns, 1_000_000)),
        _ => {
            let (hours, minutes) = (ns / 3_600_000_000_000, ns / 60_000_000_000 % 60);
            let seconds = decimal(ns % 60_000_000_000, 1_000_000_000);
            match (hours, minutes) {
                (0, 0) => format!("{seconds}s"),
                (0, m) => format!("{m}m{seconds}s"),
                (h, m) => format!("{h}h{m}m{seconds}s"),
            }
        }
    }
}

/// How many times `check hashkv` starts over when a compaction races it.
const HASHKV_ROUNDS: usize = 3;

/// How many times one endpoint is asked again while it has not yet applied the chosen revision.
const FUTURE_RETRIES: usize = 50;

const FUTURE_PAUSE: Duration = Duration::from_millis(100);

/// One endpoint's HashKV.
struct Hashed {
    endpoint: String,
    resp: pb::HashKvResponse,
}

impl Hashed {
    fn member_id(&self) -> u64 {
        self.resp.header.as_ref().map_or(0, |h| h.member_id)
    }
}

/// HashKV at `revision` on `endpoint`, asking again (bounded) while the member lags behind it.
async fn hash_at(client: &Client, endpoint: &str, revision: i64) -> Result<pb::HashKvResponse, tonic::Status> {
    let channel = client.channel(endpoint).map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    let mut attempt = 0;
    loop {
        match maintenance.hash_kv(client.request(pb::HashKvRequest { revision })).await {
            Err(status)
                if status.code() == tonic::Code::OutOfRange
                    && status.message().contains("future")
                    && attempt < FUTURE_RETRIES =>
            {
                attempt += 1;
                tokio::time::sleep(FUTURE_PAUSE).await;
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

/// Runs a check.
pub async fn check(global: &Global, cmd: Check) -> Result<()> {
    let Check::Hashkv(flag) = cmd;
    let client = Client::connect(global).await?;
    let endpoints = target_endpoints(&client, flag.cluster).await?;
    let mut round = 0;
    let (revision, hashed, failures) = loop {
        round += 1;
        // The current revision, read linearizably: committed, so every member reaches it.
        let (_, channel) = client.any_endpoint().await?;
        let revision = pb::kv_client::KvClient::new(channel)
            .range(client.request(pb::RangeRequest { key: vec![0], count_only: true, ..Default::default() }))
            .await
            .map_err(status_error)?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        let mut hashed = Vec::new();
        let mut failures = Vec::new();
        let mut compacted = false;
        for endpoint in &endpoints {
            match hash_at(&client, endpoint, revision).await {
                Ok(resp) => hashed.push(Hashed { endpoint: endpoint.clone(), resp }),
                Err(status) => {
                    compacted |= status.message().contains("compacted");
                    failures.push(format!("{endpoint} ({})", status.message()));
                }
            }
        }
        let compactions_differ = hashed.windows(2).any(|w| w[0].resp.compact_revision != w[1].resp.compact_revision);
        if (compacted || compactions_differ) && round < HASHKV_ROUNDS {
            continue;
        }
        break (revision, hashed, failures);
    };
    let format = global.write_out;
    if format == WriteOut::Json {
        let list: Vec<Value> = hashed
            .iter()
            .map(|h| {
                json!({
                    "Endpoint": h.endpoint,
                    "HashKV": omit_empty(json!({
                        "header": header_json(h.resp.header.as_ref()),
                        "hash": h.resp.hash,
                        "compact_revision": h.resp.compact_revision,
                        "hash_revision": h.resp.hash_revision,
                    })),
                })
            })
            .collect();
        print_json(&Value::Array(list));
    } else {
        let rows: Vec<Vec<String>> = hashed
            .iter()
            .map(|h| {
                vec![
                    h.endpoint.clone(),
                    format!("{:x}", h.member_id()),
                    h.resp.hash_revision.to_string(),
                    h.resp.hash.to_string(),
                    h.resp.compact_revision.to_string(),
                ]
            })
            .collect();
        print_rows(format, &["ENDPOINT", "ID", "REVISION", "HASH", "COMPACT REVISION"], &rows);
    }
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(format!("could not hash every endpoint: {}", failures.join("; ")));
    }
    let hashes: Vec<(u64, String, u32)> =
        hashed.iter().map(|h| (h.member_id(), h.endpoint.clone(), h.resp.hash)).collect();
    if let Err(mismatch) = verdict(revision, &hashes) {
        problems.push(mismatch);
    }
    if !problems.is_empty() {
        bail!("check hashkv failed: {}", problems.join("; "));
    }
    Ok(())
}

/// Ok when every member reports the same hash; otherwise a message naming the members whose hash
/// differs from the majority (or every member, when no hash has a majority).
fn verdict(revision: i64, hashes: &[(u64, String, u32)]) -> Result<(), String> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, _, hash) in hashes {
        *counts.entry(*hash).or_default() += 1;
    }
    if counts.len() <= 1 {
        return Ok(());
    }
    let describe = |(id, endpoint, hash): &(u64, String, u32)| format!("member {id:x} ({endpoint}) has hash {hash}");
    let majority = counts.iter().find(|(_, n)| **n * 2 > hashes.len()).map(|(hash, _)| *hash);
    match majority {
        Some(majority) => {
            let odd: Vec<String> = hashes.iter().filter(|(_, _, h)| *h != majority).map(describe).collect();
            Err(format!("hash mismatch at revision {revision}: {} while the majority has {majority}", odd.join(", ")))
        }
        None => {
            let all: Vec<String> = hashes.iter().map(describe).collect();
            Err(format!("hash mismatch at revision {revision} and no hash has a majority: {}", all.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_nanos(2_146_251)), "2.146251ms");
        assert_eq!(go_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(63)), "1m3s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn hashkv_verdict_names_the_members_outside_the_majority() {
        let same = [(1, "a".to_string(), 7), (2, "b".to_string(), 7), (3, "c".to_string(), 7)];
        assert!(verdict(5, &same).is_ok());
        let one_off = [(1, "a".to_string(), 7), (0x2b, "b".to_string(), 9), (3, "c".to_string(), 7)];
        let message = verdict(5, &one_off).unwrap_err();
        assert!(message.contains("member 2b (b) has hash 9"), "{message}");
        assert!(!message.contains("member 1 "), "{message}");
        let split = [(1, "a".to_string(), 7), (2, "b".to_string(), 9)];
        assert!(verdict(5, &split).unwrap_err().contains("no hash has a majority"));
    }
}
