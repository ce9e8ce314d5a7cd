//! `keel ctl member|move-leader|compact|alarm`: cluster administration through the Cluster,
//! Maintenance and KV services, printing what etcdctl 3.4/3.5 prints for the same command, and the
//! endpoint lookups `endpoint.rs` shares (`target_endpoints`, `status_of`).
//!
//! Invariants:
//! - Member ids are hex on input and output (etcdctl's `%x`/`%16x`); a bad id or a malformed peer
//!   URL is refused before any request is sent.
//! - Endpoints are printed as URLs (`127.0.0.1:2379` is shown as `http://127.0.0.1:2379`), so
//!   output is the same with and without `--cluster`.
//! - `--cluster` replaces `--endpoints` with every member's client URLs from one member list.
//! - Every request carries the command timeout and every retry loop has a fixed bound, so each
//!   command ends in bounded time.
//! - `move-leader` is sent to the current leader only (found by Status), as the server requires.

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb as pb;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::kv::{header_json, omit_empty, print_json};
use super::output::{WriteOut, print_rows};
use super::{Client, Global, status_error};

/// Member commands.
#[derive(Debug, Subcommand)]
pub enum Member {
    /// List the members: ID, status, name, peer URLs, client URLs, is learner.
    List,
    /// Add a member (start it afterwards with the printed ETCD_* settings).
    Add {
        /// The new member's name (used in the printed ETCD_INITIAL_CLUSTER).
        name: String,
        /// The new member's peer URLs, comma-separated (http://host:port or https://host:port).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner (a non-voting member that can be promoted later).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member.
    Remove {
        /// The member's id (hex, as `member list` prints it).
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Promote a learner to a voting member.
    Promote {
        /// The learner's id (hex, as `member list` prints it).
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Change a member's peer URLs.
    Update {
        /// The member's id (hex, as `member list` prints it).
        #[arg(value_parser = parse_member_id)]
        id: u64,
        /// The member's new peer URLs, comma-separated (http://host:port or https://host:port).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

/// `move-leader`.
#[derive(Debug, Args)]
pub struct MoveLeader {
    /// The id (hex) of the voting member that should become leader.
    #[arg(value_parser = parse_member_id)]
    target: u64,
}

/// `compact`.
#[derive(Debug, Args)]
pub struct Compact {
    /// Discard the history before this revision.
    revision: i64,
    /// Wait until the history is physically removed before returning.
    #[arg(long)]
    physical: bool,
}

/// Alarm commands.
#[derive(Debug, Subcommand)]
pub enum Alarm {
    /// List the raised alarms, one line per alarm.
    List,
    /// Disarm every raised alarm.
    Disarm,
}

/// Parses a member id as etcdctl does (hex, unsigned 64 bits).
pub fn parse_member_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text, 16).map_err(|e| format!("bad member ID arg \"{text}\" ({e}), expecting ID in hex"))
}

/// Checks a peer URL's shape (`http://host:port` or `https://host:port`) without resolving it: the
/// host may only resolve where the new member runs.
fn check_peer_url(url: &str) -> Result<()> {
    let bad = |why: &str| anyhow!("bad peer URL \"{url}\": {why}");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("expected http://host:port or https://host:port"))?;
    let host_port = rest.strip_suffix('/').unwrap_or(rest);
    if host_port.contains('/') {
        return Err(bad("a peer URL has no path"));
    }
    let (host, port) = host_port.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    port.parse::<u16>().map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    Ok(())
}

/// Runs a member command.
pub async fn member(global: &Global, cmd: Member) -> Result<()> {
    if let Member::Add { peer_urls, .. } | Member::Update { peer_urls, .. } = &cmd {
        if peer_urls.iter().all(|u| u.is_empty()) {
            bail!("member peer urls not provided");
        }
        for url in peer_urls {
            check_peer_url(url)?;
        }
    }
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let mut cluster = pb::cluster_client::ClusterClient::new(channel);
    let json_out = global.write_out == WriteOut::Json;
    match cmd {
        Member::List => {
            let resp = cluster
                .member_list(client.request(pb::MemberListRequest { linearizable: false }))
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                print_json(&members_json(resp.header.as_ref(), None, &resp.members));
            } else {
                let rows: Vec<Vec<String>> = resp.members.iter().map(member_row).collect();
                print_rows(
                    global.write_out,
                    &["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"],
                    &rows,
                );
            }
        }
        Member::Add { name, peer_urls, learner } => {
            let resp = cluster
                .member_add(client.request(pb::MemberAddRequest { peer_ur_ls: peer_urls.clone(), is_learner: learner }))
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                print_json(&members_json(resp.header.as_ref(), resp.member.as_ref(), &resp.members));
                return Ok(());
            }
            let added = resp.member.ok_or_else(|| anyhow!("the server did not return the added member"))?;
            let cluster_id = resp.header.map_or(0, |h| h.cluster_id);
            let as_learner = if added.is_learner { " as learner " } else { " " };
            println!("Member {:16x} added{as_learner}to cluster {cluster_id:16x}", added.id);
            let mut initial = Vec::new();
            for m in &resp.members {
                let member_name = if m.id == added.id { name.as_str() } else { m.name.as_str() };
                initial.extend(m.peer_ur_ls.iter().map(|u| format!("{member_name}={u}")));
            }
            println!();
            println!("ETCD_NAME={}", go_quote(&name));
            println!("ETCD_INITIAL_CLUSTER={}", go_quote(&initial.join(",")));
            println!("ETCD_INITIAL_ADVERTISE_PEER_URLS={}", go_quote(&peer_urls.join(",")));
            println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
        }
        Member::Remove { id } => {
            let resp = cluster
                .member_remove(client.request(pb::MemberRemoveRequest { id }))
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                print_json(&members_json(resp.header.as_ref(), None, &resp.members));
            } else {
                println!("Member {id:16x} removed from cluster {:16x}", resp.header.map_or(0, |h| h.cluster_id));
            }
        }
        Member::Promote { id } => {
            let resp = cluster
                .member_promote(client.request(pb::MemberPromoteRequest { id }))
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                print_json(&members_json(resp.header.as_ref(), None, &resp.members));
            } else {
                println!("Member {id:16x} promoted in cluster {:16x}", resp.header.map_or(0, |h| h.cluster_id));
            }
        }
        Member::Update { id, peer_urls } => {
            let resp = cluster
                .member_update(client.request(pb::MemberUpdateRequest { id, peer_ur_ls: peer_urls }))
                .await
                .map_err(status_error)?
                .into_inner();
            if json_out {
                print_json(&members_json(resp.header.as_ref(), None, &resp.members));
            } else {
                println!("Member {id:16x} updated in cluster {:16x}", resp.header.map_or(0, |h| h.cluster_id));
            }
        }
    }
    Ok(())
}

/// etcdctl's member row: id, started/unstarted (a member that never started has no name yet),
/// name, peer URLs, client URLs, is learner.
fn member_row(m: &pb::Member) -> Vec<String> {
    vec![
        format!("{:x}", m.id),
        if m.name.is_empty() { "unstarted" } else { "started" }.to_string(),
        m.name.clone(),
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
        m.is_learner.to_string(),
    ]
}

fn member_json(m: &pb::Member) -> Value {
    omit_empty(json!({
        "ID": m.id,
        "name": m.name,
        "peerURLs": m.peer_ur_ls,
        "clientURLs": m.client_ur_ls,
        "isLearner": m.is_learner,
    }))
}

/// A Cluster-service response as etcdctl's JSON: header, the added member (for add), members.
fn members_json(header: Option<&pb::ResponseHeader>, added: Option<&pb::Member>, members: &[pb::Member]) -> Value {
    let members: Vec<Value> = members.iter().map(member_json).collect();
    omit_empty(json!({
        "header": header_json(header),
        "member": added.map(member_json),
        "members": members,
    }))
}

/// A string quoted like Go's `%q` for the printable ASCII that names and URLs are made of.
fn go_quote(text: &str) -> String {
    format!("{text:?}")
}

/// The endpoints to visit, as URLs: `--endpoints`, or with `--cluster` every member's client URLs.
pub(super) async fn target_endpoints(client: &Client, cluster: bool) -> Result<Vec<String>> {
    if !cluster {
        return Ok(client.endpoint_urls());
    }
    let members = member_list(client)
        .await
        .map_err(|e| anyhow!("failed to fetch endpoints from the cluster's member list: {e:#}"))?;
    let urls: Vec<String> = members.into_iter().flat_map(|m| m.client_ur_ls).collect();
    if urls.is_empty() {
        bail!("no member of the cluster has published client URLs");
    }
    Ok(urls)
}

async fn member_list(client: &Client) -> Result<Vec<pb::Member>> {
    let (_, channel) = client.any_endpoint().await?;
    Ok(pb::cluster_client::ClusterClient::new(channel)
        .member_list(client.request(pb::MemberListRequest { linearizable: false }))
        .await
        .map_err(status_error)?
        .into_inner()
        .members)
}

/// One endpoint's Status, with the error naming the endpoint.
pub(super) async fn status_of(client: &Client, endpoint: &str) -> Result<(Channel, pb::StatusResponse)> {
    let channel = client.channel(endpoint)?;
    let resp = pb::maintenance_client::MaintenanceClient::new(channel.clone())
        .status(client.request(pb::StatusRequest {}))
        .await
        .map_err(status_error)?
        .into_inner();
    Ok((channel, resp))
}

/// Runs `move-leader`: finds the leader by Status (the given endpoints first, then the leader's
/// client URLs from the member list) and asks it to transfer leadership to the target.
pub async fn move_leader(global: &Global, cmd: MoveLeader) -> Result<()> {
    let client = Client::connect(global).await?;
    let mut leader = None;
    let mut named_leader = 0;
    let mut errors = Vec::new();
    for endpoint in &client.endpoint_urls() {
        match status_of(&client, endpoint).await {
            Ok((channel, status)) => {
                let id = status.header.as_ref().map_or(0, |h| h.member_id);
                if id != 0 && status.leader == id {
                    leader = Some((id, channel));
                    break;
                }
                if named_leader == 0 {
                    named_leader = status.leader;
                }
            }
            Err(e) => errors.push(format!("{endpoint}: {e:#}")),
        }
    }
    if leader.is_none() && named_leader != 0 {
        // None of the given endpoints leads: reach the leader through its published client URLs.
        let members = member_list(&client).await?;
        let urls = members.into_iter().find(|m| m.id == named_leader).map(|m| m.client_ur_ls).unwrap_or_default();
        for url in &urls {
            match status_of(&client, url).await {
                Ok((channel, status)) if status.header.as_ref().map_or(0, |h| h.member_id) == status.leader => {
                    leader = Some((status.leader, channel));
                    break;
                }
                Ok(_) => errors.push(format!("{url}: no longer the leader")),
                Err(e) => errors.push(format!("{url}: {e:#}")),
            }
        }
    }
    let Some((leader_id, channel)) = leader else {
        let detail = if errors.is_empty() { String::new() } else { format!(" ({})", errors.join("; ")) };
        bail!("no leader endpoint given at {:?} and none found through the member list{detail}", global.endpoints);
    };
    let resp = pb::maintenance_client::MaintenanceClient::new(channel)
        .move_leader(client.request(pb::MoveLeaderRequest { target_id: cmd.target }))
        .await
        .map_err(status_error)?
        .into_inner();
    if global.write_out == WriteOut::Json {
        print_json(&json!({ "header": header_json(resp.header.as_ref()) }));
    } else {
        println!("Leadership transferred from {leader_id:x} to {:x}", cmd.target);
    }
    Ok(())
}

/// Runs `compact`.
pub async fn compact(global: &Global, cmd: Compact) -> Result<()> {
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    pb::kv_client::KvClient::new(channel)
        .compact(client.request(pb::CompactionRequest { revision: cmd.revision, physical: cmd.physical }))
        .await
        .map_err(status_error)?;
    println!("compacted revision {}", cmd.revision);
    Ok(())
}

pub(super) fn alarm_name(alarm: i32) -> &'static str {
    pb::AlarmType::try_from(alarm).map_or("UNKNOWN", |a| a.as_str_name())
}

/// Runs an alarm command.
pub async fn alarm(global: &Global, cmd: Alarm) -> Result<()> {
    let client = Client::connect(global).await?;
    let (_, channel) = client.any_endpoint().await?;
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    let listed =
        maintenance.alarm(client.request(pb::AlarmRequest::default())).await.map_err(status_error)?.into_inner();
    let (header, alarms) = match cmd {
        Alarm::List => (listed.header, listed.alarms),
        Alarm::Disarm => {
            let mut header = listed.header;
            let mut disarmed = Vec::new();
            for raised in &listed.alarms {
                let request = pb::AlarmRequest {
                    action: pb::alarm_request::AlarmAction::Deactivate as i32,
                    member_id: raised.member_id,
                    alarm: raised.alarm,
                };
                let resp = maintenance.alarm(client.request(request)).await.map_err(|status| {
                    let what = format!("disarming alarm {} of member {:x}", alarm_name(raised.alarm), raised.member_id);
                    if status.code() == tonic::Code::Unimplemented {
                        anyhow!("{what}: the server does not support disarming alarms ({})", status.message())
                    } else {
                        anyhow!("{what}: {}", status.message())
                    }
                })?;
                let resp = resp.into_inner();
                header = resp.header;
                disarmed.extend(resp.alarms);
            }
            (header, disarmed)
        }
    };
    if global.write_out == WriteOut::Json {
        let list: Vec<Value> =
            alarms.iter().map(|a| omit_empty(json!({ "memberID": a.member_id, "alarm": a.alarm }))).collect();
        print_json(&omit_empty(json!({ "header": header_json(header.as_ref()), "alarms": list })));
    } else {
        for a in &alarms {
            println!("memberID:{} alarm:{}", a.member_id, alarm_name(a.alarm));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_hex() {
        assert_eq!(parse_member_id("8e9e05c52164694d"), Ok(0x8e9e_05c5_2164_694d));
        assert!(parse_member_id("not-hex").unwrap_err().contains("expecting ID in hex"));
    }

    #[test]
    fn peer_urls_need_a_scheme_host_and_port() {
        assert!(check_peer_url("http://127.0.0.1:2380").is_ok());
        assert!(check_peer_url("https://node-4.example:2380/").is_ok());
        assert!(check_peer_url("127.0.0.1:2380").is_err());
        assert!(check_peer_url("http://127.0.0.1").is_err());
        assert!(check_peer_url("http://:2380").is_err());
        assert!(check_peer_url("http://h:2380/path").is_err());
    }
}
