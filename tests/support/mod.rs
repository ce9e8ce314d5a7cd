//! Support for tests that run the real `keel` binary: free loopback ports, a process handle that
//! SIGKILLs its child when dropped, readiness polling with a bound, and long-running command-line
//! tools (etcdctl, `keel ctl`) read line by line.

#![allow(dead_code)]

pub mod cluster;
pub mod ctl;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a member may take to start answering before the test fails.
pub const READY_BOUND: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago, chosen below Linux's ephemeral range
/// (32768 and up): a port the kernel hands out for `bind(0)` can also be taken a moment later as
/// the local end of some outgoing connection, before the server that was meant to get it binds.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    // One starting point per test process, then a walk by a step coprime with the range: a process
    // never hands out the same port twice (within 17,000 calls), even one nobody has bound yet.
    // Drawing a new starting point per call let two calls of one cluster's set-up collide.
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const RANGE: u32 = 17_000;
    const STEP: u32 = 2_103;
    let start = *START.get_or_init(|| {
        std::process::id().wrapping_mul(7919)
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
    }) % RANGE;
    for _ in 0..1000 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed) % RANGE;
        let port = 15_000 + ((start + k * STEP) % RANGE) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 15000..32000 after 1000 tries");
}

/// One scrape of the Prometheus endpoint on loopback `port`: the whole HTTP response.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).expect("read metrics");
    body
}

/// A `keel store` process.
pub struct KeelProcess {
    child: Option<Child>,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// `http` or `https` (both client and peer URLs).
    pub scheme: &'static str,
    /// How clients connect (TLS options); `None` for plain connections.
    pub options: Option<etcd_client::ConnectOptions>,
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
        Self::spawn_with_tls(name, data_dir, client_port, peer_port, timing, extra, None)
    }

    /// Starts `keel store`; with `tls` (the PKI's flags and client options), client and peer URLs
    /// are `https://` and clients present the `root` certificate.
    pub fn spawn_with_tls(
        name: &str,
        data_dir: &Path,
        client_port: u16,
        peer_port: u16,
        timing: &[&str],
        extra: &[&str],
        tls: Option<(&[String], etcd_client::ConnectOptions)>,
    ) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("{scheme}://127.0.0.1:{peer_port}");
        let tls_flags: &[String] = tls.as_ref().map_or(&[], |(flags, _)| flags);
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["store", "--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(timing)
            .args(tls_flags)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn keel");
        Self {
            child: Some(child),
            client_port,
            peer_port,
            data_dir: data_dir.to_path_buf(),
            log,
            scheme,
            options: tls.map(|(_, options)| options),
        }
    }

    /// The client endpoint, as `host:port` (the form etcdctl takes).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// Waits until the member answers `Status` and has a leader.
    pub async fn ready(&mut self) -> etcd_client::Client {
        let deadline = tokio::time::Instant::now() + READY_BOUND;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("keel exited early with {status}; log:\n{}", self.log_text());
            }
            if let Ok(mut client) = etcd_client::Client::connect([self.url()], self.options.clone()).await
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

    /// The process id, while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `SIGname` (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("a running process");
        let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill(1)");
        assert!(status.success(), "kill -{name} {pid}: {status}");
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

/// Lines of a member's log a failing test prints: enough to show what the member was doing when
/// the test gave up, few enough that a cluster's worth fits in what CI keeps of the output.
const LOG_TAIL_LINES: usize = 25;

/// Prints the last `lines` lines of the log at `path` to stderr, under a heading naming it.
pub fn print_log_tail(path: &Path, lines: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    eprintln!("--- the last {} lines of {} ---\n{}", tail.len(), path.display(), tail.join("\n"));
}

/// True for a request the member gave up on (`etcdserver: request timed out`, or no leader yet):
/// its outcome is unknown. Tests whose property is not latency may ask such a request again.
pub fn timed_out(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable)
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        self.kill();
        // A test that fails against a member (a timed-out request, a refused write) shows only the
        // client's side in its panic; the member's own account is in its log file, which the
        // temporary directory takes with it. So a failing test prints the end of each log.
        if std::thread::panicking() {
            print_log_tail(&self.log, LOG_TAIL_LINES);
            // A full disk fails a member's writes without a word in its log; say how much room
            // there was.
            if let Ok(df) = Command::new("df").arg("-h").arg(&self.log).output() {
                eprintln!("{}", String::from_utf8_lossy(&df.stdout).trim_end());
            }
        }
    }
}

/// A long-running command (a lock holder, a watch, a keep-alive) with its output lines; killed
/// when dropped. Every wait is bounded.
pub struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Background {
    /// Starts `command` with its standard output captured line by line.
    pub fn start(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn the command");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next output line, waiting at most 30 s.
    pub fn line(&self) -> String {
        self.lines.recv_timeout(Duration::from_secs(30)).expect("the command printed a line in time")
    }

    /// The next `n` output lines.
    pub fn lines(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.line()).collect()
    }

    /// Whether a line is already waiting (never blocks).
    pub fn has_output(&self) -> bool {
        self.lines.try_recv().is_ok()
    }

    /// SIGINT, as an operator's Ctrl-C; returns the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill -INT");
        assert!(sent.success());
        self.wait()
    }

    /// Waits (at most 30 s) for the command to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the command did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
