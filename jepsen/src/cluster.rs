//! A Keel store cluster of real `keel store` processes for one test, each member on its own
//! loopback address (127.0.0.11, 127.0.0.12, ...) with TLS between members and for clients.
//!
//! Invariants:
//! - every process this module starts is a child of this process, started with `kill_on_drop`,
//!   and is SIGKILLed and reaped by `Cluster::shutdown` (or, failing that, when dropped); a paused
//!   (SIGSTOPped) member is killed just the same, since SIGKILL ends stopped processes too;
//! - members keep their data directories across kill and restart, as a crashed machine would; a
//!   member removed from the cluster loses its process and its data directory (a decommissioned
//!   machine) and rejoins empty, through MemberAdd and `--initial-cluster-state existing`;
//! - with the clock nemesis enabled every member runs under libfaketime, reading its wall-clock
//!   offset from its own file (`nX.faketime`, re-read every second); only the wall clock is
//!   faked, as a skewed machine's would be, and the monotonic clock that timers use is left alone;
//! - outgoing peer connections leave from the member's own address (`--peer-source-address`), so
//!   firewall rules written in terms of member addresses match exactly the traffic between two
//!   members and never client traffic (clients connect from 127.0.0.1).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::etcdserverpb as pb;
use keel_store::tls::certs::{self, Kind, Validity};
use keel_store::tls::{ClientTls, TlsFiles};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::JepsenError;

/// Whether the members of a healed cluster hold the same state ([`Cluster::compare_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateComparison {
    /// Every member's HashKV agrees at a revision all of them have applied.
    Agree,
    /// The hashes still differed when the bound ran out: the members' states have diverged.
    Differ(String),
    /// A member could not be asked; nothing is claimed.
    Unknown(String),
}

/// One member's HashKV answer ([`Cluster::compare_state`]).
struct MemberHash {
    name: String,
    hash: u32,
    compact_revision: i64,
}

impl MemberHash {
    /// What must agree across members: the hash, over the same compacted history.
    fn state(&self) -> (u32, i64) {
        (self.hash, self.compact_revision)
    }
}

/// How long a restarted member may take to answer before the harness gives up on it.
const READY_BOUND: Duration = Duration::from_secs(60);

/// One member's identity and process.
#[derive(Debug)]
pub struct Member {
    /// `n1`, `n2`, ...
    pub name: String,
    /// Its loopback address.
    pub ip: IpAddr,
    /// Client API URL (`https://ip:port`).
    pub client_url: String,
    /// Peer API URL.
    pub peer_url: String,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// The running process, if any. A member is either running (possibly paused) or down.
    child: Option<Child>,
    /// True while SIGSTOPped.
    paused: bool,
    /// True while removed from the cluster's membership (no process, no data).
    removed: bool,
    /// True once the member joined a running cluster (after a removal): later starts say
    /// `--initial-cluster-state existing`.
    rejoined: bool,
    /// The file libfaketime reads the member's clock offset from.
    clock_file: PathBuf,
}

impl Member {
    /// True while the member has a process (running or paused).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// True while removed from the membership.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// The process id, while up.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

/// How members are started.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `keel` binary to run.
    pub binary: PathBuf,
    /// Number of members.
    pub nodes: usize,
    /// The test's directory; members' data, logs and certificates go under it.
    pub dir: PathBuf,
    /// Value of `KEEL_PLANTED_BUGS` for the members (only a build with the `planted-bugs`
    /// feature reads it).
    pub planted_bugs: Option<String>,
    /// First member's address; the others follow (`127.0.0.11` by default).
    pub base_ip: Ipv4Addr,
    /// libfaketime's preload library, when the clock nemesis may skew members' clocks.
    pub faketime: Option<PathBuf>,
}

/// Where Debian's `faketime` package puts the preload library, on the architectures it builds.
const FAKETIME_LIBRARIES: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"];

/// libfaketime's preload library, or an error saying how to get it.
pub fn find_faketime() -> Result<PathBuf, JepsenError> {
    FAKETIME_LIBRARIES.iter().map(PathBuf::from).find(|path| path.is_file()).ok_or_else(|| {
        JepsenError::Usage(format!(
            "the clock nemesis needs libfaketime (Debian package `faketime`); looked for {}",
            FAKETIME_LIBRARIES.join(", ")
        ))
    })
}

/// The cluster under test.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    /// Members in order; index `i` is named `n{i+1}`.
    pub members: Vec<Member>,
    client_tls: Arc<ClientTls>,
    pki: PathBuf,
}

impl Cluster {
    /// Writes the certificates, starts every member and waits until the cluster serves.
    pub async fn start(spec: ClusterSpec) -> Result<Self, JepsenError> {
        if spec.nodes == 0 {
            return Err(JepsenError::Usage("--nodes must be at least 1".into()));
        }
        if usize::from(spec.base_ip.octets()[3]) + spec.nodes > 255 || !spec.base_ip.is_loopback() {
            return Err(JepsenError::Usage(format!(
                "{} members from {} do not fit in 127.0.0.0/8's last octet",
                spec.nodes, spec.base_ip
            )));
        }
        let ips: Vec<IpAddr> = (0..spec.nodes)
            .map(|i| {
                let [a, b, c, d] = spec.base_ip.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d + i as u8))
            })
            .collect();
        let (client_port, peer_port) = free_ports(&ips)?;
        let pki = spec.dir.join("pki");
        write_pki(&pki, &ips)?;
        let client_tls = ClientTls::new(TlsFiles {
            cert_file: Some(pki.join("client.crt")),
            key_file: Some(pki.join("client.key")),
            trusted_ca_file: Some(pki.join("ca.crt")),
        })
        .map_err(|err| JepsenError::Setup(format!("client TLS: {err}")))?;
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let name = format!("n{}", i + 1);
                Member {
                    client_url: format!("https://{ip}:{client_port}"),
                    peer_url: format!("https://{ip}:{peer_port}"),
                    data_dir: spec.dir.join(&name).join("data"),
                    log_file: spec.dir.join(format!("{name}.log")),
                    clock_file: spec.dir.join(format!("{name}.faketime")),
                    name,
                    ip: *ip,
                    child: None,
                    paused: false,
                    removed: false,
                    rejoined: false,
                }
            })
            .collect();
        let mut cluster = Self { spec, members, client_tls, pki };
        for i in 0..cluster.members.len() {
            cluster.set_clock_offset(i, 0)?;
        }
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        for i in 0..cluster.members.len() {
            cluster.wait_ready(i, deadline).await?;
        }
        cluster.wait_for_leader(READY_BOUND).await?;
        Ok(cluster)
    }

    /// Member names, in order.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<(), JepsenError> {
        let initial_cluster = self.initial_cluster();
        let pki = |file: &str| self.pki.join(file).display().to_string();
        let member = &self.members[i];
        std::fs::create_dir_all(&member.data_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&member.log_file)?;
        let mut command = Command::new(&self.spec.binary);
        command
            .arg("store")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url, "--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url, "--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", if member.rejoined { "existing" } else { "new" }])
            .args(["--initial-cluster-token", "keel-jepsen"])
            .args(["--peer-source-address", &member.ip.to_string()])
            .args(["--cert-file", &pki("server.crt"), "--key-file", &pki("server.key")])
            .args(["--trusted-ca-file", &pki("ca.crt"), "--client-cert-auth"])
            .args(["--peer-cert-file", &pki("peer.crt"), "--peer-key-file", &pki("peer.key")])
            .args(["--peer-trusted-ca-file", &pki("ca.crt")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        match &self.spec.planted_bugs {
            Some(bugs) => command.env("KEEL_PLANTED_BUGS", bugs),
            None => command.env_remove("KEEL_PLANTED_BUGS"),
        };
        if let Some(library) = &self.spec.faketime {
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME_TIMESTAMP_FILE", &member.clock_file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .spawn()
            .map_err(|err| JepsenError::Setup(format!("starting {}: {err}", self.spec.binary.display())))?;
        let member = &mut self.members[i];
        member.child = Some(child);
        member.paused = false;
        Ok(())
    }

    /// A lazily connecting TLS channel to member `i`'s client API.
    pub fn channel(&self, i: usize) -> Result<Channel, JepsenError> {
        keel_store::tls::lazy_channel(&self.members[i].client_url, Some(self.client_tls.clone()), None, |e| {
            e.connect_timeout(Duration::from_secs(1))
        })
        .map_err(|err| JepsenError::Setup(format!("channel to {}: {err}", self.members[i].name)))
    }

    async fn wait_ready(&self, i: usize, deadline: tokio::time::Instant) -> Result<(), JepsenError> {
        let mut client = pb::maintenance_client::MaintenanceClient::new(self.channel(i)?);
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(1), client.status(pb::StatusRequest {})).await;
            if matches!(probe, Ok(Ok(_))) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JepsenError::Setup(format!(
                    "{} did not answer within {READY_BOUND:?}; see {}",
                    self.members[i].name,
                    self.members[i].log_file.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member every running, unpaused member agrees is leader, waiting at most `bound`.
    pub async fn wait_for_leader(&self, bound: Duration) -> Result<usize, JepsenError> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JepsenError::Recovery(format!("the members did not agree on a leader within {bound:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Status of member `i`: its own id and the leader it knows of (0: none).
    pub async fn status(&self, i: usize) -> Option<(u64, u64)> {
        let mut client = pb::maintenance_client::MaintenanceClient::new(self.channel(i).ok()?);
        let status =
            tokio::time::timeout(Duration::from_secs(1), client.status(pb::StatusRequest {})).await.ok()?.ok()?;
        let status = status.into_inner();
        Some((status.header.map_or(0, |h| h.member_id), status.leader))
    }

    /// The leader's index when every running, unpaused member names the same one.
    pub async fn agreed_leader(&self) -> Option<usize> {
        let mut ids = vec![None; self.members.len()];
        let mut leaders = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            if !member.is_up() || member.paused {
                continue;
            }
            let (id, leader) = self.status(i).await?;
            ids[i] = Some(id);
            leaders.push(leader);
        }
        let first = *leaders.first()?;
        if first == 0 || leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter().position(|id| *id == Some(first))
    }

    /// SIGKILLs member `i` and reaps it (no-op when down).
    pub async fn kill(&mut self, i: usize) -> Result<(), JepsenError> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().await?;
        }
        self.members[i].paused = false;
        Ok(())
    }

    /// Starts member `i` again on its data directory (no-op when up, or removed from the
    /// membership: it comes back only through [`Cluster::add_member`]).
    pub fn restart(&mut self, i: usize) -> Result<(), JepsenError> {
        if self.members[i].child.is_none() && !self.members[i].removed { self.spawn(i) } else { Ok(()) }
    }

    /// Sets member `i`'s wall clock `offset_s` seconds off the real time (takes effect within a
    /// second; meaningful only when the cluster runs under libfaketime).
    pub fn set_clock_offset(&self, i: usize, offset_s: i64) -> Result<(), JepsenError> {
        write_clock_offset(&self.members[i].clock_file, offset_s)
    }

    /// Sets clock offsets like [`Cluster::set_clock_offset`] without borrowing the cluster, for
    /// a strobe that runs while the nemesis goes on.
    pub fn clock_setter(&self) -> impl Fn(usize, i64) -> Result<(), JepsenError> + Send + 'static {
        let files: Vec<PathBuf> = self.members.iter().map(|m| m.clock_file.clone()).collect();
        move |i, offset_s| files.get(i).map_or(Ok(()), |file| write_clock_offset(file, offset_s))
    }

    /// Removes member `i` from the membership through another member (MemberRemove), then kills
    /// it and deletes its data directory. Retries within `bound`, since the request needs a
    /// leader with a quorum.
    pub async fn remove_member(&mut self, i: usize, bound: Duration) -> Result<(), JepsenError> {
        let peer_url = self.members[i].peer_url.clone();
        retry_within(bound, || self.try_remove(i, &peer_url))
            .await
            .map_err(|err| JepsenError::Fault(format!("removing {}: {err}", self.members[i].name)))?;
        self.kill(i).await?;
        let member = &mut self.members[i];
        member.removed = true;
        match std::fs::remove_dir_all(&member.data_dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// One attempt at removing the member whose peer URL is `peer_url`, asking a member other
    /// than `i`. Done when it is no longer listed.
    async fn try_remove(&self, i: usize, peer_url: &str) -> Result<(), String> {
        let mut last = String::from("no other member is up");
        for other in self.others(i) {
            let (mut client, members) = match self.member_list(other).await {
                Ok(listed) => listed,
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            let Some(id) = members.iter().find(|m| m.peer_ur_ls.iter().any(|u| u == peer_url)).map(|m| m.id) else {
                return Ok(());
            };
            match tokio::time::timeout(Duration::from_secs(5), client.member_remove(pb::MemberRemoveRequest { id }))
                .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) => last = status.message().to_string(),
                Err(_) => last = "member remove timed out".into(),
            }
        }
        Err(last)
    }

    /// Adds removed member `i` back (MemberAdd through another member, retried within `bound`)
    /// and starts it empty with `--initial-cluster-state existing`.
    pub async fn add_member(&mut self, i: usize, bound: Duration) -> Result<(), JepsenError> {
        if !self.members[i].removed {
            // The removal did not happen (it failed part-way); the member only needs to be up.
            return self.restart(i);
        }
        let peer_url = self.members[i].peer_url.clone();
        retry_within(bound, || self.try_add(i, &peer_url))
            .await
            .map_err(|err| JepsenError::Fault(format!("adding {} back: {err}", self.members[i].name)))?;
        let member = &mut self.members[i];
        member.removed = false;
        member.rejoined = true;
        self.spawn(i)
    }

    /// One attempt at adding the member with `peer_url`, asking a member other than `i`. Done
    /// when it is listed (an earlier attempt whose answer was lost may have added it).
    async fn try_add(&self, i: usize, peer_url: &str) -> Result<(), String> {
        let mut last = String::from("no other member is up");
        for other in self.others(i) {
            let (mut client, members) = match self.member_list(other).await {
                Ok(listed) => listed,
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            if members.iter().any(|m| m.peer_ur_ls.iter().any(|u| u == peer_url)) {
                return Ok(());
            }
            let request = pb::MemberAddRequest { peer_ur_ls: vec![peer_url.to_string()], is_learner: false };
            match tokio::time::timeout(Duration::from_secs(5), client.member_add(request)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(status)) => last = status.message().to_string(),
                Err(_) => last = "member add timed out".into(),
            }
        }
        Err(last)
    }

    /// The members other than `i` that run unpaused: those a membership change can go through.
    fn others(&self, i: usize) -> Vec<usize> {
        (0..self.members.len()).filter(|&o| o != i && self.members[o].is_up() && !self.members[o].paused).collect()
    }

    /// Member `other`'s linearizable member list, and the client that asked for it.
    async fn member_list(
        &self,
        other: usize,
    ) -> Result<(pb::cluster_client::ClusterClient<Channel>, Vec<pb::Member>), String> {
        let mut client = pb::cluster_client::ClusterClient::new(self.channel(other).map_err(|e| e.to_string())?);
        let request = pb::MemberListRequest { linearizable: true };
        match tokio::time::timeout(Duration::from_secs(2), client.member_list(request)).await {
            Ok(Ok(resp)) => Ok((client, resp.into_inner().members)),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("member list timed out".into()),
        }
    }

    /// SIGSTOPs member `i` (no-op when down or paused).
    pub async fn pause(&mut self, i: usize) -> Result<(), JepsenError> {
        if let Some(pid) = self.members[i].pid()
            && !self.members[i].paused
        {
            signal(pid, "STOP").await?;
            self.members[i].paused = true;
        }
        Ok(())
    }

    /// SIGCONTs member `i` (no-op unless paused).
    pub async fn resume(&mut self, i: usize) -> Result<(), JepsenError> {
        if let Some(pid) = self.members[i].pid()
            && self.members[i].paused
        {
            signal(pid, "CONT").await?;
        }
        self.members[i].paused = false;
        Ok(())
    }

    /// Members that exited on their own (not killed by the harness): name and exit status.
    pub fn crashed(&mut self) -> Vec<(String, String)> {
        let mut crashed = Vec::new();
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                crashed.push((member.name.clone(), status.to_string()));
                member.child = None;
            }
        }
        crashed
    }

    /// Brings every member back: resumes paused ones and restarts those down, then waits (within
    /// `bound`) until every member is healthy as `etcdctl endpoint health` means it: a
    /// linearizable read through it succeeds, so the cluster has a leader with a quorum and the
    /// member has caught up with it.
    pub async fn heal(&mut self, bound: Duration) -> Result<(), JepsenError> {
        for i in 0..self.members.len() {
            self.set_clock_offset(i, 0)?;
            self.resume(i).await?;
        }
        let deadline = tokio::time::Instant::now() + bound;
        for i in 0..self.members.len() {
            if self.members[i].removed {
                self.add_member(i, bound).await?;
            }
            self.restart(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_ready(i, deadline).await?;
        }
        for i in 0..self.members.len() {
            let mut kv = pb::kv_client::KvClient::new(self.channel(i)?);
            loop {
                let request = pb::RangeRequest { key: b"health".to_vec(), ..Default::default() };
                let read = tokio::time::timeout(Duration::from_secs(2), kv.range(request)).await;
                if matches!(read, Ok(Ok(_))) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(JepsenError::Recovery(format!(
                        "{} could not serve a linearizable read within {bound:?} of healing; see {}",
                        self.members[i].name,
                        self.members[i].log_file.display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Whether every member holds the same key-value state, asked once the cluster is whole: each
    /// member's HashKV at the lowest revision all of them have applied. Members apply at their own
    /// pace (a compaction, which keeps the revision, may reach one member before another), so a
    /// difference is reported only if it lasts until `bound`; a member that cannot be asked makes
    /// the answer `Unknown`, not a finding.
    pub async fn compare_state(&self, bound: Duration) -> StateComparison {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let outcome = self.hashes_at_common_revision().await;
            match &outcome {
                Ok((_, hashes)) if hashes.windows(2).all(|pair| pair[0].state() == pair[1].state()) => {
                    return StateComparison::Agree;
                }
                _ if tokio::time::Instant::now() < deadline => {}
                Ok((revision, hashes)) => {
                    let each: Vec<String> = hashes
                        .iter()
                        .map(|m| format!("{} {:#010x} (compacted at {})", m.name, m.hash, m.compact_revision))
                        .collect();
                    return StateComparison::Differ(format!(
                        "the members' key-value state differs at revision {revision}: {}",
                        each.join(", ")
                    ));
                }
                Err(why) => return StateComparison::Unknown(why.clone()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every member's HashKV at the lowest current revision among them, and that revision.
    async fn hashes_at_common_revision(&self) -> Result<(i64, Vec<MemberHash>), String> {
        const CALL_BOUND: Duration = Duration::from_secs(5);
        let mut clients = Vec::new();
        let mut revision = i64::MAX;
        for (i, member) in self.members.iter().enumerate() {
            let mut client =
                pb::maintenance_client::MaintenanceClient::new(self.channel(i).map_err(|e| e.to_string())?);
            let status = tokio::time::timeout(CALL_BOUND, client.status(pb::StatusRequest {}))
                .await
                .map_err(|_| format!("{} gave no status within {CALL_BOUND:?}", member.name))?
                .map_err(|status| format!("status of {}: {}", member.name, status.message()))?;
            // Revision 0 would ask HashKV for each member's own latest state, which need not agree.
            let current = status.into_inner().header.map(|h| h.revision).filter(|&r| r > 0);
            revision = revision.min(current.ok_or_else(|| format!("{}'s status names no revision", member.name))?);
            clients.push((member.name.clone(), client));
        }
        let mut hashes = Vec::new();
        for (name, mut client) in clients {
            let answer = tokio::time::timeout(CALL_BOUND, client.hash_kv(pb::HashKvRequest { revision }))
                .await
                .map_err(|_| format!("{name} gave no HashKV within {CALL_BOUND:?}"))?
                .map_err(|status| format!("HashKV of {name} at revision {revision}: {}", status.message()))?
                .into_inner();
            hashes.push(MemberHash { name, hash: answer.hash, compact_revision: answer.compact_revision });
        }
        Ok((revision, hashes))
    }

    /// SIGKILLs and reaps every member.
    pub async fn shutdown(&mut self) {
        for i in 0..self.members.len() {
            if let Err(err) = self.kill(i).await {
                tracing::warn!(member = %self.members[i].name, %err, "could not kill");
            }
        }
    }

    /// The log file of member `i`.
    pub fn log_file(&self, i: usize) -> &Path {
        &self.members[i].log_file
    }
}

/// Runs `attempt` until it succeeds, pausing between tries, and gives up with its last error
/// once `bound` has passed.
async fn retry_within<F, Fut>(bound: Duration, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Writes a libfaketime offset (`+30`, `-5`: seconds) to `file`, replacing it whole: libfaketime
/// re-reads it every second and must never see half a line.
fn write_clock_offset(file: &Path, offset_s: i64) -> Result<(), JepsenError> {
    let partial = file.with_extension("faketime.new");
    std::fs::write(&partial, format!("{offset_s:+}\n"))?;
    std::fs::rename(&partial, file)?;
    Ok(())
}

/// Sends `SIGname` to `pid` with kill(1), which needs no unsafe code here.
async fn signal(pid: u32, name: &str) -> Result<(), JepsenError> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().await?;
    if status.success() { Ok(()) } else { Err(JepsenError::Fault(format!("kill -{name} {pid} failed: {status}"))) }
}

/// Two ports free on every member address (the same on each, since the addresses differ).
fn free_ports(ips: &[IpAddr]) -> Result<(u16, u16), JepsenError> {
    let free_everywhere = |port: u16| ips.iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
    // Below Linux's ephemeral range, so an outgoing connection cannot take the port meanwhile.
    let start = 20_000 + (std::process::id() % 5_000) as u16 * 2;
    let mut found = Vec::new();
    for port in (start..32_000).chain(15_000..start) {
        if free_everywhere(port) {
            found.push(port);
            if found.len() == 2 {
                return Ok((found[0], found[1]));
            }
        }
    }
    Err(JepsenError::Setup("no two ports free on every member address".into()))
}

/// A CA, one server and one peer certificate naming every member address, and a client
/// certificate for the harness's clients.
fn write_pki(dir: &Path, ips: &[IpAddr]) -> Result<(), JepsenError> {
    let cert = |err: keel_store::tls::TlsError| JepsenError::Setup(format!("certificates: {err}"));
    std::fs::create_dir_all(dir)?;
    let validity = Validity::days_from_now(2);
    let ca = certs::new_ca("keel-jepsen-ca", validity).map_err(cert)?;
    let hosts: Vec<String> = ips.iter().map(ToString::to_string).collect();
    certs::write(dir, "ca", &ca, true).map_err(cert)?;
    for (name, kind, hosts) in [
        ("server", Kind::Server, hosts.as_slice()),
        ("peer", Kind::Peer, hosts.as_slice()),
        ("client", Kind::Client, &[]),
    ] {
        let issued = certs::issue(&ca, kind, &format!("jepsen-{name}"), &[], hosts, validity).map_err(cert)?;
        certs::write(dir, name, &issued, true).map_err(cert)?;
    }
    Ok(())
}
