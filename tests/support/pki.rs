//! Certificates for TLS tests, made with `keel certs` itself: a CA, a server certificate and a peer
//! certificate for 127.0.0.1, and client certificates whose common names are user names.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// A directory of certificates signed by one CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

/// Runs `keel certs <args>` and fails the test with its output if it fails.
pub fn keel_certs(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run keel certs");
    assert!(out.status.success(), "keel certs {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// A CA named `ca` (common name `ca_name`) with `server`, `peer` and the given client
    /// certificates.
    pub fn new(ca_name: &str, clients: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        keel_certs(dir.path(), &["ca", "--common-name", ca_name]);
        keel_certs(dir.path(), &["server", "--name", "server", "--hosts", "127.0.0.1,localhost"]);
        keel_certs(dir.path(), &["peer", "--name", "peer", "--hosts", "127.0.0.1"]);
        for user in clients {
            keel_certs(dir.path(), &["client", "--name", user]);
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).expect("read certificate file")
    }

    /// `keel store` flags: TLS with client-certificate auth for clients, TLS between peers.
    pub fn store_flags(&self) -> Vec<String> {
        let p = |f: &str| self.path(f).display().to_string();
        vec![
            "--cert-file".into(),
            p("server.crt"),
            "--key-file".into(),
            p("server.key"),
            "--trusted-ca-file".into(),
            p("ca.crt"),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            p("peer.crt"),
            "--peer-key-file".into(),
            p("peer.key"),
            "--peer-trusted-ca-file".into(),
            p("ca.crt"),
        ]
    }

    /// etcd-client options presenting `user`'s certificate (or none).
    pub fn options(&self, user: Option<&str>) -> ConnectOptions {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(self.read("ca.crt")));
        if let Some(user) = user {
            tls =
                tls.identity(Identity::from_pem(self.read(&format!("{user}.crt")), self.read(&format!("{user}.key"))));
        }
        ConnectOptions::new().with_tls(tls)
    }

    /// etcdctl flags presenting `user`'s certificate.
    pub fn etcdctl_flags(&self, user: &str) -> Vec<String> {
        vec![
            format!("--cacert={}", self.path("ca.crt").display()),
            format!("--cert={}", self.path(&format!("{user}.crt")).display()),
            format!("--key={}", self.path(&format!("{user}.key")).display()),
        ]
    }
}
