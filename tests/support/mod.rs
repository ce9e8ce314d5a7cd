//! Support for tests that run the real `keel` binary: free loopback ports, a process handle that
//! SIGKILLs its child when dropped, and readiness polling with a bound.

#![allow(dead_code)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a member may take to start answering before the test fails.
pub const READY_BOUND: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("find a free port")
}

/// A `keel store` process.
pub struct KeelProcess {
    child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl KeelProcess {
    /// Starts a single-member `keel store` named `e2e`; does not wait for readiness.
    pub fn spawn(data_dir: &Path, client_port: u16, peer_port: u16, extra: &[&str]) -> Self {
        Self::spawn_named(
            "e2e",
            data_dir,
            client_port,
            peer_port,
            &["--heartbeat-interval", "50", "--election-timeout", "500"],
            extra,
        )
    }

    /// Starts `keel store` with a name and timing flags; does not wait for readiness.
    pub fn spawn_named(
        name: &str,
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        timing: &[&str],
        extra: &[&str],
    ) -> Self {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["store", "--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(timing)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn keel");
        Self { child: Some(child), client_port, peer_port, data_dir: data_dir.to_path_buf(), log }
    }

    /// The client endpoint, as `host:port` (the form etcdctl takes).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Waits until the member answers `Status` and has a leader.
    pub async fn ready(&mut self) -> etcd_client::Client {
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("keel exited early with {status}; log:\n{}", self.log_text());
            }
            if let Ok(mut client) = etcd_client::Client::connect([self.url()], None).await
                && let Ok(status) = client.status().await
                && status.leader() != 0
            {
                return client;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "keel not ready within {READY_BOUND:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("send SIGTERM");
        let deadline = std::time::Instant::now() + READY_BOUND;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("keel did not exit within {READY_BOUND:?} of SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
