//! Point-in-time backup and restore with `keel ctl`: `backup --follow DIR` keeps a base snapshot
//! plus a journal of a 3-member cluster's committed changes while the follower itself and then a
//! member are killed and restarted; `snapshot restore DIR --to-revision R` must then rebuild the
//! state exactly as the cluster held it at each chosen R — every key with its value, create and
//! mod revisions and version, the leases and the users — and refuse a revision past the journal's
//! end without leaving anything behind. The cluster is never compacted, so its own reads at
//! revision R are the model the restored state is checked against.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use support::cluster::Cluster;
use support::{Background, KeelProcess, free_port};

type Data = BTreeMap<Vec<u8>, (i64, i64, i64, Vec<u8>, i64)>;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).arg("ctl").args(args).output().expect("run keel ctl")
}

fn data_of(resp: &etcd_client::GetResponse) -> Data {
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (kv.create_revision(), kv.mod_revision(), kv.version(), kv.value().to_vec(), kv.lease()),
            )
        })
        .collect()
}

fn follower(endpoints: &str, dir: &Path) -> Background {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["ctl", "--endpoints", endpoints, "backup", "--follow"]).arg(dir);
    Background::start(cmd)
}

/// The last log entry the backup directory covers, by its journal or its newest base, as
/// `snapshot status DIR` reports them.
fn journal_end(dir: &Path) -> u64 {
    let out = ctl(&["snapshot", "status", dir.to_str().unwrap(), "-w", "json"]);
    if !out.status.success() {
        return 0;
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json status");
    let last = |list: &str, field: &str| {
        status[list].as_array().and_then(|items| items.last()).and_then(|item| item[field].as_u64()).unwrap_or(0)
    };
    last("journal", "last").max(last("bases", "index"))
}

/// Waits (bounded) until the journal holds every entry the members applied so far.
async fn wait_for_journal(cluster: &mut Cluster, dir: &Path) {
    let mut target = 0;
    for i in cluster.live() {
        let status = cluster.client(i).await.status().await.expect("status");
        target = target.max(status.raft_applied_index());
    }
    for _ in 0..300 {
        if journal_end(dir) >= target {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the journal did not reach entry {target} (it is at {})", journal_end(dir));
}

/// Restores `dir` at `revision` into a fresh directory and starts a member on it.
async fn restored_member(dir: &Path, revision: i64, scratch: &Path) -> (KeelProcess, Client) {
    let data_dir = scratch.join(format!("restored-{revision}"));
    let peer_port = free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let initial = format!("e2e={peer}");
    let out = ctl(&[
        "snapshot",
        "restore",
        dir.to_str().unwrap(),
        "--to-revision",
        &revision.to_string(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--name",
        "e2e",
        "--initial-cluster",
        &initial,
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(
        out.status.success(),
        "restore to {revision} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut member = KeelProcess::spawn(&data_dir, free_port(), peer_port, &["--initial-cluster", &initial]);
    let client = member.ready().await;
    (member, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_to_revision_matches_the_cluster_at_each_revision_across_follower_and_member_restarts() {
    let mut cluster = Cluster::start(3, &[]).await;
    let endpoints: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let endpoints = endpoints.join(",");
    let scratch = tempfile::tempdir().unwrap();
    let backup = scratch.path().join("backup");
    let mut client = cluster.client_for(&[1, 2]).await;
    let mut checkpoints: Vec<i64> = Vec::new();

    // Before the follower starts: the base snapshot covers these.
    for i in 0..20 {
        client.put(format!("key/{i:02}"), format!("v{i}"), None).await.unwrap();
    }
    let mut follow = follower(&endpoints, &backup);
    // The base is taken when the follower starts; what follows must be journaled.
    wait_for_journal(&mut cluster, &backup).await;

    // Phase 1: overwrites, deletes, a transaction, a lease with a key, a user.
    for i in 0..10 {
        let resp = client.put(format!("key/{i:02}"), format!("second {i}"), None).await.unwrap();
        checkpoints.push(resp.header().unwrap().revision());
    }
    let resp = client.delete("key/15", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    checkpoints.push(resp.header().unwrap().revision());
    let txn = Txn::new().and_then([TxnOp::put("txn/a", "1", None), TxnOp::delete("key/16", None)]);
    let resp = client.txn(txn).await.unwrap();
    checkpoints.push(resp.header().unwrap().revision());
    let before_lease = resp.header().unwrap().revision();
    let lease = client.lease_grant(600, None).await.unwrap().id();
    let resp = client.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await.unwrap();
    let with_lease = resp.header().unwrap().revision();
    checkpoints.push(with_lease);
    client.user_add("alice", "alicepw", None).await.unwrap();
    let with_user = client.get("leased", None).await.unwrap().header().unwrap().revision();

    // The follower crashes; writes go on; it resumes where its journal ends.
    wait_for_journal(&mut cluster, &backup).await;
    drop(follow);
    for i in 20..30 {
        let resp = client.put(format!("key/{i:02}"), format!("while away {i}"), None).await.unwrap();
        checkpoints.push(resp.header().unwrap().revision());
    }
    follow = follower(&endpoints, &backup);

    // A member is killed and comes back (the follower may have been reading from it). It may have
    // led: a member that forwards a proposal over the connection the leader's death is closing
    // cannot tell whether it was applied and answers "request timed out", as etcd does when its
    // leader dies under a proposal. This test is about the journal, not failover, so it writes on
    // once the survivors agree on a leader.
    cluster.kill(0);
    cluster.leader().await;
    let resp = client.lease_revoke(lease).await.unwrap();
    let lease_revoked = resp.header().unwrap().revision();
    checkpoints.push(lease_revoked);
    for i in 0..5 {
        let resp = client.put(format!("key/{i:02}"), format!("third {i}"), None).await.unwrap();
        checkpoints.push(resp.header().unwrap().revision());
    }
    cluster.spawn(0, "existing");
    cluster.process(0).ready().await;
    let resp = client.put("last", "1", None).await.unwrap();
    let last = resp.header().unwrap().revision();
    checkpoints.push(last);
    wait_for_journal(&mut cluster, &backup).await;
    assert!(follow.interrupt().success(), "the follower exits 0 on Ctrl-C");

    // Restore at several revisions; each must equal the cluster's own view at that revision.
    let status = ctl(&["snapshot", "status", backup.to_str().unwrap(), "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let base_revision = status["bases"][0]["revision"].as_i64().expect("a base");
    let mut model = cluster.client(1).await;
    let mut targets =
        vec![base_revision, checkpoints[3], before_lease, with_lease, checkpoints[15], lease_revoked, last];
    targets.sort_unstable();
    targets.dedup();
    for revision in targets {
        let expected = model
            .get("\0", Some(GetOptions::new().with_from_key().with_revision(revision)))
            .await
            .expect("the model at the revision");
        let (mut member, mut restored) = restored_member(&backup, revision, scratch.path()).await;
        let got = restored.get("\0", Some(GetOptions::new().with_from_key().with_serializable())).await.unwrap();
        assert_eq!(got.header().unwrap().revision(), revision, "restored store's revision");
        assert!(data_of(&got) == data_of(&expected), "restored data at revision {revision} differs from the cluster's");
        let leases: Vec<i64> = restored.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
        // A grant changes no revision: it belongs to the revision current when it was applied.
        let expect_lease = revision >= before_lease && revision < lease_revoked;
        assert_eq!(leases, if expect_lease { vec![lease] } else { Vec::new() }, "leases at revision {revision}");
        let users = restored.user_list().await.unwrap().users().to_vec();
        let expect_user = revision >= with_user;
        assert_eq!(users.contains(&"alice".to_string()), expect_user, "users at revision {revision}: {users:?}");
        member.kill();
    }

    // Past the end: refused, and the target directory is left as it was (absent).
    let beyond = scratch.path().join("beyond");
    let out = ctl(&[
        "snapshot",
        "restore",
        backup.to_str().unwrap(),
        "--to-revision",
        &(last + 100).to_string(),
        "--data-dir",
        beyond.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("beyond the end of the journal"), "{stderr}");
    assert!(!beyond.exists(), "a refused restore leaves no directory behind");
}

/// Asks the member to stream the journal from `from`; true once it answers that the entry is
/// purged (the member compacted its log behind a Raft snapshot).
async fn purged_on(url: &str, from: u64) -> bool {
    use keel_proto::keeljournal::FollowRequest;
    use keel_proto::keeljournal::journal_client::JournalClient;
    let Ok(mut journal) = JournalClient::connect(url.to_string()).await else { return false };
    matches!(
        journal.follow(FollowRequest { from_index: from }).await,
        Err(status) if status.code() == tonic::Code::OutOfRange
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_away_past_the_log_takes_a_new_base_and_the_gap_is_refused_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let mut member =
        KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &["--snapshot-count", "100"]);
    let mut client = member.ready().await;
    let backup = dir.path().join("backup");
    client.put("before", "1", None).await.unwrap();
    let mut follow = follower(&member.endpoint(), &backup);
    let mut early = 0;
    for i in 0..5 {
        early = client.put(format!("early/{i}"), "1", None).await.unwrap().header().unwrap().revision();
    }
    let early_index = client.status().await.unwrap().raft_applied_index();
    for _ in 0..300 {
        if journal_end(&backup) >= early_index {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(journal_end(&backup) >= early_index, "the journal reached the early write");
    assert!(follow.interrupt().success());

    // Away for more than the member keeps: 5000 entries behind its latest snapshot.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for i in 0..800 {
                    client.put(format!("away/{w}/{i}"), "x", None).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let gap_revision = early + 10;
    let mut purged = false;
    for _ in 0..600 {
        if purged_on(&member.url(), early_index + 1).await {
            purged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(purged, "the member compacted its log behind a snapshot");

    follow = follower(&member.endpoint(), &backup);
    let after = client.put("after", "1", None).await.unwrap().header().unwrap().revision();
    let after_index = client.status().await.unwrap().raft_applied_index();
    for _ in 0..300 {
        if journal_end(&backup) >= after_index {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(follow.interrupt().success());
    let status = ctl(&["snapshot", "status", backup.to_str().unwrap(), "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["bases"].as_array().unwrap().len(), 2, "a second base after the gap: {status}");

    // Inside the gap: refused with the reason. Before and after it: exact.
    let target = dir.path().join("in-gap");
    let out = ctl(&[
        "snapshot",
        "restore",
        backup.to_str().unwrap(),
        "--to-revision",
        &gap_revision.to_string(),
        "--data-dir",
        target.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gap"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!target.exists());
    for revision in [early, after] {
        let expected = client
            .get("\0", Some(GetOptions::new().with_from_key().with_revision(revision)))
            .await
            .expect("the model at the revision");
        let (mut restored_process, mut restored) = restored_member(&backup, revision, dir.path()).await;
        let got = restored.get("\0", Some(GetOptions::new().with_from_key().with_serializable())).await.unwrap();
        assert_eq!(got.header().unwrap().revision(), revision);
        assert!(data_of(&got) == data_of(&expected), "restored data at revision {revision} differs");
        restored_process.kill();
    }
    member.kill();
}
