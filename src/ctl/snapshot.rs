//! `keel ctl snapshot save|status|restore`: backups of the store as single files (and, for
//! `status` and `restore --to-revision`, the backup directories `backup --follow` keeps).
//!
//! Invariants: `save` streams into `FILE.part`, fsyncs it, verifies it end to end (record count and
//! checksum) and only then renames it to `FILE`, so a file with the final name is always a complete
//! snapshot; an existing `FILE` is never overwritten. `status` and `restore` check the whole file
//! before reporting or writing anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb as pb;
use keel_store::backup::SnapshotSummary;

use super::output::{WriteOut, human_bytes, print_rows};
use super::{Client, Global, status_error};

/// Snapshot commands.
#[derive(Debug, Subcommand)]
pub enum Snapshot {
    /// Save a snapshot of a live member to FILE (streamed; the member keeps serving). Needs exactly
    /// one endpoint: the member whose data is saved.
    Save {
        /// Where to write the snapshot; must not exist yet.
        file: PathBuf,
    },
    /// Check a snapshot file end to end and show its hash, revision, keys and size; for a backup
    /// directory, list its base snapshots and the log entries its journal covers.
    Status {
        /// The snapshot file, or a backup directory kept by `backup --follow` (then its base
        /// snapshots and the log entries its journal covers are listed).
        file: PathBuf,
    },
    /// Build a new member's data directory from a snapshot file, or from a backup directory at a
    /// chosen revision (--to-revision). Run it once per member of the new cluster, with that
    /// member's name and the same --initial-cluster, then start each member with the same flags.
    Restore(RestoreArgs),
}

/// Where and as whom a snapshot is restored (etcd's names).
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The snapshot file, or a backup directory kept by `backup --follow` (with --to-revision).
    file: PathBuf,
    /// Restore the state exactly as it was at this revision, from a backup directory: its newest
    /// base snapshot at or before the revision, then its journal replayed up to the revision.
    #[arg(long)]
    to_revision: Option<i64>,
    /// The data directory to create; must be absent or empty (a volume root with only
    /// `lost+found` is fine).
    #[arg(long)]
    data_dir: PathBuf,
    /// This member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// The new cluster: name=peer URL,... (default: this member alone).
    #[arg(long, default_value = "")]
    initial_cluster: String,
    /// The new cluster's token; use a new one so the restored cluster cannot mix with the old.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
}

/// Runs a snapshot command.
pub async fn run(global: &Global, command: Snapshot) -> Result<()> {
    match command {
        Snapshot::Save { file } => save(global, &file).await,
        Snapshot::Status { file } if file.is_dir() => super::backup::print_coverage(global, &file),
        Snapshot::Status { file } => {
            let summary = tokio::task::spawn_blocking(move || keel_store::backup::inspect(&file)).await??;
            print_summary(global.write_out, &summary);
            Ok(())
        }
        Snapshot::Restore(args) => restore(global, args).await,
    }
}

async fn save(global: &Global, file: &Path) -> Result<()> {
    if global.endpoints.len() != 1 {
        bail!(
            "snapshot save needs exactly one endpoint (got {}): the member whose data is saved",
            global.endpoints.len()
        );
    }
    if file.exists() {
        bail!("{} already exists; choose a new file name", file.display());
    }
    let client = Client::connect(global).await?;
    let (url, bytes) = save_from(&client, file).await?;
    eprintln!("received {} from {url}", human_bytes(bytes));
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

/// Saves a snapshot of one of the client's endpoints to `file` (through `FILE.part`, synced and
/// verified before the rename); the endpoint's URL and the bytes received.
pub(super) async fn save_from(client: &Client, file: &Path) -> Result<(String, u64)> {
    let (url, channel) = client.any_endpoint().await?;
    let part = part_path(file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&part)
        .with_context(|| format!("creating {} (a save may be running, or was interrupted)", part.display()))?;
    let written = receive(client, channel, &mut out).await;
    let finished = written.and_then(|bytes| {
        out.sync_all().context("syncing the snapshot")?;
        drop(out);
        keel_store::raft::snapshot::verify(&part)
            .with_context(|| format!("the snapshot received from {url} does not verify"))?;
        std::fs::rename(&part, file).with_context(|| format!("renaming to {}", file.display()))?;
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).context("syncing the directory")?;
        Ok(bytes)
    });
    match finished {
        Ok(bytes) => Ok((url, bytes)),
        Err(err) => {
            let _ = std::fs::remove_file(&part);
            Err(err)
        }
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    file.with_file_name(name)
}

/// Streams the member's snapshot into `out`; the number of bytes.
async fn receive(client: &Client, channel: tonic::transport::Channel, out: &mut std::fs::File) -> Result<u64> {
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel).max_decoding_message_size(16 << 20);
    let mut stream =
        maintenance.snapshot(client.stream_request(pb::SnapshotRequest {})).await.map_err(status_error)?.into_inner();
    let mut bytes = 0u64;
    // Each message must arrive within the command timeout; the whole transfer may take longer.
    loop {
        let message = tokio::time::timeout(client.global().command_timeout, stream.message())
            .await
            .context("the member stopped sending the snapshot")?
            .map_err(status_error)?;
        let Some(message) = message else { break };
        out.write_all(&message.blob).context("writing the snapshot")?;
        bytes += message.blob.len() as u64;
        if message.remaining_bytes == 0 {
            break;
        }
    }
    Ok(bytes)
}

async fn restore(global: &Global, args: RestoreArgs) -> Result<()> {
    // The same checks the member makes at start, so a restore never builds a directory that the
    // member would then refuse.
    let mut config = keel_store::server::StoreConfig::with_data_dir(&args.data_dir);
    config.name = args.name.clone();
    config.initial_cluster = args.initial_cluster.clone();
    config.initial_cluster_token = args.initial_cluster_token.clone();
    config.initial_advertise_peer_urls = args.initial_advertise_peer_urls.clone();
    let members = config.initial_members().context("checking the new cluster's flags")?;
    let own = members.iter().find(|(name, _)| *name == args.name).map(|(_, urls)| urls.clone()).unwrap_or_default();
    if own != args.initial_advertise_peer_urls {
        bail!(
            "--initial-cluster gives {} the peer URLs {:?}, but --initial-advertise-peer-urls says {:?}",
            args.name,
            own,
            args.initial_advertise_peer_urls
        );
    }
    let (file, data_dir) = (args.file.clone(), args.data_dir.clone());
    let summary = match (file.is_dir(), args.to_revision) {
        (true, Some(revision)) => {
            tokio::task::spawn_blocking(move || keel_store::backup::restore_to_revision(&file, revision, &data_dir))
                .await??
        }
        (true, None) => bail!(
            "{} is a backup directory: give --to-revision (see `keel ctl snapshot status {}` for what it covers)",
            file.display(),
            file.display()
        ),
        (false, Some(_)) => bail!(
            "--to-revision needs a backup directory kept by `keel ctl backup --follow`; {} is a single snapshot",
            file.display()
        ),
        (false, None) => tokio::task::spawn_blocking(move || keel_store::backup::restore(&file, &data_dir)).await??,
    };
    let member_ids: Vec<u64> =
        members.iter().map(|(_, urls)| keel_store::server::member_id(urls, &args.initial_cluster_token)).collect();
    let member_id = keel_store::server::member_id(&own, &args.initial_cluster_token);
    let cluster_id = keel_store::server::cluster_id(&member_ids, &args.initial_cluster_token);
    if global.write_out == WriteOut::Json {
        println!(
            "{}",
            serde_json::json!({
                "dataDir": args.data_dir,
                "name": args.name,
                "memberId": member_id,
                "clusterId": cluster_id,
                "revision": summary.revision,
                "totalKey": summary.keys,
                "leases": summary.leases,
                "hash": summary.hash,
            })
        );
        return Ok(());
    }
    println!(
        "restored {} to {}: revision {}, {} keys, {} leases, {} users",
        args.file.display(),
        args.data_dir.display(),
        summary.revision,
        summary.keys,
        summary.leases,
        summary.users
    );
    println!("member {member_id:x} ({}) of new cluster {cluster_id:x}; start it with:", args.name);
    println!(
        "  keel store --name {} --data-dir {} --initial-cluster {} --initial-cluster-token {} --initial-advertise-peer-urls {} --initial-cluster-state new",
        args.name,
        args.data_dir.display(),
        members
            .iter()
            .map(|(n, urls)| urls.iter().map(|u| format!("{n}={u}")).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join(","),
        args.initial_cluster_token,
        args.initial_advertise_peer_urls.join(",")
    );
    Ok(())
}

fn print_summary(format: WriteOut, summary: &SnapshotSummary) {
    if format == WriteOut::Json {
        println!(
            "{}",
            serde_json::json!({
                "hash": summary.hash,
                "revision": summary.revision,
                "totalKey": summary.keys,
                "totalSize": summary.size,
                "compactRevision": summary.compact_revision,
                "leases": summary.leases,
                "users": summary.users,
                "roles": summary.roles,
                "authEnabled": summary.auth_enabled,
            })
        );
        return;
    }
    let row = vec![
        format!("{:x}", summary.hash),
        summary.revision.to_string(),
        summary.keys.to_string(),
        human_bytes(summary.size),
    ];
    print_rows(format, &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &[row]);
}
