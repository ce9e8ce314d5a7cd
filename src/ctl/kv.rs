//! `keel ctl get|put|del|watch|lease`: debugging reads and writes through the KV, Watch and Lease
//! services, printing what etcdctl 3.4/3.5 prints (`-w simple`: key line then value line; `-w json`:
//! the response's fields as etcdctl's JSON printer names them; `-w table` falls back to simple, as
//! in etcdctl, for commands without a table).
//!
//! Invariants: every unary request carries the command timeout; the two long-running commands
//! (`watch`, `lease keep-alive`) end on Ctrl-C (exit 0), when the server ends their stream, or —
//! for keep-alive — when the lease is gone; each wait inside them is bounded. Lease ids are hex
//! (`%016x`) on input and output, like etcdctl's.
//!
//! The JSON helpers here (`header_json`, `omit_empty`, `base64`) are shared with `cluster.rs`: Go's
//! `encoding/json` with protobuf's `omitempty` tags drops zero numbers, `false`, empty strings and
//! empty lists, and writes bytes as standard base64; these helpers do the same.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb;
use serde_json::{Map, Value, json};
use tokio_stream::wrappers::ReceiverStream;

use super::output::WriteOut;
use super::{Client, Global, status_error};

/// `get`.
#[derive(Debug, Args)]
pub struct Get {
    /// The key (or, with --prefix, the prefix; with --from-key, the first key).
    // Not `key`: that id is the global --key (the TLS key file).
    #[arg(id = "KEY_ARG", value_name = "KEY")]
    key: String,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<String>,
    /// Get every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Get every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
    /// Read at this revision (0: the latest).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Print keys only (each followed by an empty value line, as etcdctl does).
    #[arg(long)]
    keys_only: bool,
    /// Print values only.
    #[arg(long)]
    print_value_only: bool,
    /// Read consistency: `l` (linearizable) or `s` (serializable, answered locally).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    consistency: String,
}

/// `put`.
#[derive(Debug, Args)]
pub struct Put {
    /// The key.
    // Not `key`: that id is the global --key (the TLS key file).
    #[arg(id = "KEY_ARG", value_name = "KEY")]
    key: String,
    /// The value (read from standard input when omitted).
    value: Option<String>,
    /// Attach the key to this lease (hex id).
    #[arg(long, value_parser = parse_lease_id, default_value = "0")]
    lease: i64,
    /// Print the previous key-value.
    #[arg(long)]
    prev_kv: bool,
}

/// `del`.
#[derive(Debug, Args)]
pub struct Del {
    /// The key (or, with --prefix, the prefix; with --from-key, the first key).
    // Not `key`: that id is the global --key (the TLS key file).
    #[arg(id = "KEY_ARG", value_name = "KEY")]
    key: String,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<String>,
    /// Delete every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Delete every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
    /// Print the deleted key-values.
    #[arg(long)]
    prev_kv: bool,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct Watch {
    /// The key (or, with --prefix, the prefix).
    // Not `key`: that id is the global --key (the TLS key file).
    #[arg(id = "KEY_ARG", value_name = "KEY")]
    key: String,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<String>,
    /// Watch every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Start from this revision (inclusive; 0: from the next change).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Print each event's previous key-value too.
    #[arg(long)]
    prev_kv: bool,
}

/// Lease commands.
#[derive(Debug, Subcommand)]
pub enum Lease {
    /// Grant a lease with a TTL in seconds; prints its hex id.
    Grant {
        /// Time to live, in seconds.
        ttl: i64,
    },
    /// Revoke a lease, deleting every key attached to it.
    Revoke {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Show a lease's granted and remaining TTL.
    Timetolive {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// List every live lease.
    List,
    /// Keep a lease alive, renewing it every third of its TTL, until Ctrl-C or it is gone.
    KeepAlive {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
}

/// Parses a lease id as etcdctl does (hex, signed 64 bits).
pub fn parse_lease_id(text: &str) -> Result<i64, String> {
    i64::from_str_radix(text, 16).map_err(|e| format!("bad lease ID \"{text}\" ({e}), expecting ID in hex"))
}

/// The range end for `--prefix` (etcd's `GetPrefixRangeEnd`): the prefix with its last byte below
/// 0xff incremented and what follows dropped; `\0` (every key) when there is no such byte.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `(key, range_end)` for KEY, an optional RANGE_END, `--prefix` and `--from-key`, with etcdctl's
/// argument errors; `command` names the command in the empty-key error.
fn key_range(
    command: &str,
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>)> {
    key_range_bytes(key.as_bytes().to_vec(), range_end.map(|e| e.as_bytes().to_vec()), prefix, from_key)
        .map_err(|why| anyhow::anyhow!("{command}: {why}"))
}

/// [`key_range`] on bytes (`txn` request lines carry keys that need not be UTF-8): an empty prefix
/// or from-key means every key, as etcdctl computes it.
pub(super) fn key_range_bytes(
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    prefix: bool,
    from_key: bool,
) -> std::result::Result<(Vec<u8>, Vec<u8>), String> {
    if prefix && from_key {
        return Err("`--prefix` and `--from-key` cannot be set at the same time, choose one".into());
    }
    if range_end.is_some() && prefix {
        return Err("too many arguments, only accept one argument when `--prefix` is set".into());
    }
    if range_end.is_some() && from_key {
        return Err("too many arguments, only accept one argument when `--from-key` is set".into());
    }
    if prefix {
        return Ok(if key.is_empty() {
            (vec![0], vec![0])
        } else {
            let end = prefix_end(&key);
            (key, end)
        });
    }
    if from_key {
        return Ok((if key.is_empty() { vec![0] } else { key }, vec![0]));
    }
    if key.is_empty() {
        // The server would refuse it ("key is not provided"); refusing here sends nothing.
        return Err("the key must not be empty".into());
    }
    Ok((key, range_end.unwrap_or_default()))
}

/// Runs `get`.
pub async fn get(global: &Global, cmd: Get) -> Result<()> {
    let (key, range_end) = key_range("get", &cmd.key, cmd.range_end.as_deref(), cmd.prefix, cmd.from_key)?;
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let resp = pb::kv_client::KvClient::new(channel)
        .range(client.request(pb::RangeRequest {
            key,
            range_end,
            limit: cmd.limit,
            revision: cmd.rev,
            serializable: cmd.consistency == "s",
            keys_only: cmd.keys_only,
            ..Default::default()
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    if global.write_out == WriteOut::Json {
        let kvs: Vec<Value> = resp.kvs.iter().map(kv_json).collect();
        print_json(&omit_empty(json!({
            "header": header_json(resp.header.as_ref()),
            "kvs": kvs,
            "more": resp.more,
            "count": resp.count,
        })));
        return Ok(());
    }
    for kv in &resp.kvs {
        print_kv(kv, cmd.print_value_only);
    }
    Ok(())
}

/// Runs `put`.
pub async fn put(global: &Global, cmd: Put) -> Result<()> {
    if cmd.key.is_empty() {
        bail!("put: the key must not be empty");
    }
    let value = match cmd.value {
        Some(value) => value,
        None => std::io::read_to_string(std::io::stdin()).context("put: reading the value from standard input")?,
    };
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let resp = pb::kv_client::KvClient::new(channel)
        .put(client.request(pb::PutRequest {
            key: cmd.key.into_bytes(),
            value: value.into_bytes(),
            lease: cmd.lease,
            prev_kv: cmd.prev_kv,
            ..Default::default()
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    if global.write_out == WriteOut::Json {
        print_json(&omit_empty(json!({
            "header": header_json(resp.header.as_ref()),
            "prev_kv": resp.prev_kv.as_ref().map(kv_json),
        })));
        return Ok(());
    }
    println!("OK");
    if let Some(prev) = &resp.prev_kv {
        print_kv(prev, false);
    }
    Ok(())
}

/// Runs `del`.
pub async fn del(global: &Global, cmd: Del) -> Result<()> {
    let (key, range_end) = key_range("del", &cmd.key, cmd.range_end.as_deref(), cmd.prefix, cmd.from_key)?;
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let resp = pb::kv_client::KvClient::new(channel)
        .delete_range(client.request(pb::DeleteRangeRequest { key, range_end, prev_kv: cmd.prev_kv }))
        .await
        .map_err(status_error)?
        .into_inner();
    if global.write_out == WriteOut::Json {
        let prev: Vec<Value> = resp.prev_kvs.iter().map(kv_json).collect();
        print_json(&omit_empty(json!({
            "header": header_json(resp.header.as_ref()),
            "deleted": resp.deleted,
            "prev_kvs": prev,
        })));
        return Ok(());
    }
    println!("{}", resp.deleted);
    for kv in &resp.prev_kvs {
        print_kv(kv, false);
    }
    Ok(())
}

/// Runs `watch` until Ctrl-C (success) or the server ends or cancels the watch (an error, as in
/// etcdctl).
pub async fn watch(global: &Global, cmd: Watch) -> Result<()> {
    let (key, range_end) = key_range("watch", &cmd.key, cmd.range_end.as_deref(), cmd.prefix, false)?;
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    // The request side stays open (the sender lives until we return); closing it would end the
    // watch on the server.
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    let create =
        pb::WatchCreateRequest { key, range_end, start_revision: cmd.rev, prev_kv: cmd.prev_kv, ..Default::default() };
    requests
        .send(pb::WatchRequest { request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)) })
        .await
        .context("queueing the watch request")?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut watcher = pb::watch_client::WatchClient::new(channel);
    let mut responses = tokio::select! {
        _ = &mut interrupted => return Ok(()),
        started = watcher.watch(client.stream_request(ReceiverStream::new(rx))) => {
            started.map_err(status_error)?.into_inner()
        }
    };
    loop {
        let next = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            next = responses.message() => next,
        };
        let Some(resp) = next.map_err(status_error)? else { break };
        if resp.created && resp.events.is_empty() && !resp.canceled {
            // etcdctl does not show the creation notice either.
            continue;
        }
        if global.write_out == WriteOut::Json {
            let events: Vec<Value> = resp.events.iter().map(event_json).collect();
            print_json(&json!({
                "Header": header_json(resp.header.as_ref()),
                "Events": events,
                "CompactRevision": resp.compact_revision,
                "Canceled": resp.canceled,
                "Created": resp.created,
            }));
        } else {
            for event in &resp.events {
                println!("{}", if event.r#type == mvccpb::event::EventType::Delete as i32 { "DELETE" } else { "PUT" });
                if let Some(prev) = &event.prev_kv {
                    print_kv(prev, false);
                }
                if let Some(kv) = &event.kv {
                    print_kv(kv, false);
                }
            }
        }
        if resp.canceled {
            let reason = if !resp.cancel_reason.is_empty() {
                resp.cancel_reason.clone()
            } else if resp.compact_revision > 0 {
                format!(
                    "etcdserver: mvcc: required revision has been compacted (compact revision {})",
                    resp.compact_revision
                )
            } else {
                "no reason given".to_string()
            };
            println!("watch was canceled ({reason})");
            break;
        }
    }
    drop(requests);
    bail!("watch is canceled by the server")
}

/// Runs a lease command.
pub async fn lease(global: &Global, cmd: Lease) -> Result<()> {
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let mut leases = pb::lease_client::LeaseClient::new(channel);
    let json_out = global.write_out == WriteOut::Json;
    match cmd {
        Lease::Grant { ttl } => {
            let resp = leases
                .lease_grant(client.request(pb::LeaseGrantRequest { ttl, id: 0 }))
                .await
                .map_err(|s| anyhow::anyhow!("failed to grant lease ({})", s.message()))?
                .into_inner();
            if !resp.error.is_empty() {
                bail!("failed to grant lease ({})", resp.error);
            }
            if json_out {
                let mut out = flat_header(resp.header.as_ref());
                out.insert("ID".into(), json!(resp.id));
                out.insert("TTL".into(), json!(resp.ttl));
                out.insert("Error".into(), json!(resp.error));
                print_json(&Value::Object(out));
            } else {
                println!("lease {:016x} granted with TTL({}s)", resp.id, resp.ttl);
            }
        }
        Lease::Revoke { id } => {
            let resp = leases
                .lease_revoke(client.request(pb::LeaseRevokeRequest { id }))
                .await
                .map_err(|s| anyhow::anyhow!("failed to revoke lease ({})", s.message()))?
                .into_inner();
            if json_out {
                print_json(&json!({ "header": header_json(resp.header.as_ref()) }));
            } else {
                println!("lease {id:016x} revoked");
            }
        }
        Lease::Timetolive { id, keys } => {
            let resp = leases
                .lease_time_to_live(client.request(pb::LeaseTimeToLiveRequest { id, keys }))
                .await
                .map_err(status_error)?
                .into_inner();
            let names: Vec<String> = resp.keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
            if json_out {
                let mut out = flat_header(resp.header.as_ref());
                out.insert("id".into(), json!(resp.id));
                out.insert("ttl".into(), json!(resp.ttl));
                out.insert("granted-ttl".into(), json!(resp.granted_ttl));
                let encoded: Vec<String> = resp.keys.iter().map(|k| base64(k)).collect();
                out.insert("keys".into(), if encoded.is_empty() { Value::Null } else { json!(encoded) });
                print_json(&Value::Object(out));
            } else if resp.granted_ttl == 0 && resp.ttl == -1 {
                println!("lease {id:016x} already expired");
            } else {
                let mut line =
                    format!("lease {:016x} granted with TTL({}s), remaining({}s)", resp.id, resp.granted_ttl, resp.ttl);
                if keys {
                    line += &format!(", attached keys([{}])", names.join(" "));
                }
                println!("{line}");
            }
        }
        Lease::List => {
            let resp = leases
                .lease_leases(client.request(pb::LeaseLeasesRequest {}))
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                let mut out = flat_header(resp.header.as_ref());
                let ids: Vec<Value> = resp.leases.iter().map(|l| json!({ "id": l.id })).collect();
                out.insert("leases".into(), json!(ids));
                print_json(&Value::Object(out));
            } else {
                println!("found {} leases", resp.leases.len());
                for lease in &resp.leases {
                    println!("{:016x}", lease.id);
                }
            }
        }
        Lease::KeepAlive { id, once } => keep_alive(&client, leases, id, once, json_out).await?,
    }
    Ok(())
}

/// Renews lease `id` every third of its TTL (at least every second) until Ctrl-C, the stream's end
/// or the lease's end; with `once`, renews once.
async fn keep_alive(
    client: &Client,
    mut leases: pb::lease_client::LeaseClient<tonic::transport::Channel>,
    id: i64,
    once: bool,
    json_out: bool,
) -> Result<()> {
    let timeout = client.global().command_timeout;
    let (requests, rx) = tokio::sync::mpsc::channel(1);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut responses = tokio::select! {
        _ = &mut interrupted => return Ok(()),
        started = tokio::time::timeout(timeout, leases.lease_keep_alive(client.stream_request(ReceiverStream::new(rx)))) => {
            started.map_err(|_| anyhow::anyhow!("no keep-alive stream within {timeout:?}"))?.map_err(status_error)?.into_inner()
        }
    };
    loop {
        requests.send(pb::LeaseKeepAliveRequest { id }).await.context("the keep-alive stream closed")?;
        let reply = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            reply = tokio::time::timeout(timeout, responses.message()) => reply,
        };
        let reply =
            reply.map_err(|_| anyhow::anyhow!("no keep-alive response within {timeout:?}"))?.map_err(status_error)?;
        let Some(resp) = reply.filter(|r| r.ttl > 0) else {
            if once {
                bail!("etcdserver: requested lease not found");
            }
            break;
        };
        if json_out {
            let mut out = flat_header(resp.header.as_ref());
            out.insert("ID".into(), json!(resp.id));
            out.insert("TTL".into(), json!(resp.ttl));
            print_json(&Value::Object(out));
        } else {
            println!("lease {:016x} keepalived with TTL({})", resp.id, resp.ttl);
        }
        if once {
            return Ok(());
        }
        let pause = Duration::from_secs(u64::try_from(resp.ttl / 3).unwrap_or(0).max(1));
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
    if !json_out {
        println!("lease {id:016x} expired or revoked.");
    }
    Ok(())
}

/// Prints a key line (unless `value_only`) and a value line, as etcdctl's `printKV`.
pub(super) fn print_kv(kv: &mvccpb::KeyValue, value_only: bool) {
    if !value_only {
        println!("{}", String::from_utf8_lossy(&kv.key));
    }
    println!("{}", String::from_utf8_lossy(&kv.value));
}

/// Prints one JSON value on one line, as etcdctl's JSON printer does.
pub(super) fn print_json(value: &Value) {
    println!("{value}");
}

/// Drops an object's zero, `false`, empty and null fields (Go's `omitempty`); nested objects stay.
pub(super) fn omit_empty(value: Value) -> Value {
    let Value::Object(map) = value else { return value };
    let kept = map
        .into_iter()
        .filter(|(_, v)| match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(_) => true,
        })
        .collect();
    Value::Object(kept)
}

/// A response header as etcdctl's JSON (`cluster_id`, `member_id`, `revision`, `raft_term`).
pub(super) fn header_json(header: Option<&pb::ResponseHeader>) -> Value {
    Value::Object(flat_header(header))
}

/// The header's fields as a map, for clientv3 responses that embed the header.
fn flat_header(header: Option<&pb::ResponseHeader>) -> Map<String, Value> {
    let header = header.cloned().unwrap_or_default();
    let Value::Object(map) = omit_empty(json!({
        "cluster_id": header.cluster_id,
        "member_id": header.member_id,
        "revision": header.revision,
        "raft_term": header.raft_term,
    })) else {
        unreachable!("omit_empty keeps objects")
    };
    map
}

/// A key-value as etcd's JSON (`mvccpb.KeyValue`: bytes in base64).
pub(super) fn kv_json(kv: &mvccpb::KeyValue) -> Value {
    omit_empty(json!({
        "key": base64(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "value": base64(&kv.value),
        "lease": kv.lease,
    }))
}

/// A watch event as etcd's JSON (`type` omitted for PUT, 1 for DELETE).
fn event_json(event: &mvccpb::Event) -> Value {
    omit_empty(json!({
        "type": event.r#type,
        "kv": event.kv.as_ref().map(kv_json),
        "prev_kv": event.prev_kv.as_ref().map(kv_json),
    }))
}

/// Standard base64 with padding (how Go's `encoding/json` writes `[]byte`).
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// `keel ctl`'s arguments as `main` assembles them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        command: super::super::Ctl,
    }

    #[test]
    fn arguments_do_not_collide_with_the_global_flags() {
        Cli::command().debug_assert();
        for args in [
            &["ctl", "--key", "tls.key", "get", "k", "--prefix"][..],
            &["ctl", "put", "k", "v", "--lease", "1f"],
            &["ctl", "del", "k", "l"],
            &["ctl", "watch", "k", "--rev", "3"],
            &["ctl", "lease", "timetolive", "1f", "--keys"],
            &["ctl", "member", "add", "n4", "--peer-urls", "http://h:2380,http://h:2381"],
            &["ctl", "check", "hashkv", "--cluster"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(cli.global.key.is_none() || args.contains(&"--key"), "{args:?}");
        }
    }

    #[test]
    fn prefix_ends_increment_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn key_ranges_follow_etcdctl_flags() {
        assert_eq!(key_range("get", "a", None, false, false).unwrap(), (b"a".to_vec(), vec![]));
        assert_eq!(key_range("get", "a", Some("c"), false, false).unwrap(), (b"a".to_vec(), b"c".to_vec()));
        assert_eq!(key_range("get", "a", None, true, false).unwrap(), (b"a".to_vec(), b"b".to_vec()));
        assert_eq!(key_range("get", "", None, true, false).unwrap(), (vec![0], vec![0]));
        assert_eq!(key_range("get", "a", None, false, true).unwrap(), (b"a".to_vec(), vec![0]));
        assert!(key_range("get", "a", None, true, true).is_err());
        assert!(key_range("get", "a", Some("b"), true, false).is_err());
    }

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!(parse_lease_id("694d77aa9e38260f"), Ok(0x694d_77aa_9e38_260f));
        assert!(parse_lease_id("xyz").unwrap_err().contains("expecting ID in hex"));
    }

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn json_omits_empty_fields_like_go() {
        let kv = mvccpb::KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            lease: 0,
        };
        assert_eq!(
            kv_json(&kv).to_string(),
            r#"{"key":"aw==","create_revision":2,"mod_revision":2,"version":1,"value":"dg=="}"#
        );
    }
}
