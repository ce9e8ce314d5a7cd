//! A multi-member cluster of real `keel store` processes on loopback ports, for the replication
//! tests. Members are numbered from 0; a killed member keeps its data directory and can be
//! restarted. Every wait is bounded.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, GetOptions};

use super::pki::Pki;
use super::{KeelProcess, READY_BOUND, free_port};

/// Raft timing for clusters: etcd's defaults, so debug builds sharing two cores do not hold
/// spurious elections.
pub const TIMING: &[&str] = &["--heartbeat-interval", "100", "--election-timeout", "1000"];

pub struct Cluster {
    pub names: Vec<String>,
    pub client_ports: Vec<u16>,
    pub peer_ports: Vec<u16>,
    /// Each member serves Prometheus metrics on its own loopback port (`metric`).
    pub metrics_ports: Vec<u16>,
    pub processes: Vec<Option<KeelProcess>>,
    /// Flags every member starts with (besides identity and timing).
    pub extra: Vec<String>,
    /// TLS everywhere when set: members get the PKI's flags, clients present `root`'s certificate.
    pub pki: Option<std::sync::Arc<Pki>>,
    /// The members' data directories and logs. Declared last so that it is dropped last: a failing
    /// test's members print the end of their logs as they are dropped, which needs the files.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` founding members and waits until they agree on a leader.
    pub async fn start(n: usize, extra: &[&str]) -> Self {
        Self::start_with(n, extra, None).await
    }

    /// Starts `n` founding members with TLS from `pki` everywhere.
    pub async fn start_tls(n: usize, extra: &[&str], pki: std::sync::Arc<Pki>) -> Self {
        Self::start_with(n, extra, Some(pki)).await
    }

    async fn start_with(n: usize, extra: &[&str], pki: Option<std::sync::Arc<Pki>>) -> Self {
        let mut cluster = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            names: (1..=n).map(|i| format!("n{i}")).collect(),
            client_ports: (0..n).map(|_| free_port()).collect(),
            peer_ports: (0..n).map(|_| free_port()).collect(),
            metrics_ports: (0..n).map(|_| free_port()).collect(),
            processes: (0..n).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            pki,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        for i in 0..n {
            cluster.process(i).ready().await;
        }
        cluster.leader().await;
        cluster.wait_started(n).await;
        cluster
    }

    /// Waits (bounded) until every live member lists `n` members, each started (its client URLs
    /// published through the log), so tests compare settled member lists.
    pub async fn wait_started(&mut self, n: usize) {
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        loop {
            let mut settled = true;
            for i in self.live() {
                let listed = match self.client(i).await.member_list().await {
                    Ok(list) => list.members().iter().filter(|m| !m.client_urls().is_empty()).count(),
                    Err(_) => 0,
                };
                settled &= listed == n;
            }
            if settled {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "members never all published their client URLs");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.names[i])
    }

    /// `name=peer URL` for every member so far.
    pub fn initial_cluster(&self) -> String {
        self.names
            .iter()
            .zip(&self.peer_ports)
            .map(|(name, port)| format!("{name}={}://127.0.0.1:{port}", self.scheme()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again) with `--initial-cluster-state state`.
    pub fn spawn(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let metrics = format!("http://127.0.0.1:{}", self.metrics_ports[i]);
        let mut extra: Vec<&str> =
            vec!["--initial-cluster", &initial, "--initial-cluster-state", state, "--listen-metrics-urls", &metrics];
        extra.extend(self.extra.iter().map(String::as_str));
        let flags = self.pki.as_ref().map(|pki| pki.store_flags());
        let tls =
            self.pki.as_ref().zip(flags.as_ref()).map(|(pki, flags)| (flags.as_slice(), pki.options(Some("root"))));
        let process = KeelProcess::spawn_with_tls(
            &self.names[i],
            &self.data_dir(i),
            self.client_ports[i],
            self.peer_ports[i],
            TIMING,
            &extra,
            tls,
        );
        self.processes[i] = Some(process);
    }

    /// Reserves ports and a name for a new member; returns its index (not started).
    pub fn reserve_member(&mut self) -> usize {
        self.names.push(format!("n{}", self.names.len() + 1));
        self.client_ports.push(free_port());
        self.peer_ports.push(free_port());
        self.metrics_ports.push(free_port());
        self.processes.push(None);
        self.names.len() - 1
    }

    pub fn process(&mut self, i: usize) -> &mut KeelProcess {
        self.processes[i].as_mut().expect("member is running")
    }

    pub fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "https" } else { "http" }
    }

    /// Options for clients: `root`'s certificate under TLS.
    pub fn options(&self) -> Option<etcd_client::ConnectOptions> {
        self.pki.as_ref().map(|pki| pki.options(Some("root")))
    }

    pub fn url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_ports[i])
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_ports[i])
    }

    /// Indexes of members whose process is running.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.processes.len()).filter(|&i| self.processes[i].as_mut().is_some_and(|p| p.is_running())).collect()
    }

    /// A client for member `i` only.
    pub async fn client(&self, i: usize) -> Client {
        Client::connect([self.url(i)], self.options()).await.expect("connect")
    }

    /// A client that spreads requests over the given members.
    pub async fn client_for(&self, members: &[usize]) -> Client {
        let urls: Vec<String> = members.iter().map(|&i| self.url(i)).collect();
        Client::connect(urls, self.options()).await.expect("connect")
    }

    /// Member id of member `i`, from its own status.
    pub async fn member_id(&self, i: usize) -> u64 {
        self.client(i).await.status().await.expect("status").header().expect("header").member_id()
    }

    /// Index of the member every live member names as leader (bounded wait).
    pub async fn leader(&mut self) -> usize {
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        loop {
            let live = self.live();
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for &i in &live {
                if let Ok(mut client) = Client::connect([self.url(i)], self.options()).await
                    && let Ok(status) = client.status().await
                {
                    ids.push((i, status.header().map_or(0, |h| h.member_id())));
                    leaders.push(status.leader());
                }
            }
            let agreed = leaders.len() == live.len()
                && !leaders.is_empty()
                && leaders.iter().all(|l| *l != 0 && *l == leaders[0]);
            if agreed && let Some((i, _)) = ids.iter().find(|(_, id)| *id == leaders[0]) {
                return *i;
            }
            assert!(tokio::time::Instant::now() < deadline, "no agreed leader within {READY_BOUND:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every live member has applied the same revision and reports the same HashKV at
    /// it; returns that revision.
    pub async fn converged(&mut self) -> i64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let live = self.live();
            let mut revisions = Vec::new();
            for &i in &live {
                let mut client = self.client(i).await;
                let rev = client
                    .get("\0", Some(GetOptions::new().with_serializable().with_count_only()))
                    .await
                    .ok()
                    .and_then(|r| r.header().map(|h| h.revision()));
                revisions.push(rev);
            }
            if let Some(Some(rev)) = revisions.first().cloned()
                && revisions.iter().all(|r| *r == Some(rev))
            {
                let mut hashes = Vec::new();
                for &i in &live {
                    hashes.push(self.client(i).await.hash_kv(rev).await.map(|h| h.hash()).ok());
                }
                if hashes.iter().all(|h| h.is_some() && *h == hashes[0]) {
                    return rev;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "members did not converge: revisions {revisions:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every key and value member `i` holds, read locally (serializable).
    pub async fn local_data(&self, i: usize) -> std::collections::BTreeMap<String, String> {
        let mut client = self.client(i).await;
        let all =
            client.get("\0", Some(GetOptions::new().with_from_key().with_serializable())).await.expect("read all");
        all.kvs().iter().map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string())).collect()
    }

    /// The sum of every series of counter or gauge `name` member `i` exports (0 when it has none).
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        super::scrape(self.metrics_ports[i])
            .lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.processes[i].take() {
            p.kill();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.data_dir(i).with_extension("log")).unwrap_or_default()
    }
}
