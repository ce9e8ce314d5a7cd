//! TLS for the client and peer listeners and for connections to peers, with rustls (TLS 1.3 only,
//! ring provider, no OpenSSL).
//!
//! - [`ServerTls`]: a listener's certificate, key and (optionally) the CA whose client certificates
//!   it accepts. With [`ClientAuth::Required`] a client without a certificate signed by that CA, or
//!   with an expired one, is refused during the handshake.
//! - [`ClientTls`]: what this member presents to peers and which CA it trusts for their server
//!   certificates.
//! - [`incoming`]: an accept loop that performs handshakes concurrently, bounded in number and time.
//! - [`certs`]: certificate generation for `keel certs`.
//! - [`CoalescedWrites`] (`coalesce.rs`): every dialled hyper/h2 connection (members to peers,
//!   `keel ctl`, `keel bench`) writes through it, so responses and requests finished together, and a response's payload and
//!   trailers, leave in one write.
//!
//! Invariant — rotation without restart: both kinds re-read their files when the files' size or
//! modification time changed since the last load, at the next handshake. A rotation that leaves the
//! files unreadable or inconsistent (say, a new certificate next to the old key) keeps the last good
//! configuration and logs why, so a half-finished rotation never takes a listener down; established
//! connections keep the certificate they were opened with.

pub mod certs;
mod coalesce;
mod incoming;

pub use coalesce::CoalescedWrites;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

pub use incoming::{TlsIncoming, incoming};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate file holds no PEM certificate.
    #[error("{0} contains no PEM certificate")]
    NoCertificate(PathBuf),
    /// A key file holds no PEM private key.
    #[error("{0} contains no PEM private key")]
    NoKey(PathBuf),
    /// rustls refused the material (a key that does not match the certificate, a bad CA, ...).
    #[error("invalid TLS configuration ({context}): {reason}")]
    Invalid {
        /// Which files were being combined.
        context: String,
        /// What rustls said.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A host name is neither an IP address nor a valid DNS name.
    #[error("`{0}` is neither an IP address nor a DNS name")]
    BadHost(String),
    /// Writing generated files failed or would overwrite existing ones.
    #[error("{0}")]
    Write(String),
}

/// The files behind one side of a TLS configuration, named after etcd's flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (`--cert-file`, `--peer-cert-file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (`--key-file`, `--peer-key-file`).
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle (`--trusted-ca-file`, `--peer-trusted-ca-file`).
    pub trusted_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        [&self.cert_file, &self.key_file, &self.trusted_ca_file].into_iter().flatten().cloned().collect()
    }
}

/// Whether a server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A client certificate signed by the trusted CA is required (`--client-cert-auth`).
    Required,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(context: &str, err: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { context: context.to_string(), reason: err.to_string() }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|err| invalid(&path.display().to_string(), err))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey(path.to_path_buf()))
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|err| invalid(&format!("CA {}", path.display()), err))?;
    }
    Ok(Arc::new(roots))
}

fn required<'a>(file: &'a Option<PathBuf>, what: &str) -> Result<&'a Path, TlsError> {
    file.as_deref().ok_or_else(|| TlsError::Invalid { context: what.to_string(), reason: "file not given".into() })
}

/// Size and modification time of each file: what tells a rotation apart.
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    paths
        .iter()
        .map(|path| std::fs::metadata(path).ok().and_then(|meta| Some((meta.modified().ok()?, meta.len()))))
        .collect()
}

/// A configuration rebuilt from its files whenever they change.
#[derive(Debug)]
struct Reloading<T> {
    paths: Vec<PathBuf>,
    /// The fingerprint the configuration was built from, and the configuration. Held only to
    /// compare fingerprints and, on a change, to rebuild (rare; the files are small).
    current: Mutex<(Fingerprint, Arc<T>)>,
}

impl<T> Reloading<T> {
    fn new(paths: Vec<PathBuf>, build: impl Fn() -> Result<T, TlsError>) -> Result<Self, TlsError> {
        let print = fingerprint(&paths);
        let config = Arc::new(build()?);
        Ok(Self { paths, current: Mutex::new((print, config)) })
    }

    fn get(&self, build: impl Fn() -> Result<T, TlsError>) -> Arc<T> {
        let print = fingerprint(&self.paths);
        let mut current = self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != print {
            // Record the fingerprint either way, so a broken rotation is reported once, not on
            // every handshake; the next change to the files is tried again.
            current.0 = print;
            match build() {
                Ok(config) => {
                    tracing::info!(files = ?self.paths, "reloaded TLS certificates");
                    current.1 = Arc::new(config);
                }
                Err(err) => tracing::warn!(%err, "TLS files changed but cannot be loaded; keeping the previous ones"),
            }
        }
        current.1.clone()
    }
}

/// A listener's TLS configuration, reloaded when its files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    client_auth: ClientAuth,
    config: Reloading<ServerConfig>,
}

impl ServerTls {
    /// Loads the files (failing now if they are unusable).
    pub fn new(files: TlsFiles, client_auth: ClientAuth) -> Result<Arc<Self>, TlsError> {
        let config = Reloading::new(files.paths(), || build_server(&files, client_auth))?;
        Ok(Arc::new(Self { files, client_auth, config }))
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.get(|| build_server(&self.files, self.client_auth))
    }
}

fn build_server(files: &TlsFiles, client_auth: ClientAuth) -> Result<ServerConfig, TlsError> {
    let cert_file = required(&files.cert_file, "server certificate (--cert-file)")?;
    let key_file = required(&files.key_file, "server key (--key-file)")?;
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let context = format!("{} with {}", cert_file.display(), key_file.display());
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| invalid(&context, err))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required => {
            let ca = required(&files.trusted_ca_file, "client certificate authentication needs a trusted CA")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
                .build()
                .map_err(|err| invalid(&format!("CA {}", ca.display()), err))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|err| invalid(&context, err))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What this process presents when it connects to a TLS server, and whom it trusts.
#[derive(Debug)]
pub struct ClientTls {
    files: TlsFiles,
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Loads the files: a trusted CA is required; a certificate and key are optional, but come
    /// together.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let config = Reloading::new(files.paths(), || build_client(&files))?;
        Ok(Arc::new(Self { files, config }))
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.get(|| build_client(&self.files))
    }

    /// Performs a handshake over `tcp` with the server named `host` (an IP address or DNS name
    /// that its certificate must carry).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name =
            server_name(host).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string()))?;
        tokio_rustls::TlsConnector::from(self.config()).connect(name, tcp).await
    }
}

/// Why a channel to a URL cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Neither `http://` nor `https://`.
    #[error("expected http:// or https://")]
    Scheme,
    /// Not a valid URI.
    #[error("{0}")]
    Invalid(String),
    /// An `https://` URL without TLS settings.
    #[error("an https:// URL needs TLS settings (at least a trusted CA)")]
    NoTls,
}

/// A lazily connecting gRPC channel to `url` (`http://host:port` or `https://host:port`):
/// `configure` sets the endpoint's timeouts and HTTP/2 keep-alives. For `https://` the handshake
/// is made by `tls` (the server's certificate must name the URL's host); without `tls` an
/// `https://` URL is an error. With `source`, connections leave from that address. The connection
/// is made here, not by tonic, so the endpoint's TCP options do not apply: every connection has
/// `TCP_NODELAY` set and writes through [`CoalescedWrites`]. Shared by members (peer connections),
/// `keel ctl`, `keel bench` and the chaos suite (client connections).
pub fn lazy_channel(
    url: &str,
    tls: Option<Arc<ClientTls>>,
    source: Option<IpAddr>,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, ChannelError> {
    let (secure, host_port) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return Err(ChannelError::Scheme),
    };
    let host_port = host_port.trim_end_matches('/').to_string();
    // tonic sees a plain http:// URI either way; for TLS the connector performs the handshake.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host_port}"))
        .map_err(|e| ChannelError::Invalid(e.to_string()))?;
    let endpoint = configure(endpoint);
    let client_tls = match (secure, tls) {
        (false, _) => None,
        (true, Some(client_tls)) => Some(client_tls),
        (true, None) => return Err(ChannelError::NoTls),
    };
    let host = host_port.rsplit_once(':').map_or(host_port.as_str(), |(host, _)| host).to_string();
    // Our own connector for both schemes, so every connection writes through `CoalescedWrites`;
    // tonic still applies the endpoint's connect timeout around it.
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (client_tls, host_port, host) = (client_tls.clone(), host_port.clone(), host.clone());
        async move {
            let tcp = connect_from(&host_port, source).await?;
            tcp.set_nodelay(true)?;
            let stream: Box<dyn DialledStream> = match client_tls {
                Some(client_tls) => Box::new(client_tls.connect(tcp, &host).await?),
                None => Box::new(tcp),
            };
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(CoalescedWrites::new(stream)))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A dialled connection, plain or TLS: one type for the connector to return (the extra
/// indirection per read or write is nothing next to a system call).
trait DialledStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> DialledStream for S {}

/// Connects to `host_port`, leaving from `source` when given (trying each resolved address of
/// the same family in turn).
async fn connect_from(host_port: &str, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(host_port).await;
    };
    let mut last_error = None;
    for addr in tokio::net::lookup_host(host_port).await?.filter(|a| a.is_ipv4() == source.is_ipv4()) {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{host_port} has no address of the same family as the source address {source}"),
        )
    }))
}

/// The name a server certificate must match, from a URL's host part (brackets allowed for IPv6).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string()).map_err(|_| TlsError::BadHost(host.to_string()))
}

fn build_client(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let ca = required(&files.trusted_ca_file, "trusted CA for servers")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| invalid("client", err))?
        .with_root_certificates(load_roots(ca)?);
    let mut config = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|err| invalid(&format!("{} with {}", cert.display(), key.display()), err))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(invalid("client certificate", "a certificate and a key must be given together")),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The identity a verified client certificate carries: its subject's common name (etcd's user name
/// under client-certificate authentication) and organizations (groups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject CN, when present and valid UTF-8.
    pub common_name: Option<String>,
    /// Subject O values.
    pub organizations: Vec<String>,
}

impl CertIdentity {
    /// Reads the subject of a DER certificate; `None` when it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let common_name = subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
        let organizations = subject.iter_organization().filter_map(|o| o.as_str().ok()).map(str::to_string).collect();
        Some(Self { common_name, organizations })
    }
}

#[cfg(test)]
mod tests;

/// A listening socket and, for `https://` URLs, its TLS configuration.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub tcp: tokio::net::TcpListener,
    /// TLS for this listener; `None` serves plain TCP.
    pub tls: Option<Arc<ServerTls>>,
}

/// A server-side connection, plain or TLS, so one server can serve both kinds of listener.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, handshake completed.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// The verified client certificate's identity, if the connection has one.
    pub fn client_identity(&self) -> Option<CertIdentity> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(stream) => stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|c| CertIdentity::from_der(c)),
        }
    }

    /// The remote address.
    pub fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            MaybeTls::Plain(tcp) => tcp.peer_addr().ok(),
            MaybeTls::Tls(stream) => stream.get_ref().0.peer_addr().ok(),
        }
    }
}

impl tokio::io::AsyncRead for MaybeTls {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for MaybeTls {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => std::pin::Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => std::pin::Pin::new(io).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(io) => io.is_write_vectored(),
            MaybeTls::Tls(io) => io.is_write_vectored(),
        }
    }
}

/// Every established connection from `listeners`: plain ones as accepted, TLS ones once their
/// handshake succeeded. Small requests must not wait for Nagle's algorithm, so `TCP_NODELAY` is set.
pub fn accept_all(listeners: Vec<Listener>) -> impl futures::Stream<Item = std::io::Result<MaybeTls>> + Send + 'static {
    use futures::StreamExt;
    let streams = listeners.into_iter().map(|listener| match listener.tls {
        None => tokio_stream::wrappers::TcpListenerStream::new(listener.tcp)
            .map(|conn| {
                let tcp = conn?;
                tcp.set_nodelay(true)?;
                Ok(MaybeTls::Plain(tcp))
            })
            .boxed(),
        Some(tls) => incoming(listener.tcp, tls).map(|conn| conn.map(|stream| MaybeTls::Tls(Box::new(stream)))).boxed(),
    });
    futures::stream::select_all(streams)
}
