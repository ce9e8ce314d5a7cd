//! `keel ctl` as tests run it: one command line against fixed endpoints, with etcdctl's
//! environment variables cleared so the caller's shell cannot change what a test does.

use std::process::{Command, Output, Stdio};

/// `keel ctl --endpoints ENDPOINTS ...`.
pub struct Ctl {
    endpoints: String,
}

impl Ctl {
    /// A `keel ctl` for `endpoints` (`host:port` or URLs).
    pub fn new(endpoints: &[String]) -> Self {
        Self { endpoints: endpoints.join(",") }
    }

    /// The command, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
        for var in ["ETCDCTL_ENDPOINTS", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_USER"] {
            cmd.env_remove(var);
        }
        cmd.args(["ctl", "--endpoints", &self.endpoints]).args(args);
        cmd
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run keel ctl")
    }

    /// Runs a command with `input` as its standard input (closed after it, so the command sees
    /// the end of the input).
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start keel ctl");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write standard input");
        child.wait_with_output().expect("run keel ctl")
    }

    /// Runs a command that must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "keel ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a command that must fail; returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "keel ctl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}
