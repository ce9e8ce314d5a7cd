//! `keel certs`: creates a CA and the certificates it signs, as files ready for the TLS flags of
//! `keel store` (`--cert-file`, `--peer-cert-file`, ...) and for clients (etcdctl's `--cacert`,
//! `--cert`, `--key`).
//!
//! Every file lands in `--dir` as `<name>.crt` and `<name>.key` (keys mode 0600); nothing existing is
//! replaced without `--force`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use keel_store::tls::certs::{self, Kind, Validity};

/// Certificate tooling.
#[derive(Debug, Subcommand)]
pub enum Certs {
    /// Create a self-signed CA (`<dir>/<name>.crt`, `<dir>/<name>.key`).
    Ca(CaArgs),
    /// Issue a server certificate for client listeners (`--cert-file`/`--key-file`).
    Server(LeafArgs),
    /// Issue a peer certificate (`--peer-cert-file`/`--peer-key-file`): server and client use.
    Peer(LeafArgs),
    /// Issue a client certificate: the common name is the user, `--groups` become organizations.
    Client(ClientArgs),
}

/// Where files go and how long they are valid.
#[derive(Debug, Args)]
pub struct Common {
    /// Directory to write into (created with mode 0700 if missing).
    #[arg(long, default_value = "certs")]
    dir: PathBuf,
    /// Days of validity.
    #[arg(long)]
    days: Option<u32>,
    /// Replace existing files of the same name.
    #[arg(long)]
    force: bool,
}

/// `keel certs ca`.
#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(flatten)]
    common: Common,
    /// File name stem of the CA.
    #[arg(long, default_value = "ca")]
    name: String,
    /// The CA's common name.
    #[arg(long, default_value = "keel-ca")]
    common_name: String,
}

/// `keel certs server` and `keel certs peer`.
#[derive(Debug, Args)]
pub struct LeafArgs {
    #[command(flatten)]
    common: Common,
    /// File name stem and common name of the certificate (e.g. the member's name).
    #[arg(long)]
    name: String,
    /// IP addresses and DNS names clients use to reach the server, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    hosts: Vec<String>,
    /// File name stem of the signing CA in --dir.
    #[arg(long, default_value = "ca")]
    ca: String,
}

/// `keel certs client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    common: Common,
    /// The user name: the certificate's common name and file name stem.
    #[arg(long)]
    name: String,
    /// Groups (certificate organizations), comma-separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// File name stem of the signing CA in --dir.
    #[arg(long, default_value = "ca")]
    ca: String,
}

/// Runs one `keel certs` command, printing the files written.
pub fn run(command: Certs) -> Result<()> {
    let (common, name, issued) = match command {
        Certs::Ca(args) => {
            let validity = Validity::days_from_now(args.common.days.unwrap_or(3650));
            let issued = certs::new_ca(&args.common_name, validity)?;
            (args.common, args.name, issued)
        }
        Certs::Server(args) => leaf(Kind::Server, args)?,
        Certs::Peer(args) => leaf(Kind::Peer, args)?,
        Certs::Client(args) => {
            let ca = certs::read_ca(&args.common.dir, &args.ca)
                .context("reading the CA (create it with `keel certs ca`)")?;
            let validity = Validity::days_from_now(args.common.days.unwrap_or(365));
            let issued = certs::issue(&ca, Kind::Client, &args.name, &args.groups, &[], validity)?;
            (args.common, args.name, issued)
        }
    };
    let (cert, key) = certs::write(&common.dir, &name, &issued, common.force)?;
    println!("{}", cert.display());
    println!("{}", key.display());
    Ok(())
}

fn leaf(kind: Kind, args: LeafArgs) -> Result<(Common, String, certs::Issued)> {
    let ca = certs::read_ca(&args.common.dir, &args.ca).context("reading the CA (create it with `keel certs ca`)")?;
    let validity = Validity::days_from_now(args.common.days.unwrap_or(365));
    let issued = certs::issue(&ca, kind, &args.name, &[], &args.hosts, validity)?;
    Ok((args.common, args.name, issued))
}
