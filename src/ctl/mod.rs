//! `keel ctl`: the operator CLI, with etcdctl's global flags and habits (`--endpoints`,
//! `--cacert/--cert/--key`, `--user`, `--dial-timeout`, `--command-timeout`, `-w
//! simple|json|table`).
//!
//! Commands talk to members through the etcd v3 gRPC API only (the same API etcdctl uses), so
//! they work against any member and need nothing else. Offline commands (`snapshot status`,
//! `snapshot restore`) work on files and data directories and contact no member.
//!
//! Invariants: every request carries the command timeout; a command that writes files writes
//! them under a temporary name and renames them only when complete.

mod backup;
mod cluster;
mod defrag;
mod endpoint;
mod kv;
mod output;
mod snapshot;
mod txn;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use keel_proto::etcdserverpb as pb;
use keel_store::tls::{ClientTls, TlsFiles};
use tonic::transport::Channel;

pub use output::WriteOut;

/// etcdctl's global flags.
#[derive(Clone, Debug, Args)]
pub struct Global {
    /// gRPC endpoints, comma-separated (http:// or https://; a bare host:port means http://).
    #[arg(long, global = true, default_value = "127.0.0.1:2379", value_delimiter = ',', env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: Vec<String>,
    /// Verify servers with this CA bundle (PEM).
    #[arg(long, global = true, env = "ETCDCTL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "ETCDCTL_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, global = true, env = "ETCDCTL_KEY")]
    pub key: Option<PathBuf>,
    /// User name and password, `name:password`.
    #[arg(long, global = true, env = "ETCDCTL_USER")]
    pub user: Option<String>,
    /// Time to wait for a connection, e.g. `2s`, `500ms`.
    #[arg(long, global = true, default_value = "2s", value_parser = crate::parse_duration)]
    pub dial_timeout: Duration,
    /// Time allowed for each request, e.g. `5s`.
    #[arg(long, global = true, default_value = "5s", value_parser = crate::parse_duration)]
    pub command_timeout: Duration,
    /// Output format.
    #[arg(short = 'w', long, global = true, value_enum, default_value = "simple")]
    pub write_out: WriteOut,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// Save, inspect and restore snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::Snapshot),
    /// Keep a point-in-time backup: a base snapshot plus a journal of every committed change.
    Backup(backup::Backup),
    /// List, add, remove, promote and update members.
    #[command(subcommand)]
    Member(cluster::Member),
    /// Status and health of each endpoint (or, with --cluster, of every member).
    #[command(subcommand)]
    Endpoint(endpoint::Endpoint),
    /// Transfer leadership to another voting member (id in hex).
    MoveLeader(cluster::MoveLeader),
    /// Discard the key-value history before a revision.
    Compact(cluster::Compact),
    /// List or disarm alarms.
    #[command(subcommand)]
    Alarm(cluster::Alarm),
    /// Consistency checks across members.
    #[command(subcommand)]
    Check(endpoint::Check),
    /// Reclaim the space of deleted and compacted data on each endpoint (or, with --cluster, on
    /// every member); online: writes go on meanwhile.
    Defrag(defrag::Defrag),
    /// Read a key or a range of keys.
    Get(kv::Get),
    /// Write a key.
    Put(kv::Put),
    /// Delete a key or a range of keys; prints how many were deleted.
    Del(kv::Del),
    /// Print changes to a key or a range of keys until Ctrl-C.
    Watch(kv::Watch),
    /// Grant, revoke, inspect, list and keep alive leases (ids in hex).
    #[command(subcommand)]
    Lease(kv::Lease),
    /// Run one transaction read from standard input (compares, success and failure requests).
    Txn(txn::Txn),
}

/// Runs one `keel ctl` command.
pub async fn run(global: Global, command: Ctl) -> Result<()> {
    match command {
        Ctl::Snapshot(cmd) => snapshot::run(&global, cmd).await,
        Ctl::Backup(cmd) => backup::run(&global, cmd).await,
        Ctl::Member(cmd) => cluster::member(&global, cmd).await,
        Ctl::Endpoint(cmd) => endpoint::endpoint(&global, cmd).await,
        Ctl::MoveLeader(cmd) => cluster::move_leader(&global, cmd).await,
        Ctl::Compact(cmd) => cluster::compact(&global, cmd).await,
        Ctl::Alarm(cmd) => cluster::alarm(&global, cmd).await,
        Ctl::Check(cmd) => endpoint::check(&global, cmd).await,
        Ctl::Defrag(cmd) => defrag::run(&global, cmd).await,
        Ctl::Get(cmd) => kv::get(&global, cmd).await,
        Ctl::Put(cmd) => kv::put(&global, cmd).await,
        Ctl::Del(cmd) => kv::del(&global, cmd).await,
        Ctl::Watch(cmd) => kv::watch(&global, cmd).await,
        Ctl::Lease(cmd) => kv::lease(&global, cmd).await,
        Ctl::Txn(cmd) => txn::run(&global, cmd).await,
    }
}

/// Connections and credentials for one command.
pub struct Client {
    global: Global,
    tls: Option<Arc<ClientTls>>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// Loads the TLS files and, with `--user`, authenticates.
    pub async fn connect(global: &Global) -> Result<Self> {
        let tls = match (&global.cacert, &global.cert, &global.key) {
            (None, None, None) => None,
            (cacert, cert, key) => Some(
                ClientTls::new(TlsFiles {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    trusted_ca_file: cacert.clone(),
                })
                .context("loading --cacert/--cert/--key")?,
            ),
        };
        let mut client = Self { global: global.clone(), tls, token: None };
        if let Some(user) = client.global.user.clone() {
            let Some((name, password)) = user.split_once(':') else {
                bail!("--user must be name:password");
            };
            let (_, channel) = client.any_endpoint().await?;
            let resp = pb::auth_client::AuthClient::new(channel)
                .authenticate(
                    client.request(pb::AuthenticateRequest { name: name.to_string(), password: password.to_string() }),
                )
                .await
                .map_err(status_error)?
                .into_inner();
            client.token = Some(resp.token.parse().context("the server's token is not valid metadata")?);
        }
        Ok(client)
    }

    /// The global flags.
    pub fn global(&self) -> &Global {
        &self.global
    }

    /// The endpoints, as URLs (`host:port` becomes `http://host:port`, or `https://` with TLS).
    pub fn endpoint_urls(&self) -> Vec<String> {
        self.global.endpoints.iter().map(|e| self.url(e)).collect()
    }

    fn url(&self, endpoint: &str) -> String {
        if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            endpoint.to_string()
        } else if self.tls.is_some() {
            format!("https://{endpoint}")
        } else {
            format!("http://{endpoint}")
        }
    }

    /// A lazily connecting channel to `endpoint`.
    pub fn channel(&self, endpoint: &str) -> Result<Channel> {
        let url = self.url(endpoint);
        let dial = self.global.dial_timeout;
        keel_store::tls::lazy_channel(&url, self.tls.clone(), None, |e| e.connect_timeout(dial))
            .with_context(|| format!("endpoint {url}"))
    }

    /// The first endpoint that accepts a connection within the dial timeout.
    pub async fn any_endpoint(&self) -> Result<(String, Channel)> {
        let mut last_error = None;
        for endpoint in &self.global.endpoints {
            let channel = self.channel(endpoint)?;
            let mut probe = pb::maintenance_client::MaintenanceClient::new(channel.clone());
            match tokio::time::timeout(self.global.dial_timeout, probe.status(pb::StatusRequest {})).await {
                Ok(Ok(_)) => return Ok((self.url(endpoint), channel)),
                Ok(Err(status)) if status.code() != tonic::Code::Unavailable => {
                    // Reachable (it answered), whatever it thinks of a status request.
                    return Ok((self.url(endpoint), channel));
                }
                Ok(Err(status)) => last_error = Some(format!("{}: {}", self.url(endpoint), status.message())),
                Err(_) => {
                    last_error =
                        Some(format!("{}: no connection within {:?}", self.url(endpoint), self.global.dial_timeout))
                }
            }
        }
        bail!("no endpoint is reachable ({})", last_error.unwrap_or_else(|| "no endpoints given".into()))
    }

    /// A request carrying the token (with `--user`) and the command timeout.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.global.command_timeout);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    /// A request with the token but no deadline, for long streams (snapshots, watches).
    pub fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }
}

/// A gRPC status as an error line like etcdctl's (`Error: etcdserver: ...`).
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
