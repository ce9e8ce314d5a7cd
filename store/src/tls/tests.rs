//! Handshake-level tests of the TLS configurations over in-memory pipes: who is let in, and
//! certificate rotation without a restart.

use std::path::Path;

use time::{Duration, OffsetDateTime};

use super::certs::{self, Issued, Kind, Validity};
use super::*;

fn year() -> Validity {
    Validity::days_from_now(365)
}

fn files(dir: &Path, name: &str, ca: &str) -> TlsFiles {
    TlsFiles {
        cert_file: Some(dir.join(format!("{name}.crt"))),
        key_file: Some(dir.join(format!("{name}.key"))),
        trusted_ca_file: Some(dir.join(format!("{ca}.crt"))),
    }
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA `ca`, a foreign CA `other-ca`, a server certificate for 127.0.0.1 and `localhost`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::new_ca("keel-ca", Validity::days_from_now(3650)).unwrap();
        certs::write(dir.path(), "ca", &ca, false).unwrap();
        let other = certs::new_ca("other-ca", Validity::days_from_now(3650)).unwrap();
        certs::write(dir.path(), "other-ca", &other, false).unwrap();
        let server =
            certs::issue(&ca, Kind::Server, "server", &[], &["127.0.0.1".into(), "localhost".into()], year()).unwrap();
        certs::write(dir.path(), "server", &server, false).unwrap();
        Self { dir }
    }

    fn ca(&self, name: &str) -> Issued {
        certs::read_ca(self.dir.path(), name).unwrap()
    }

    fn client(&self, ca: &str, name: &str, validity: Validity) {
        let cert = certs::issue(&self.ca(ca), Kind::Client, name, &["admins".into()], &[], validity).unwrap();
        certs::write(self.dir.path(), name, &cert, true).unwrap();
    }

    fn client_tls(&self, cert: Option<&str>) -> Arc<ClientTls> {
        let mut files = files(self.dir.path(), cert.unwrap_or("none"), "ca");
        if cert.is_none() {
            files.cert_file = None;
            files.key_file = None;
        }
        ClientTls::new(files).unwrap()
    }
}

/// Runs a handshake over a pipe, then one byte each way (TLS 1.3 servers report a refused client
/// certificate after the client's handshake completes). Returns the server's verdict, the
/// client's view of the server certificate, and the client identity the server saw.
async fn handshake(
    server: &ServerTls,
    client: &ClientTls,
    host: &str,
) -> Result<(CertificateDer<'static>, Option<CertIdentity>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.config());
    let connector = tokio_rustls::TlsConnector::from(client.config());
    let name = server_name(host).unwrap();
    let server_side = tokio::spawn(async move {
        let mut stream = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let identity =
            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| CertIdentity::from_der(c));
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        stream.write_all(&byte).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(identity)
    });
    let client_side = async move {
        let mut stream = connector.connect(name, a).await.map_err(|e| e.to_string())?;
        let seen = stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(seen)
    };
    let client_result = client_side.await;
    let server_result = server_side.await.unwrap();
    let identity = server_result?;
    Ok((client_result?, identity))
}

#[tokio::test]
async fn only_clients_with_a_valid_certificate_from_the_trusted_ca_complete_a_handshake() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    pki.client("ca", "alice", year());
    pki.client("other-ca", "mallory", year());
    let now = OffsetDateTime::now_utc();
    pki.client("ca", "expired", Validity { not_before: now - Duration::days(30), not_after: now - Duration::days(1) });
    let server = ServerTls::new(files(dir, "server", "ca"), ClientAuth::Required).unwrap();

    let (_, identity) = handshake(&server, &pki.client_tls(Some("alice")), "127.0.0.1").await.unwrap();
    let identity = identity.expect("the server sees the client certificate");
    assert_eq!(identity.common_name.as_deref(), Some("alice"));
    assert_eq!(identity.organizations, ["admins"]);

    for refused in [None, Some("mallory"), Some("expired")] {
        let result = handshake(&server, &pki.client_tls(refused), "127.0.0.1").await;
        assert!(result.is_err(), "client certificate {refused:?} must be refused");
    }

    // Without --client-cert-auth nobody is asked for a certificate.
    let open = ServerTls::new(files(dir, "server", "ca"), ClientAuth::None).unwrap();
    let (_, identity) = handshake(&open, &pki.client_tls(None), "localhost").await.unwrap();
    assert_eq!(identity, None);
}

#[tokio::test]
async fn a_server_certificate_is_checked_against_the_host_and_the_ca() {
    let pki = Pki::new();
    let server = ServerTls::new(files(pki.dir.path(), "server", "ca"), ClientAuth::None).unwrap();
    assert!(handshake(&server, &pki.client_tls(None), "127.0.0.2").await.is_err(), "host not in the SANs");
    let foreign =
        ClientTls::new(TlsFiles { trusted_ca_file: Some(pki.dir.path().join("other-ca.crt")), ..TlsFiles::default() })
            .unwrap();
    assert!(handshake(&server, &foreign, "127.0.0.1").await.is_err(), "server signed by an untrusted CA");
}

#[tokio::test]
async fn rotated_certificate_files_are_served_without_a_restart() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    let server = ServerTls::new(files(dir, "server", "ca"), ClientAuth::None).unwrap();
    let client = pki.client_tls(None);
    let (before, _) = handshake(&server, &client, "127.0.0.1").await.unwrap();

    let renewed = certs::issue(&pki.ca("ca"), Kind::Server, "server", &[], &["127.0.0.1".into()], year()).unwrap();
    certs::write(dir, "server", &renewed, true).unwrap();
    let (after, _) = handshake(&server, &client, "127.0.0.1").await.unwrap();
    assert_ne!(before, after, "the next handshake presents the new certificate");
    assert_eq!(after, CertificateDer::from_pem_slice(renewed.cert_pem.as_bytes()).unwrap());

    // A broken rotation (a key that does not match) keeps the last good certificate.
    std::fs::write(dir.join("server.key"), certs::new_ca("x", year()).unwrap().key_pem).unwrap();
    let (kept, _) = handshake(&server, &client, "127.0.0.1").await.unwrap();
    assert_eq!(kept, after);
}

#[test]
fn bad_input_to_the_certificate_tools_is_refused_clearly() {
    let pki = Pki::new();
    let ca = pki.ca("ca");
    let err = certs::issue(&ca, Kind::Server, "s", &[], &[], year()).unwrap_err();
    assert!(err.to_string().contains("at least one host"), "{err}");
    let err = certs::issue(&ca, Kind::Server, "s", &[], &["bad host!".into()], year()).unwrap_err();
    assert!(err.to_string().contains("bad host!"), "{err}");
    let err = certs::write(pki.dir.path(), "ca", &ca, false).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = ServerTls::new(files(pki.dir.path(), "missing", "ca"), ClientAuth::None).unwrap_err();
    assert!(err.to_string().contains("missing.crt"), "{err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pki.dir.path().join("server.key")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "keys are private");
}
