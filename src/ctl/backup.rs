//! `keel ctl backup --follow DIR`: a point-in-time backup kept up to date — a base snapshot plus a
//! journal of every committed log entry after it (`keel_store::backup::journal`), from which
//! `snapshot restore DIR --to-revision R` rebuilds the state at any revision the journal covers.
//!
//! Invariants:
//! - the journal only ever grows by consecutive entries; an entry is appended once its
//!   predecessor is, and each received message is synced before the next is read, so a crash
//!   loses at most the message in flight (a torn tail is cut off at the next start);
//! - when the followed member no longer holds the next entry (purged behind a Raft snapshot) a new
//!   base is taken and the journal restarts after it: revisions in the gap are reported as not
//!   restorable, never silently wrong;
//! - failures (a member restarting, a leader change, a lost connection) are retried over every
//!   endpoint with capped backoff, for at most `--retry-timeout` without progress; Ctrl-C or
//!   SIGTERM syncs the journal and exits 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use keel_proto::etcdserverpb as pb;
use keel_proto::keeljournal::FollowRequest;
use keel_proto::keeljournal::journal_client::JournalClient;
use keel_store::backup::journal::{self, Journal, JournalError, Record};
use tokio::time::Instant;

use super::output::{WriteOut, print_rows};
use super::{Client, Global, status_error};

/// `backup`.
#[derive(Debug, Args)]
pub struct Backup {
    /// Keep a point-in-time backup in DIR: a base snapshot, then every committed change, until
    /// Ctrl-C. Resumes where DIR left off. Restore with `snapshot restore DIR --to-revision R`.
    #[arg(long, value_name = "DIR")]
    follow: PathBuf,
    /// Give up when no endpoint could be followed for this long, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    retry_timeout: Duration,
}

/// Largest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Name the base snapshot is received under before its position is known.
const INCOMING_BASE: &str = "base-incoming.snap";
/// How often progress is reported on standard error.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Why one attempt to follow ended.
enum Stop {
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// Worth another attempt (on another endpoint).
    Retry(anyhow::Error),
    /// Not worth retrying: the directory is unusable as it is.
    Fatal(anyhow::Error),
}

/// Runs `backup --follow`.
pub async fn run(global: &Global, cmd: Backup) -> Result<()> {
    let mut interrupted = Box::pin(interrupted());
    let mut endpoints = global.endpoints.clone();
    let mut backoff = Duration::from_millis(250);
    let mut last_progress = Instant::now();
    loop {
        let mut attempt_global = global.clone();
        attempt_global.endpoints = endpoints.clone();
        let stop = tokio::select! {
            stop = follow(&attempt_global, &cmd.follow, &mut last_progress) => stop,
            () = &mut interrupted => Stop::Interrupted,
        };
        match stop {
            Stop::Interrupted => {
                // The journal is synced after every message; what was in flight is dropped whole.
                eprintln!("stopped; {} is consistent", cmd.follow.display());
                return Ok(());
            }
            Stop::Fatal(err) => return Err(err),
            Stop::Retry(err) => {
                if last_progress.elapsed() > cmd.retry_timeout {
                    return Err(err.context(format!("no progress for {:?} (--retry-timeout)", cmd.retry_timeout)));
                }
                eprintln!("{err:#}; retrying in {backoff:?}");
                // The next attempt starts with the next endpoint.
                endpoints.rotate_left(1);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut interrupted => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn fatal_if_journal(err: JournalError) -> Stop {
    match err {
        JournalError::Io { .. } => Stop::Retry(err.into()),
        other => Stop::Fatal(other.into()),
    }
}

/// One attempt: connect, make sure there is a base, then append entries until something fails.
async fn follow(global: &Global, dir: &Path, last_progress: &mut Instant) -> Stop {
    let client = match Client::connect(global).await {
        Ok(client) => client,
        Err(err) => return Stop::Retry(err),
    };
    let (url, channel) = match client.any_endpoint().await {
        Ok(found) => found,
        Err(err) => return Stop::Retry(err),
    };
    let status = pb::maintenance_client::MaintenanceClient::new(channel.clone())
        .status(client.request(pb::StatusRequest {}))
        .await;
    let cluster_id = match status {
        Ok(status) => status.into_inner().header.map_or(0, |h| h.cluster_id),
        Err(status) => return Stop::Retry(status_error(status).context(url)),
    };
    let mut journal = match Journal::open(dir, cluster_id) {
        Ok(journal) => journal,
        Err(err) => return fatal_if_journal(err),
    };
    let mut next = match resume_point(&client, dir, &mut journal).await {
        Ok(next) => next,
        Err(stop) => return stop,
    };
    eprintln!("following {url} from log entry {next} into {}", dir.display());
    let mut reported = Instant::now();
    loop {
        let mut stream = match JournalClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .follow(client.stream_request(FollowRequest { from_index: next }))
            .await
        {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == tonic::Code::OutOfRange => {
                // The member purged what comes next: start over from a new base.
                eprintln!("{}; taking a new base snapshot", status.message());
                match take_base(&client, dir, &mut journal).await {
                    Ok(index) => next = index + 1,
                    Err(stop) => return stop,
                }
                continue;
            }
            Err(status) => return stop_for(status, &url),
        };
        loop {
            // Messages come at least every few seconds (keep-alives), so a silent stream is dead.
            let message =
                tokio::time::timeout(global.command_timeout.max(Duration::from_secs(15)), stream.message()).await;
            let message = match message {
                Err(_) => return Stop::Retry(anyhow!("{url} stopped sending the journal")),
                Ok(Err(status)) if status.code() == tonic::Code::OutOfRange => break,
                Ok(Err(status)) => return stop_for(status, &url),
                Ok(Ok(None)) => return Stop::Retry(anyhow!("{url} ended the journal stream")),
                Ok(Ok(Some(message))) => message,
            };
            if message.cluster_id != cluster_id {
                return Stop::Fatal(anyhow!(
                    "{url} now belongs to cluster {:x}, not {cluster_id:x}; follow the new cluster into a new directory",
                    message.cluster_id
                ));
            }
            let records: Vec<Record> =
                message.entries.into_iter().map(|e| Record { index: e.index, entry: e.entry }).collect();
            if let Some(last) = records.last() {
                let appended = journal.append(&records).and_then(|()| journal.sync());
                if let Err(err) = appended {
                    return fatal_if_journal(err);
                }
                next = last.index + 1;
                *last_progress = Instant::now();
            } else {
                // A keep-alive: the connection works, even if nothing is being written.
                *last_progress = Instant::now();
            }
            if reported.elapsed() >= REPORT_EVERY {
                eprintln!("journal at log entry {} (member applied {})", next - 1, message.applied_index);
                reported = Instant::now();
            }
        }
        // OUT_OF_RANGE mid-stream: the member purged entries before sending them.
        match take_base(&client, dir, &mut journal).await {
            Ok(index) => next = index + 1,
            Err(stop) => return stop,
        }
    }
}

/// Retries what may pass (a member restarting, a leader change, an expired token); gives up on
/// what will not (a server without the journal service, a user without the root role).
fn stop_for(status: tonic::Status, url: &str) -> Stop {
    let fatal = matches!(status.code(), tonic::Code::Unimplemented | tonic::Code::PermissionDenied);
    let err = status_error(status).context(url.to_string());
    if fatal { Stop::Fatal(err) } else { Stop::Retry(err) }
}

/// The first log entry to ask for: after the journal's last entry or the newest base, whichever
/// is later; takes the first base when the directory has none.
async fn resume_point(client: &Client, dir: &Path, journal: &mut Journal) -> Result<u64, Stop> {
    let newest_base = journal::bases(dir).map_err(fatal_if_journal)?.last().map(|b| b.index);
    let Some(base) = newest_base else {
        return Ok(take_base(client, dir, journal).await? + 1);
    };
    match journal.last_index() {
        Some(last) if last >= base => Ok(last + 1),
        _ => {
            journal.restart_after_base(base).map_err(fatal_if_journal)?;
            Ok(base + 1)
        }
    }
}

/// Saves a new base snapshot into `dir` and restarts the journal after it; the base's log index.
async fn take_base(client: &Client, dir: &Path, journal: &mut Journal) -> Result<u64, Stop> {
    let incoming = dir.join(INCOMING_BASE);
    for stale in [incoming.clone(), dir.join(format!("{INCOMING_BASE}.part"))] {
        if let Err(err) = std::fs::remove_file(&stale)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Stop::Fatal(anyhow!("removing {}: {err}", stale.display())));
        }
    }
    let (url, _) = super::snapshot::save_from(client, &incoming).await.map_err(Stop::Retry)?;
    let path = incoming.clone();
    let position = tokio::task::spawn_blocking(move || keel_store::backup::position(&path)).await;
    let (index, revision) = match position {
        Ok(Ok(position)) => position,
        Ok(Err(err)) => return Err(Stop::Retry(err.into())),
        Err(err) => return Err(Stop::Retry(err.into())),
    };
    let named = dir.join(journal::base_name(index, revision));
    std::fs::rename(&incoming, &named)
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|err| Stop::Fatal(anyhow!("naming the base snapshot {}: {err}", named.display())))?;
    journal.restart_after_base(index).map_err(fatal_if_journal)?;
    eprintln!("base snapshot from {url}: log entry {index}, revision {revision} ({})", named.display());
    Ok(index)
}

/// `snapshot status DIR` for a backup directory: its bases and the entries its journal covers.
pub fn print_coverage(global: &Global, dir: &Path) -> Result<()> {
    let coverage = journal::coverage(dir).with_context(|| format!("reading the backup directory {}", dir.display()))?;
    if coverage.bases.is_empty() {
        bail!("{} holds no base snapshot: it is not a backup directory kept by `backup --follow`", dir.display());
    }
    if global.write_out == WriteOut::Json {
        let bases: Vec<_> = coverage
            .bases
            .iter()
            .map(|b| serde_json::json!({ "file": b.path, "index": b.index, "revision": b.revision }))
            .collect();
        let runs: Vec<_> =
            coverage.runs.iter().map(|(first, last)| serde_json::json!({ "first": first, "last": last })).collect();
        println!("{}", serde_json::json!({ "clusterId": coverage.cluster_id, "bases": bases, "journal": runs }));
        return Ok(());
    }
    let mut rows: Vec<Vec<String>> = coverage
        .bases
        .iter()
        .map(|b| vec!["base".into(), b.index.to_string(), b.index.to_string(), format!("revision {}", b.revision)])
        .collect();
    rows.extend(
        coverage
            .runs
            .iter()
            .map(|(first, last)| vec!["journal".into(), first.to_string(), last.to_string(), String::new()]),
    );
    print_rows(global.write_out, &["KIND", "FIRST ENTRY", "LAST ENTRY", "STATE"], &rows);
    Ok(())
}
