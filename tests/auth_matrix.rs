//! Who gets in, on a 3-member cluster with mutual TLS, client-certificate authentication and auth
//! enabled: every kind of caller gets exactly its expected outcome (refused handshake,
//! PermissionDenied, or success), and nothing that was refused changed any data. Auth changes are
//! made through one member and enforced by the others (they travel through the log), and a token
//! issued by one member is accepted by another.

mod support;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Permission, Txn, TxnOp, UserAddOptions};
use support::cluster::Cluster;
use support::pki::{Pki, keel_certs};
use tonic::Code;

/// What a request ended with.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The TLS handshake (or the connection) was refused: no request got through.
    Refused,
    /// A gRPC status other than OK.
    Status(Code),
    /// Success.
    Ok,
}

fn outcome<T>(result: Result<T, etcd_client::Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(etcd_client::Error::GRpcStatus(status)) if status.code() == Code::Unavailable => Outcome::Refused,
        // A status with a transport error inside was made by the client, not sent by the server:
        // the connection failed (a refused handshake, or a plaintext client reading the server's
        // TLS alert as broken HTTP/2). The request never reached the server.
        Err(etcd_client::Error::GRpcStatus(status)) if std::error::Error::source(&status).is_some() => Outcome::Refused,
        Err(etcd_client::Error::GRpcStatus(status)) => Outcome::Status(status.code()),
        Err(_) => Outcome::Refused,
    }
}

async fn connect(urls: Vec<String>, options: ConnectOptions) -> Result<Client, etcd_client::Error> {
    let options = options.with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(10));
    Client::connect(urls, Some(options)).await
}

/// A put through a fresh client: connection, handshake and request all count.
async fn try_put(urls: Vec<String>, options: ConnectOptions, key: &str) -> Outcome {
    match connect(urls, options).await {
        Ok(mut client) => outcome(client.put(key, "x", None).await),
        Err(err) => outcome::<()>(Err(err)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gets_exactly_its_outcome_and_refusals_change_nothing() {
    let pki = Arc::new(Pki::new("keel-test-ca", &["root", "alice", "bob", "ghost"]));
    // A certificate from another CA, and an expired one from ours.
    let foreign = Pki::new("intruder-ca", &["mallory"]);
    keel_certs(pki.dir.path(), &["client", "--name", "expired", "--days", "0"]);

    let mut cluster = Cluster::start_tls(3, &["--bcrypt-cost", "4"], pki.clone()).await;
    let urls = |i: usize| vec![cluster.url(i)];
    let cert = |user: &str| pki.options(Some(user));
    let mut root = cluster.client(0).await;

    // Users and roles, set up through member 0 before auth is on.
    let auth = &mut root;
    auth.user_add("root", "rootpw", None).await.expect("add root");
    auth.user_grant_role("root", "root").await.expect("root role");
    auth.role_add("app").await.expect("role app");
    auth.role_grant_permission("app", Permission::read_write("app/").with_prefix()).await.expect("grant");
    auth.user_add("alice", "", Some(UserAddOptions::new().with_no_pwd())).await.expect("cert-only alice");
    auth.user_grant_role("alice", "app").await.expect("alice app");
    auth.user_add("bob", "", Some(UserAddOptions::new().with_no_pwd())).await.expect("bob, no roles");
    for (user, password) in [("carol", "carolpw"), ("dave", "davepw")] {
        auth.user_add(user, password, None).await.expect("password user");
        auth.user_grant_role(user, "app").await.expect("grant app");
    }
    auth.auth_enable().await.expect("auth enable");

    // Member 2 enforces what member 0 was told, through the log.
    let mut alice = connect(urls(2), cert("alice")).await.expect("alice connects");
    assert_eq!(outcome(alice.put("app/alice", "a", None).await), Outcome::Ok);
    assert_eq!(outcome(alice.get("app/alice", None).await), Outcome::Ok);

    // The matrix. Password users connect with bob's certificate (the handshake needs one); their
    // token decides who they are.
    let carol = || cert("bob").with_user("carol", "carolpw");
    let cases: Vec<(&str, ConnectOptions, Vec<String>, &str, Outcome)> = vec![
        (
            "plaintext to a TLS port",
            ConnectOptions::new(),
            vec![urls(1)[0].replace("https", "http")],
            "app/p",
            Outcome::Refused,
        ),
        ("no client certificate", pki.options(None), urls(1), "app/n", Outcome::Refused),
        (
            "certificate from a foreign CA",
            ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(pki.path("ca.crt")).unwrap()))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(foreign.path("mallory.crt")).unwrap(),
                        std::fs::read(foreign.path("mallory.key")).unwrap(),
                    )),
            ),
            urls(1),
            "app/m",
            Outcome::Refused,
        ),
        ("expired certificate", cert("expired"), urls(1), "app/e", Outcome::Refused),
        (
            "valid certificate, user without permission",
            cert("bob"),
            urls(1),
            "app/b",
            Outcome::Status(Code::PermissionDenied),
        ),
        ("valid certificate, no such user", cert("ghost"), urls(1), "app/g", Outcome::Status(Code::PermissionDenied)),
        (
            "valid certificate with permission, outside it",
            cert("alice"),
            urls(1),
            "other",
            Outcome::Status(Code::PermissionDenied),
        ),
        ("valid certificate with permission", cert("alice"), urls(1), "app/a2", Outcome::Ok),
        ("password user", carol(), urls(2), "app/carol", Outcome::Ok),
        (
            "wrong password",
            cert("bob").with_user("carol", "wrong"),
            urls(2),
            "app/w",
            Outcome::Status(Code::InvalidArgument),
        ),
    ];
    for (case, options, urls, key, expected) in cases {
        assert_eq!(try_put(urls, options, key).await, expected, "{case}");
    }

    // A transaction touching one key the caller may not write is refused as a whole.
    let txn = Txn::new()
        .when([Compare::version("app/alice", CompareOp::Greater, 0)])
        .and_then([TxnOp::put("app/txn", "1", None), TxnOp::put("other", "1", None)]);
    assert_eq!(outcome(alice.txn(txn).await), Outcome::Status(Code::PermissionDenied));
    // A watch on a range the caller may not read is refused (created and canceled at once, with
    // no watch id); one on its own range is not.
    let (refused, _) = alice.watch("other", None).await.expect("watch stream");
    assert_eq!(refused.watch_id(), -1, "the refused watch gets no id");
    let (allowed, _) = alice.watch("app/", Some(etcd_client::WatchOptions::new().with_prefix())).await.expect("watch");
    assert!(allowed.watch_id() >= 0);
    let watch = std::process::Command::new("timeout")
        .args(["20", "etcdctl", "--endpoints", &cluster.url(1)])
        .args(pki.etcdctl_flags("alice"))
        .args(["watch", "other"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl watch");
    let stderr = String::from_utf8_lossy(&watch.stderr);
    assert!(stderr.contains("permission denied"), "etcdctl reports the refusal: {stderr}");

    // A token from member 0 works on member 1: the signing key is replicated.
    let mut dave = connect(urls(0), cert("bob").with_user("dave", "davepw")).await.expect("dave logs in");
    assert_eq!(outcome(dave.put("app/dave", "d1", None).await), Outcome::Ok);
    // Revoking dave's role (through member 1) takes effect on his next request.
    let mut admin = connect(urls(1), cert("root")).await.expect("root");
    admin.user_revoke_role("dave", "app").await.expect("revoke");
    assert_eq!(outcome(dave.put("app/dave", "d2", None).await), Outcome::Status(Code::PermissionDenied));
    assert_eq!(outcome(dave.get("app/dave", None).await), Outcome::Status(Code::PermissionDenied));
    // Non-root users cannot administer.
    assert_eq!(outcome(alice.user_list().await), Outcome::Status(Code::PermissionDenied));
    assert_eq!(outcome(alice.role_add("mine").await), Outcome::Status(Code::PermissionDenied));

    // Nothing refused changed anything: exactly the permitted writes are stored, on every member.
    let expected: Vec<(String, String)> = [("app/a2", "x"), ("app/alice", "a"), ("app/carol", "x"), ("app/dave", "d1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for i in 0..3 {
        let mut reader = connect(urls(i), cert("root")).await.expect("root");
        let all = reader.get("\0", Some(GetOptions::new().with_from_key())).await.expect("root reads everything");
        let stored: Vec<(String, String)> =
            all.kvs().iter().map(|kv| (kv.key_str().unwrap().into(), kv.value_str().unwrap().into())).collect();
        assert_eq!(stored, expected, "member {i}");
    }
    assert_eq!(cluster.live().len(), 3);
}
