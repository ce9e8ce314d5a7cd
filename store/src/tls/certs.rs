//! Certificate generation for `keel certs`: a CA, and server, peer and client certificates it signs.
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM, accepted by rustls, Go (etcdctl) and OpenSSL alike. Server and
//! peer certificates carry the given hosts as subject alternative names (IP addresses as IP SANs,
//! the rest as DNS names); peer certificates serve both ends of a peer connection. A client
//! certificate's CN is the user name and its O values the groups, as etcd and Kubernetes read them.
//!
//! Invariants: private keys are written with mode 0600 and never overwrite an existing file unless
//! asked to; a key is written before its certificate, so a certificate never names a key that is
//! not on disk.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A listener's certificate (`--cert-file`): TLS server authentication.
    Server,
    /// A member's peer certificate (`--peer-cert-file`): server and client authentication.
    Peer,
    /// A user's certificate: client authentication; CN is the user name.
    Client,
}

/// A certificate's validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (tolerating clock skew between machines) until `days` from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self { not_before: now - Duration::hours(1), not_after: now + Duration::days(i64::from(days)) }
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

fn generate(err: rcgen::Error) -> TlsError {
    TlsError::Generate(err.to_string())
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TlsError::Generate("no randomness for a serial number".into()))?;
    // A positive 127-bit integer, as RFC 5280 asks.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn san(host: &str) -> Result<SanType, TlsError> {
    let host = host.trim();
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    if !valid {
        return Err(TlsError::BadHost(host.to_string()));
    }
    Ok(SanType::DnsName(host.try_into().map_err(|_| TlsError::BadHost(host.to_string()))?))
}

fn name(common_name: &str, organizations: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for org in organizations {
        dn.push(DnType::OrganizationName, org.as_str());
    }
    dn
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str, validity: Validity) -> Result<Issued, TlsError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A certificate of `kind` signed by the CA in `ca`.
pub fn issue(
    ca: &Issued,
    kind: Kind,
    common_name: &str,
    organizations: &[String],
    hosts: &[String],
    validity: Validity,
) -> Result<Issued, TlsError> {
    if common_name.is_empty() {
        return Err(TlsError::Generate("a certificate needs a non-empty name (CN)".into()));
    }
    if kind != Kind::Client && hosts.is_empty() {
        return Err(TlsError::Generate(
            "server and peer certificates need at least one host (IP address or DNS name) clients connect to".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, organizations);
    params.subject_alt_names = hosts.iter().map(|h| san(h)).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match kind {
        Kind::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Kind::Peer => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Reads a CA written by [`write`] (`<dir>/<name>.crt` and `.key`).
pub fn read_ca(dir: &Path, name: &str) -> Result<Issued, TlsError> {
    let read =
        |path: PathBuf| std::fs::read_to_string(&path).map_err(|source| TlsError::Read { path: path.clone(), source });
    Ok(Issued { cert_pem: read(dir.join(format!("{name}.crt")))?, key_pem: read(dir.join(format!("{name}.key")))? })
}

/// Writes `<dir>/<name>.key` (mode 0600) and `<dir>/<name>.crt` (0644), creating `dir` (0700) if
/// needed; refuses to replace existing files unless `overwrite`. Returns the certificate and key
/// paths.
pub fn write(dir: &Path, name: &str, issued: &Issued, overwrite: bool) -> Result<(PathBuf, PathBuf), TlsError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |what: &Path, err: std::io::Error| TlsError::Write(format!("cannot write {}: {err}", what.display()));
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(TlsError::Write(format!("`{name}` is not a usable file name")));
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|err| failed(dir, err))?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    if !overwrite {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(TlsError::Write(format!("{} already exists; pass --force to replace it", path.display())));
            }
        }
    }
    for (path, contents, mode) in [(&key_path, &issued.key_pem, 0o600), (&cert_path, &issued.cert_pem, 0o644)] {
        // Write next to the target and rename, so a reader (a listener reloading its certificate)
        // never sees a half-written file.
        let partial = dir.join(format!(".{name}.{}.partial", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&partial)
            .map_err(|err| failed(&partial, err))?;
        file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).map_err(|err| failed(&partial, err))?;
        std::fs::rename(&partial, path).map_err(|err| failed(path, err))?;
    }
    Ok((cert_path, key_path))
}
