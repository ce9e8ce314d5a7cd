//! TLS end to end with real processes: a 3-member cluster with mutual TLS on client and peer URLs
//! driven by etcdctl 3.4, a member with a foreign-CA peer certificate that must not get in, and
//! certificate rotation without a restart.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keel_store::tls::{ClientTls, TlsFiles};
use support::cluster::{Cluster, TIMING};
use support::pki::{Pki, keel_certs};
use support::{KeelProcess, READY_BOUND, free_port};

fn etcdctl(endpoints: &[String], tls: &[String], args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=10s")
        .args(tls)
        .args(args)
        .output()
        .expect("run etcdctl (Debian's etcd-client)")
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "etcdctl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_drives_a_three_member_cluster_over_mutual_tls() {
    let pki = Arc::new(Pki::new("keel-test-ca", &["root", "alice"]));
    let mut cluster = Cluster::start_tls(3, &[], pki.clone()).await;
    let endpoints: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let tls = pki.etcdctl_flags("alice");

    // A watcher on one member sees a write made through another.
    let mut watcher = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints[2]))
        .args(&tls)
        .args(["watch", "greeting"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start etcdctl watch");
    // Give the watch time to be created before the write (a later start would miss it: it watches
    // from "now"); the check below is bounded either way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ok(etcdctl(&endpoints[..1], &tls, &["put", "greeting", "hello over TLS"]));
    assert_eq!(ok(etcdctl(&endpoints[1..2], &tls, &["get", "greeting", "--print-value-only"])), "hello over TLS\n");

    let mut seen = String::new();
    let stdout = watcher.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut got = Vec::new();
        while got.len() < 3 {
            match lines.next() {
                Some(Ok(line)) => got.push(line),
                _ => break,
            }
        }
        got.join("\n")
    });
    let deadline = std::time::Instant::now() + READY_BOUND;
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    if let Ok(lines) = reader.join() {
        seen = lines;
    }
    assert_eq!(seen, "PUT\ngreeting\nhello over TLS", "the watch event arrives over TLS");

    let members = ok(etcdctl(&endpoints, &tls, &["member", "list"]));
    assert_eq!(members.lines().count(), 3, "{members}");
    for i in 0..3 {
        assert!(members.contains(&cluster.peer_url(i)), "{members} lists {}", cluster.peer_url(i));
        assert!(members.contains(&cluster.url(i)), "{members} lists {}", cluster.url(i));
    }

    // Plaintext to a TLS port, and TLS without a client certificate, are both refused.
    let plain = format!("127.0.0.1:{}", cluster.client_ports[0]);
    assert!(!etcdctl(&[plain], &[], &["get", "greeting"]).status.success());
    let no_cert = vec![format!("--cacert={}", pki.path("ca.crt").display())];
    assert!(!etcdctl(&endpoints[..1], &no_cert, &["get", "greeting"]).status.success());
    assert_eq!(cluster.live().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_foreign_ca_peer_certificate_cannot_join_and_the_cluster_keeps_serving() {
    let pki = Arc::new(Pki::new("keel-test-ca", &["root"]));
    let mut cluster = Cluster::start_tls(3, &[], pki.clone()).await;
    let mut client = cluster.client_for(&[0, 1, 2]).await;
    client.put("before", "1", None).await.expect("put");

    // The operator adds the member; its process then starts with certificates from another CA.
    let new = cluster.reserve_member();
    let added = client.member_add([cluster.peer_url(new)], None).await.expect("member add");
    let added_id = added.member().expect("added member").id();
    let foreign = Pki::new("intruder-ca", &[]);
    let mut flags = foreign.store_flags();
    flags.extend(["--initial-cluster".to_string(), cluster.initial_cluster()]);
    flags.extend(["--initial-cluster-state".to_string(), "existing".to_string()]);
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let data_dir = cluster.dir.path().join(&cluster.names[new]);
    let mut intruder = KeelProcess::spawn_with_tls(
        &cluster.names[new],
        &data_dir,
        cluster.client_ports[new],
        cluster.peer_ports[new],
        TIMING,
        &extra,
        Some((&[], foreign.options(None))),
    );

    // It cannot learn the cluster's identity (every handshake fails both ways), so it gives up
    // once its join bound (60 s) has passed.
    // Serving means every put succeeds; one that timed out (a member stalled on a loaded machine
    // for longer than the request timeout) may be asked again, but not more than twice in a row.
    let deadline = std::time::Instant::now() + READY_BOUND + Duration::from_secs(30);
    let mut timed_out_in_a_row = 0;
    while intruder.is_running() && std::time::Instant::now() < deadline {
        match client.put("during", "x", None).await {
            Ok(_) => timed_out_in_a_row = 0,
            Err(err) if support::timed_out(&err) && timed_out_in_a_row < 2 => {
                timed_out_in_a_row += 1;
                eprintln!("a put timed out while the intruder tries ({timed_out_in_a_row} in a row): {err}");
            }
            Err(err) => panic!("the cluster serves while the intruder tries: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!intruder.is_running(), "the foreign member must fail to join; log:\n{}", intruder.log_text());
    assert!(intruder.log_text().contains("cannot join"), "{}", intruder.log_text());

    // The cluster never heard from it: the added member is still unstarted, data is intact.
    let members = client.member_list().await.expect("member list");
    let unstarted = members.members().iter().find(|m| m.id() == added_id).expect("added member listed");
    assert!(unstarted.name().is_empty(), "the intruder never published itself: {unstarted:?}");
    let value = client.get("before", None).await.expect("get");
    assert_eq!(value.kvs()[0].value_str().unwrap(), "1");
    client.put("after", "2", None).await.expect("still writable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_server_certificate_files_reach_new_connections_without_a_restart() {
    let pki = Pki::new("keel-test-ca", &["root"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = pki.store_flags();
    let mut member = KeelProcess::spawn_with_tls(
        "rotating",
        &dir.path().join("data"),
        free_port(),
        free_port(),
        &["--heartbeat-interval", "50", "--election-timeout", "500"],
        &[],
        Some((&flags, pki.options(Some("root")))),
    );
    let mut client = member.ready().await;
    client.put("k", "v", None).await.expect("put");

    let trust = ClientTls::new(TlsFiles {
        cert_file: Some(pki.path("root.crt")),
        key_file: Some(pki.path("root.key")),
        trusted_ca_file: Some(pki.path("ca.crt")),
    })
    .expect("client TLS");
    let served = |port: u16| {
        let trust = trust.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
            let stream = trust.connect(tcp, "127.0.0.1").await.expect("handshake");
            stream.get_ref().1.peer_certificates().expect("server certificate")[0].to_vec()
        }
    };
    let before = served(member.client_port).await;
    assert_eq!(before, pem_der(&pki.path("server.crt")));

    keel_certs(pki.dir.path(), &["server", "--name", "server", "--hosts", "127.0.0.1", "--force"]);
    let after = served(member.client_port).await;
    assert_ne!(after, before, "a new connection gets the new certificate");
    assert_eq!(after, pem_der(&pki.path("server.crt")));
    assert!(member.is_running(), "no restart");
    client.put("k", "still served on the old connection", None).await.expect("old connection works");
}

/// The DER bytes of the first certificate in a PEM file.
fn pem_der(path: &std::path::Path) -> Vec<u8> {
    keel_store::tls::load_certs(path).expect("certificate file")[0].to_vec()
}
