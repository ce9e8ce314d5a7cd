//! Backup and restore with `keel ctl`: a 3-member cluster holding 50k keys (with history),
//! leases and users is saved to one file while it serves writes, every data directory is deleted,
//! and three new members restored from the file form a cluster with the same keys, values,
//! revisions, leases and auth, and equal HashKV. `etcdctl snapshot save` (3.4) produces a file
//! `keel ctl` reads, and damaged files are refused without writing anything.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use etcd_client::{Client, GetOptions, Permission, PermissionType, TxnOp};
use support::cluster::Cluster;

const KEYS: usize = 50_000;
const PER_TXN: usize = 100;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keel")).arg("ctl").args(args).output().expect("run keel ctl")
}

fn ctl_ok(args: &[&str]) -> String {
    let out = ctl(args);
    assert!(
        out.status.success(),
        "keel ctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every key with its revisions, version, value and lease, read locally from one member.
async fn everything(client: &mut Client) -> BTreeMap<Vec<u8>, (i64, i64, i64, Vec<u8>, i64)> {
    let resp = client.get("\0", Some(GetOptions::new().with_from_key().with_serializable())).await.expect("read all");
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

async fn leases(client: &mut Client) -> BTreeMap<i64, (i64, Vec<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    for lease in client.leases().await.expect("lease list").leases() {
        let ttl = client
            .lease_time_to_live(lease.id(), Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        let mut keys = ttl.keys().to_vec();
        keys.sort();
        out.insert(lease.id(), (ttl.granted_ttl(), keys));
    }
    out
}

async fn auth_state(client: &mut Client) -> (Vec<String>, Vec<String>, String) {
    let users = client.user_list().await.expect("users").users().to_vec();
    let roles = client.role_list().await.expect("roles").roles().to_vec();
    let app = client.role_get("app").await.expect("role app");
    let perms = app.permissions().iter().map(|p| format!("{:?} {:?}", p.key(), p.range_end())).collect();
    (users, roles, perms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_restored_from_one_snapshot_has_the_same_data_leases_auth_and_hash() {
    let mut old = Cluster::start(3, &[]).await;
    let mut client = old.client_for(&[0, 1, 2]).await;
    for batch in 0..KEYS / PER_TXN {
        let ops: Vec<TxnOp> = (0..PER_TXN)
            .map(|i| TxnOp::put(format!("key/{:06}", batch * PER_TXN + i), format!("v{batch}"), None))
            .collect();
        client.txn(etcd_client::Txn::new().and_then(ops)).await.expect("bulk write");
    }
    // History: overwrites and deletes, so revisions and versions are not all 1.
    for i in 0..200 {
        client.put(format!("key/{:06}", i), "rewritten", None).await.unwrap();
    }
    client.delete("key/0001", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    let mut lease_ids = Vec::new();
    for ttl in [300, 600, 900] {
        let id = client.lease_grant(ttl, None).await.unwrap().id();
        client.put(format!("leased/{ttl}"), "x", Some(etcd_client::PutOptions::new().with_lease(id))).await.unwrap();
        lease_ids.push(id);
    }
    client.user_add("root", "rootpw", None).await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.role_add("app").await.unwrap();
    client
        .role_grant_permission("app", Permission::new(PermissionType::Readwrite, "app/").with_prefix())
        .await
        .unwrap();
    client.user_add("alice", "alicepw", None).await.unwrap();
    client.user_grant_role("alice", "app").await.unwrap();

    // Save from one member while another client keeps writing elsewhere.
    let revision = old.converged().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let file_arg = file.to_str().unwrap();
    let writer = tokio::spawn({
        let mut client = old.client(2).await;
        // A put that timed out (a member stalled on a loaded machine for longer than the request
        // timeout) is asked again, at most twice; any other error, or a third timeout, is a write
        // the save made fail.
        async move {
            let mut failures = 0;
            for i in 0..200 {
                let key = format!("during/{i:03}");
                let mut timeouts = 0;
                loop {
                    match client.put(key.as_str(), "w", None).await {
                        Ok(_) => break,
                        Err(err) if support::timed_out(&err) && timeouts < 2 => {
                            timeouts += 1;
                            eprintln!("put {key} timed out during the save ({timeouts}): {err}");
                        }
                        Err(err) => {
                            eprintln!("put {key} failed during the save: {err}");
                            failures += 1;
                            break;
                        }
                    }
                }
            }
            failures
        }
    });
    let url0 = old.url(0);
    let save_path = file_arg.to_string();
    let saved = tokio::task::spawn_blocking(move || ctl_ok(&["--endpoints", &url0, "snapshot", "save", &save_path]))
        .await
        .unwrap();
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    assert_eq!(writer.await.unwrap(), 0, "writes kept succeeding during the save");

    // What the file holds, and what the old cluster held at the snapshot's revision.
    let status = ctl_ok(&["snapshot", "status", file_arg, "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json status");
    let snap_revision = status["revision"].as_i64().unwrap();
    assert!(snap_revision >= revision, "the snapshot is at least as new as the converged revision");
    let mut reader = old.client(0).await;
    let expected = {
        let resp = reader
            .get("\0", Some(GetOptions::new().with_from_key().with_revision(snap_revision)))
            .await
            .expect("read at the snapshot revision");
        resp.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    (kv.create_revision(), kv.mod_revision(), kv.version(), kv.value().to_vec(), kv.lease()),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(status["totalKey"].as_i64().unwrap() as usize, expected.len());
    let expected_hash = reader.hash_kv(snap_revision).await.unwrap().hash();
    assert_eq!(status["hash"].as_u64().unwrap() as u32, expected_hash, "status reports HashKV at its revision");
    let expected_leases = leases(&mut reader).await;
    let expected_auth = auth_state(&mut reader).await;
    assert_eq!(expected_leases.len(), 3);

    // Disaster: every member and data directory is gone.
    for i in 0..3 {
        old.kill(i);
    }
    drop(old);

    // Three new members, restored from the file; one data directory is a volume root.
    let mut new = Cluster {
        dir: tempfile::tempdir().unwrap(),
        names: (1..=3).map(|i| format!("r{i}")).collect(),
        client_ports: (0..3).map(|_| support::free_port()).collect(),
        peer_ports: (0..3).map(|_| support::free_port()).collect(),
        metrics_ports: (0..3).map(|_| support::free_port()).collect(),
        processes: (0..3).map(|_| None).collect(),
        extra: Vec::new(),
        pki: None,
    };
    std::fs::create_dir_all(new.dir.path().join("r2/lost+found")).unwrap();
    let initial = new.initial_cluster();
    for i in 0..3 {
        let data_dir = new.dir.path().join(&new.names[i]);
        let out = ctl_ok(&[
            "snapshot",
            "restore",
            file_arg,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--name",
            &new.names[i],
            "--initial-cluster",
            &initial,
            "--initial-advertise-peer-urls",
            &new.peer_url(i),
        ]);
        assert!(out.contains(&format!("revision {snap_revision}")), "{out}");
    }
    for i in 0..3 {
        new.spawn(i, "new");
    }
    for i in 0..3 {
        new.process(i).ready().await;
    }
    new.leader().await;
    for i in 0..3 {
        let mut member = new.client(i).await;
        let data = everything(&mut member).await;
        assert_eq!(data.len(), expected.len(), "member {i} key count");
        assert!(data == expected, "member {i} holds different keys, values or revisions");
        assert_eq!(member.hash_kv(snap_revision).await.unwrap().hash(), expected_hash, "member {i} HashKV");
    }
    let mut client = new.client_for(&[0, 1, 2]).await;
    assert_eq!(leases(&mut client).await, expected_leases, "leases with their TTLs and keys");
    assert_eq!(auth_state(&mut client).await, expected_auth, "users, roles and permissions");
    // The restored cluster is a working cluster: it takes writes at the next revision.
    let put = client.put("after-restore", "1", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), snap_revision + 1);
    let old_lease = lease_ids[0];
    client.lease_revoke(old_lease).await.expect("a restored lease can be revoked");
    assert!(client.get("leased/300", None).await.unwrap().kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_writes_a_file_keel_ctl_restores_and_damaged_files_are_refused() {
    let mut cluster = Cluster::start(1, &[]).await;
    let mut client = cluster.client(0).await;
    for i in 0..100 {
        client.put(format!("k{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcdctl.db");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &cluster.process(0).endpoint(), "snapshot", "save", file.to_str().unwrap()])
        .output()
        .expect("run etcdctl (Debian's etcd-client)");
    assert!(out.status.success(), "etcdctl snapshot save: {}", String::from_utf8_lossy(&out.stderr));
    let status = ctl_ok(&["snapshot", "status", file.to_str().unwrap()]);
    let fields: Vec<&str> = status.trim().split(", ").collect();
    assert_eq!(fields[2], "100", "{status}");

    // Damaged copies: named as such, and the target directory is not created.
    let bytes = std::fs::read(&file).unwrap();
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x10;
    let corrupted = dir.path().join("corrupted.db");
    std::fs::write(&corrupted, &flipped).unwrap();
    for (damaged, word) in [(&truncated, "truncated"), (&corrupted, "corrupted")] {
        let target = dir.path().join(format!("restore-{word}"));
        let out = ctl(&["snapshot", "restore", damaged.to_str().unwrap(), "--data-dir", target.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(word), "{word}: {stderr}");
        assert!(!Path::new(&target).exists(), "nothing written for a {word} file");
        let out = ctl(&["snapshot", "status", damaged.to_str().unwrap()]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(word));
    }

    // An existing data directory is never overwritten.
    let taken = dir.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("keep"), b"precious").unwrap();
    let out = ctl(&["snapshot", "restore", file.to_str().unwrap(), "--data-dir", taken.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert_eq!(std::fs::read(taken.join("keep")).unwrap(), b"precious");
}
