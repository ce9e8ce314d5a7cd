//! End to end for `keel ctl` against real `keel store` processes: the commands an operator brings
//! from etcdctl (member, endpoint, move-leader, compact, check, get/put/del/txn, watch, lease) must
//! print what etcdctl prints, act on the right member, and fail clearly with a non-zero exit.

mod support;

use support::cluster::Cluster;
use support::ctl::Ctl;
use support::{Background, KeelProcess, free_port};

/// One single-member store and a `keel ctl` for it.
async fn single() -> (tempfile::TempDir, KeelProcess, Ctl) {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &[]);
    keel.ready().await;
    let ctl = Ctl::new(&[keel.endpoint()]);
    (dir, keel, ctl)
}

fn cluster_ctl(cluster: &Cluster) -> Ctl {
    Ctl::new(&cluster.client_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_del_round_trip_prints_what_etcdctl_prints() {
    let (_dir, mut keel, ctl) = single().await;

    assert_eq!(ctl.ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(ctl.ok(&["get", "foo"]), "foo\nbar\n");
    assert_eq!(ctl.ok(&["get", "missing"]), "");
    assert_eq!(ctl.ok(&["put", "foo2", "baz"]), "OK\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "foo"]), "foo\nbar\nfoo2\nbaz\n");
    assert_eq!(ctl.ok(&["get", "foo", "foo2"]), "foo\nbar\n", "RANGE_END is exclusive");
    assert_eq!(ctl.ok(&["get", "--from-key", "foo1"]), "foo2\nbaz\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "--limit", "1", "foo"]), "foo\nbar\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "--keys-only", "foo"]), "foo\n\nfoo2\n\n");
    assert_eq!(ctl.ok(&["get", "--print-value-only", "foo"]), "bar\n");

    // Older revisions stay readable; --prev-kv prints the overwritten pair after OK.
    let json: serde_json::Value = serde_json::from_str(&ctl.ok(&["-w", "json", "get", "foo"])).expect("json");
    assert_eq!(json["kvs"][0]["key"], "Zm9v");
    assert_eq!(json["kvs"][0]["value"], "YmFy");
    assert_eq!(json["count"], 1);
    let old_rev = json["header"]["revision"].as_i64().expect("revision");
    assert_eq!(ctl.ok(&["put", "--prev-kv", "foo", "bar2"]), "OK\nfoo\nbar\n");
    assert_eq!(ctl.ok(&["get", "--rev", &old_rev.to_string(), "foo"]), "foo\nbar\n");
    assert_eq!(ctl.ok(&["get", "foo"]), "foo\nbar2\n");

    assert_eq!(ctl.ok(&["del", "foo"]), "1\n");
    assert_eq!(ctl.ok(&["get", "foo"]), "");
    assert_eq!(ctl.ok(&["del", "foo"]), "0\n");
    assert_eq!(ctl.ok(&["del", "--prev-kv", "--prefix", "foo"]), "1\nfoo2\nbaz\n");
    assert_eq!(ctl.ok(&["get", "--from-key", ""]), "");

    assert!(ctl.fails(&["get", "--prefix", "--from-key", "a"]).contains("cannot be set at the same time"));
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands_print_hex_ids_like_etcdctl_and_revoke_deletes_keys() {
    let (_dir, mut keel, ctl) = single().await;

    let granted = ctl.ok(&["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert_eq!(id.len(), 16, "{granted}");
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(ctl.ok(&["put", "--lease", &id, "lk", "lv"]), "OK\n");
    assert_eq!(ctl.ok(&["lease", "list"]), format!("found 1 leases\n{id}\n"));
    let ttl = ctl.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{ttl}");
    assert!(ttl.ends_with("s), attached keys([lk])\n"), "{ttl}");
    assert_eq!(ctl.ok(&["lease", "keep-alive", "--once", &id]), format!("lease {id} keepalived with TTL(60)\n"));

    // The continuous keep-alive prints a renewal, then Ctrl-C ends it with success.
    let mut keeper = Background::start(ctl.command(&["lease", "keep-alive", &id]));
    assert_eq!(keeper.lines(1), [format!("lease {id} keepalived with TTL(60)")]);
    assert!(keeper.interrupt().success(), "keep-alive exits cleanly on Ctrl-C");

    assert_eq!(ctl.ok(&["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(ctl.ok(&["get", "lk"]), "", "revoking deletes the attached key");
    assert_eq!(ctl.ok(&["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
    assert_eq!(ctl.ok(&["lease", "list"]), "found 0 leases\n");
    assert!(ctl.fails(&["lease", "keep-alive", "--once", &id]).contains("lease not found"));
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_like_etcdctl_and_ctrl_c_exits_cleanly() {
    let (_dir, mut keel, ctl) = single().await;
    assert_eq!(ctl.ok(&["put", "w/1", "v1"]), "OK\n");

    // From revision 1 the existing put is replayed, which also proves the watch is in place.
    let mut watch = Background::start(ctl.command(&["watch", "--prefix", "--rev", "1", "w/"]));
    assert_eq!(watch.lines(3), ["PUT", "w/1", "v1"]);
    assert_eq!(ctl.ok(&["put", "w/2", "v2"]), "OK\n");
    assert_eq!(watch.lines(3), ["PUT", "w/2", "v2"]);
    assert_eq!(ctl.ok(&["del", "w/1"]), "1\n");
    assert_eq!(watch.lines(3), ["DELETE", "w/1", ""]);
    assert!(watch.interrupt().success(), "watch exits cleanly on Ctrl-C");
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_discards_history_before_the_revision() {
    let (_dir, mut keel, ctl) = single().await;
    for value in ["a", "b", "c", "d"] {
        ctl.ok(&["put", "k", value]);
    }
    let json: serde_json::Value = serde_json::from_str(&ctl.ok(&["-w", "json", "get", "k"])).expect("json");
    let rev = json["header"]["revision"].as_i64().expect("revision");
    let first = (rev - 3).to_string();
    assert_eq!(ctl.ok(&["get", "--rev", &first, "k"]), "k\na\n");

    let target = (rev - 1).to_string();
    assert_eq!(ctl.ok(&["compact", "--physical", &target]), format!("compacted revision {target}\n"));
    assert!(ctl.fails(&["get", "--rev", &first, "k"]).contains("compacted"));
    assert_eq!(ctl.ok(&["get", "--rev", &target, "k"]), "k\nc\n");
    assert!(ctl.fails(&["compact", &first]).contains("compacted"));
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_bad_urls_and_unreachable_endpoints_fail_with_a_clear_error() {
    let (_dir, mut keel, ctl) = single().await;

    for args in [&["member", "remove", "zz"][..], &["move-leader", "not-hex"], &["member", "promote", "12g"]] {
        let err = ctl.fails(args);
        assert!(err.contains("bad member ID arg") && err.contains("expecting ID in hex"), "{args:?}: {err}");
    }
    let err = ctl.fails(&["lease", "revoke", "xyz"]);
    assert!(err.contains("bad lease ID") && err.contains("expecting ID in hex"), "{err}");
    let err = ctl.fails(&["member", "add", "n2", "--peer-urls", "127.0.0.1:2380"]);
    assert!(err.contains("bad peer URL \"127.0.0.1:2380\""), "{err}");

    let nowhere = format!("127.0.0.1:{}", free_port());
    let unreachable = Ctl::new(std::slice::from_ref(&nowhere));
    let err = unreachable.fails(&["--dial-timeout", "1s", "get", "k"]);
    assert!(err.contains("no endpoint is reachable") && err.contains(&nowhere), "{err}");
    let err = unreachable.fails(&["--dial-timeout", "1s", "endpoint", "status"]);
    assert!(err.contains(&format!("Failed to get the status of endpoint http://{nowhere}")), "{err}");
    let err = unreachable.fails(&["--dial-timeout", "1s", "endpoint", "health"]);
    assert!(err.contains(&format!("http://{nowhere} is unhealthy")) && err.contains("unhealthy cluster"), "{err}");

    // A reachable endpoint next to an unreachable one: the good one answers, the command fails.
    let mixed = Ctl::new(&[keel.endpoint(), nowhere.clone()]);
    let out = mixed.run(&["--dial-timeout", "1s", "endpoint", "health"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{} is healthy", keel.url())));
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_shows_every_member_in_simple_table_and_json() {
    let cluster = Cluster::start(3, &[]).await;
    let ctl = cluster_ctl(&cluster);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.member_id(i).await);
    }

    let mut lines: Vec<String> = ctl.ok(&["member", "list"]).lines().map(str::to_string).collect();
    lines.sort();
    let mut expected: Vec<String> = (0..3)
        .map(|i| {
            format!("{:x}, started, {}, {}, {}, false", ids[i], cluster.names[i], cluster.peer_url(i), cluster.url(i))
        })
        .collect();
    expected.sort();
    assert_eq!(lines, expected);

    let table = ctl.ok(&["-w", "table", "member", "list"]);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 7, "borders, header and three members:\n{table}");
    let header: Vec<&str> = rows[1].split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"]);
    for id in &ids {
        // Cells are right-aligned: an id shorter than 16 hex digits is padded on the left.
        assert!(table.contains(&format!(" {id:x} |")), "{table}");
    }

    let json: serde_json::Value = serde_json::from_str(&ctl.ok(&["-w", "json", "member", "list"])).expect("json");
    let members = json["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let m = members.iter().find(|m| m["ID"].as_u64() == Some(*id)).expect("every member listed");
        assert_eq!(m["name"], cluster.names[i].as_str());
        assert_eq!(m["peerURLs"][0], cluster.peer_url(i).as_str());
        assert_eq!(m["clientURLs"][0], cluster.url(i).as_str());
    }
    assert!(json["header"]["cluster_id"].as_u64().is_some_and(|c| c != 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_status_and_health_with_cluster_visit_every_member() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let leader_id = cluster.member_id(leader).await;
    // Only one endpoint given: --cluster must still find all three members.
    let ctl = Ctl::new(&[format!("127.0.0.1:{}", cluster.client_ports[0])]);

    let status = ctl.ok(&["endpoint", "status", "--cluster"]);
    let rows: Vec<Vec<&str>> = status.lines().map(|l| l.split(", ").collect()).collect();
    assert_eq!(rows.len(), 3, "{status}");
    for i in 0..3 {
        let id = cluster.member_id(i).await;
        let row = rows.iter().find(|r| r[0] == cluster.url(i)).unwrap_or_else(|| panic!("member {i} in:\n{status}"));
        assert_eq!(row.len(), 10, "url, id, version, db size, leader, learner, term, index, applied, errors: {row:?}");
        assert_eq!(row[1], format!("{id:x}"));
        assert_eq!(row[4], (id == leader_id).to_string(), "{status}");
        assert_eq!(row[5], "false");
        assert!(row[6].parse::<u64>().is_ok_and(|t| t > 0), "{row:?}");
        assert!(row[7].parse::<u64>().is_ok_and(|t| t > 0), "{row:?}");
        assert!(row[3].ends_with('B'), "human size: {row:?}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["-w", "json", "endpoint", "status", "--cluster"])).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(3));
    assert!(json.as_array().unwrap().iter().all(|s| s["Status"]["leader"].as_u64() == Some(leader_id)));

    let health = ctl.ok(&["endpoint", "health", "--cluster"]);
    let mut lines: Vec<&str> = health.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{health}");
    let mut urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    urls.sort();
    for (line, url) in lines.iter().zip(&urls) {
        assert!(line.starts_with(&format!("{url} is healthy: successfully committed proposal: took = ")), "{line}");
    }
    let table = ctl.ok(&["-w", "table", "endpoint", "health", "--cluster"]);
    assert_eq!(table.lines().count(), 7, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_hashkv_passes_when_every_member_agrees() {
    let mut cluster = Cluster::start(3, &[]).await;
    let ctl = cluster_ctl(&cluster);
    for i in 0..20 {
        ctl.ok(&["put", &format!("h/{i}"), &format!("v{i}")]);
    }
    ctl.ok(&["del", "h/3"]);
    let rev = cluster.converged().await;

    let out = ctl.ok(&["check", "hashkv", "--cluster"]);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(", ").collect()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for row in &rows {
        assert_eq!(row.len(), 5, "url, id, revision, hash, compact revision: {row:?}");
        assert!(row[2].parse::<i64>().is_ok_and(|r| r >= rev), "{row:?}");
        assert_eq!(row[3], rows[0][3], "same hash everywhere:\n{out}");
        assert_eq!(row[2], rows[0][2], "one common revision:\n{out}");
    }
    let ids: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(ids.len(), 3, "three distinct members:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_from_any_endpoint_hands_leadership_to_the_target() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let target = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let (leader_id, target_id) = (cluster.member_id(leader).await, cluster.member_id(target).await);

    // Given only a follower's endpoint, the leader is found through the member list.
    let ctl = Ctl::new(&[format!("127.0.0.1:{}", cluster.client_ports[other])]);
    let out = ctl.ok(&["--command-timeout", "15s", "move-leader", &format!("{target_id:x}")]);
    assert_eq!(out, format!("Leadership transferred from {leader_id:x} to {target_id:x}\n"));
    assert_eq!(cluster.leader().await, target, "every member now names the target as leader");

    let err = cluster_ctl(&cluster).fails(&["move-leader", "12345"]);
    assert!(err.contains("bad leader transferee"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_runs_the_branch_its_compares_choose_and_refuses_bad_input_like_etcdctl() {
    let (_dir, mut keel, ctl) = single().await;
    assert_eq!(ctl.ok(&["put", "t/key", "v1"]), "OK\n");
    let txn = |args: &[&str], input: &str| {
        let out = ctl.run_with_stdin(args, input);
        assert!(out.status.success(), "txn {input:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    };

    // The compare holds: the success requests run, each response after an empty line.
    let out = txn(
        &["txn"],
        "value(\"t/key\") = \"v1\"\n\nput t/key v2 --prev-kv\nput t/other \"two words\"\nget --prefix t/\n\nput t/key failed\n\n",
    );
    assert_eq!(out, "SUCCESS\n\nOK\nt/key\nv1\n\nOK\n\nt/key\nv2\nt/other\ntwo words\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "t/"]), "t/key\nv2\nt/other\ntwo words\n");

    // The compares fail (short target names, and the input ends without the last empty line):
    // only the failure requests run, and a FAILURE is still a success for the command.
    let out = txn(&["txn"], "val(\"t/key\") = \"v1\"\nm(\"t/key\") > \"0\"\n\nput t/key v3\n\ndel t/other\nget t/key");
    assert_eq!(out, "FAILURE\n\n1\n\nt/key\nv2\n");
    assert_eq!(ctl.ok(&["get", "--prefix", "t/"]), "t/key\nv2\n", "the success branch did not run");

    // JSON is the TxnResponse as etcdctl prints it; -i prints etcdctl's prompts first.
    let json: serde_json::Value =
        serde_json::from_str(&txn(&["-w", "json", "txn"], "version(\"t/key\") = \"2\"\n\nget t/key\n\n\n"))
            .expect("json");
    assert_eq!(json["succeeded"], true);
    assert_eq!(json["responses"][0]["Response"]["response_range"]["kvs"][0]["value"], "djI=", "base64 of v2");
    assert_eq!(json["responses"][0]["Response"]["response_range"]["count"], 1);
    let revision = json["header"]["revision"].as_i64().expect("revision");
    let out = txn(&["txn", "-i"], "create(\"t/new\") = \"0\"\n\nput t/new x\n\n\n");
    assert_eq!(out, "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\nOK\n");
    assert_eq!(ctl.ok(&["get", "t/new"]), "t/new\nx\n");

    // Bad input fails with the line and the problem, and nothing is sent: the valid requests
    // before the bad line do not run either.
    for (input, expected) in [
        (
            "valu(\"t/key\") = \"v2\"\n\nput t/key bad\n\n",
            "line 1: bad compare \"valu(\"t/key\") = \"v2\"\": unknown target valu",
        ),
        ("value(\"t/key\") = \"v2\"\n\nput t/key bad\nfrob t/key\n\n", "line 4: bad request \"frob t/key\""),
        ("\n\nput t/key bad\nput t/key\n", "line 4: bad request \"put t/key\": put needs a key and a value"),
    ] {
        let out = ctl.run_with_stdin(&["txn"], input);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input:?} was accepted: {}", String::from_utf8_lossy(&out.stdout));
        assert!(err.contains(expected), "{input:?}: {err}");
        assert!(out.stdout.is_empty(), "{input:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert_eq!(ctl.ok(&["get", "t/key"]), "t/key\nv2\n");
    let json: serde_json::Value = serde_json::from_str(&ctl.ok(&["-w", "json", "get", "t/key"])).expect("json");
    assert_eq!(json["header"]["revision"].as_i64(), Some(revision + 1), "only the -i put wrote since");
    keel.terminate();
}
