//! End to end with Debian's `etcdctl` 3.4 (package `etcd-client`) against a real `keel store`
//! process: every command an etcd operator reaches for first must work and print what it prints
//! against etcd.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{Background, KeelProcess, free_port};

struct Etcdctl {
    endpoint: String,
}

impl Etcdctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").arg(format!("--endpoints={}", self.endpoint)).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running etcdctl (is Debian's etcd-client installed? .ci/run installs it): {e}"))
    }

    /// Runs a command that must succeed; returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a command that must fail; returns its standard error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "etcdctl {args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts a long-running command (watch, keep-alive), runs `trigger`, and returns the first
    /// `lines` output lines.
    fn first_lines(&self, args: &[&str], lines: usize, trigger: impl FnOnce()) -> Vec<String> {
        let background = Background::start(self.command(args));
        trigger();
        background.lines(lines)
    }
}

/// Waits (bounded) until `prefix` holds `count` keys.
fn wait_for_keys(ctl: &Etcdctl, prefix: &str, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = ctl.ok(&["get", "--prefix", "--keys-only", prefix]).lines().filter(|l| !l.is_empty()).count();
        if n == count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{prefix} never held {count} keys (has {n})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_and_elect_work_like_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &[]);
    let mut client = keel.ready().await;
    let ctl = Etcdctl { endpoint: keel.endpoint() };

    // `lock NAME -- cmd` runs cmd holding the lock, with the key and its revision in the
    // environment, then releases it.
    let out = ctl.ok(&["lock", "job", "--", "sh", "-c", "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\""]);
    let (key, rev) = out.trim().split_once(' ').expect("key and revision");
    assert!(key.starts_with("job/"), "{out}");
    assert!(rev.parse::<i64>().expect("a revision") > 0);
    assert_eq!(ctl.ok(&["get", "--prefix", "job/"]), "", "released after the command");

    // The README's fencing recipe: a write conditional on the holder's token succeeds while it
    // holds the lock; the same write with another token fails.
    let fenced = format!(
        "printf 'c(\"%s\") = \"%s\"\\n\\nput /app/config v2\\n\\n\\n' \"$ETCD_LOCK_KEY\" \"$ETCD_LOCK_REV\" \
         | etcdctl --endpoints={0} txn; \
         printf 'c(\"%s\") = \"%s\"\\n\\nput /app/config stale\\n\\n\\n' \"$ETCD_LOCK_KEY\" 1 \
         | etcdctl --endpoints={0} txn",
        keel.endpoint()
    );
    assert_eq!(ctl.ok(&["lock", "job", "--", "sh", "-c", &fenced]), "SUCCESS\n\nOK\nFAILURE\n");
    assert_eq!(ctl.ok(&["get", "/app/config", "--print-value-only"]), "v2\n");

    // A holder blocks a second etcdctl and a Lock-service client alike (same keys, same order);
    // Ctrl-C on the holder hands the lock to the next in line.
    let mut holder = Background::start(ctl.command(&["lock", "job"]));
    let held_key = holder.line();
    assert!(held_key.starts_with("job/"), "{held_key}");
    let mut second = Background::start(ctl.command(&["lock", "job", "--", "echo", "second holder ran"]));
    wait_for_keys(&ctl, "job/", 2);
    let lease = client.lease_grant(60, None).await.unwrap().id();
    let third = tokio::spawn({
        let mut client = client.clone();
        async move { client.lock("job", Some(etcd_client::LockOptions::new().with_lease(lease))).await }
    });
    wait_for_keys(&ctl, "job/", 3);
    assert!(!second.has_output() && !third.is_finished(), "nobody runs while the lock is held");
    assert!(holder.interrupt().success());
    assert_eq!(second.line(), "second holder ran");
    assert!(second.wait().success());
    let granted = tokio::time::timeout(Duration::from_secs(30), third).await.expect("granted").unwrap().unwrap();
    assert_eq!(granted.key(), format!("job/{lease:x}").as_bytes());
    client.unlock(granted.key()).await.unwrap();

    // `elect -l NAME` follows the leader; `elect NAME PROPOSAL` campaigns and holds until Ctrl-C.
    let listener = Background::start(ctl.command(&["elect", "-l", "pilot"]));
    let mut first = Background::start(ctl.command(&["elect", "pilot", "alpha"]));
    let first_key = first.line();
    assert_eq!(first.line(), "alpha");
    assert_eq!((listener.line(), listener.line()), (first_key.clone(), "alpha".to_string()));
    let mut runner_up = Background::start(ctl.command(&["elect", "pilot", "beta"]));
    wait_for_keys(&ctl, "pilot/", 2);
    let leader = client.leader("pilot").await.expect("leader");
    assert_eq!(leader.kv().unwrap().value(), b"alpha", "the Election service agrees with etcdctl");
    assert!(first.interrupt().success());
    let second_key = runner_up.line();
    assert_eq!(runner_up.line(), "beta");
    assert_ne!(second_key, first_key);
    assert_eq!((listener.line(), listener.line()), (second_key, "beta".to_string()));
    assert!(runner_up.interrupt().success());
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_drives_keel_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &[]);
    keel.ready().await;
    let ctl = Etcdctl { endpoint: keel.endpoint() };

    assert_eq!(ctl.ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(ctl.ok(&["put", "foo", "baz"]), "OK\n");
    assert_eq!(ctl.ok(&["get", "foo"]), "foo\nbaz\n");
    assert_eq!(ctl.ok(&["get", "foo", "--rev=2"]), "foo\nbar\n");
    assert_eq!(ctl.ok(&["put", "foo/a", "1"]), "OK\n");
    assert_eq!(ctl.ok(&["get", "foo", "--prefix"]), "foo\nbaz\nfoo/a\n1\n");
    assert_eq!(ctl.ok(&["get", "foo", "--print-value-only"]), "baz\n");
    assert_eq!(ctl.ok(&["del", "foo"]), "1\n");
    assert_eq!(ctl.ok(&["del", "nothing"]), "0\n");

    // txn reads compares, success and failure requests from standard input.
    let mut txn = ctl.command(&["txn"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    txn.stdin.take().unwrap().write_all(b"value(\"foo/a\") = \"1\"\n\nput foo/a 10\n\nput foo/a 20\n\n").unwrap();
    let out = txn.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    assert_eq!(ctl.ok(&["get", "foo/a", "--print-value-only"]), "10\n");

    // Watch replays history from a revision, then follows live changes.
    let events = ctl.first_lines(&["watch", "foo", "--prefix", "--rev=4"], 9, || {
        ctl.ok(&["put", "foo/b", "live"]);
    });
    assert_eq!(events, ["PUT", "foo/a", "1", "DELETE", "foo", "", "PUT", "foo/a", "10"]);
    let live = ctl.first_lines(&["watch", "foo/c"], 3, || {
        std::thread::sleep(Duration::from_millis(300));
        ctl.ok(&["put", "foo/c", "fresh"]);
    });
    assert_eq!(live, ["PUT", "foo/c", "fresh"]);

    // Leases.
    let granted = ctl.ok(&["lease", "grant", "60"]);
    let id = granted.split_whitespace().nth(1).expect("lease id").to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(ctl.ok(&["put", &format!("--lease={id}"), "lk", "lv"]), "OK\n");
    let ttl = ctl.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")), "{ttl}");
    assert!(ttl.ends_with("attached keys([lk])\n"), "{ttl}");
    assert_eq!(ctl.ok(&["lease", "list"]), format!("found 1 leases\n{id}\n"));
    let kept = ctl.first_lines(&["lease", "keep-alive", &id], 1, || {});
    assert_eq!(kept, [format!("lease {id} keepalived with TTL(60)")]);
    assert_eq!(ctl.ok(&["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(ctl.ok(&["get", "lk"]), "");
    assert_eq!(ctl.ok(&["lease", "timetolive", &id]), format!("lease {id} already expired\n"));

    // Status, health, members.
    let status = ctl.ok(&["endpoint", "status"]);
    assert!(status.starts_with(&format!("{}, ", keel.endpoint())), "{status}");
    assert!(status.contains(", 3.5.0+keel."), "{status}");
    assert!(status.contains(", true, false, "), "this member leads and is not a learner: {status}");
    let json = ctl.ok(&["endpoint", "status", "-w", "json"]);
    assert!(json.contains("\"leader\":") && json.contains("\"raftIndex\":"), "{json}");
    // etcdctl prints the health verdict on standard error.
    let health = ctl.run(&["endpoint", "health"]);
    assert!(health.status.success());
    let verdict = String::from_utf8_lossy(&health.stderr);
    assert!(verdict.contains(&format!("{} is healthy: successfully committed proposal", keel.endpoint())), "{verdict}");
    let members = ctl.ok(&["member", "list"]);
    assert!(
        members.contains(&format!(", started, e2e, http://127.0.0.1:{}, {}, false", keel.peer_port, keel.url())),
        "{members}"
    );
    assert_eq!(ctl.ok(&["alarm", "list"]), "");

    // Compaction and the errors it causes.
    assert_eq!(ctl.ok(&["compaction", "4"]), "compacted revision 4\n");
    let err = ctl.fails(&["get", "foo", "--rev=2"]);
    assert!(err.contains("Error: etcdserver: mvcc: required revision has been compacted"), "{err}");
    let err = ctl.fails(&["put", "", "x"]);
    assert!(err.contains("Error: etcdserver: key is not provided"), "{err}");
    // A watch from a compacted revision is canceled; etcdctl reports it on standard error.
    let out = ctl.command(&["watch", "foo", "--rev=2"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("watch was canceled (etcdserver: mvcc: required revision has been compacted)"), "{stderr}");
    keel.terminate();
}

/// etcdctl 3.4 sends `:authority: http://host:port` on per-endpoint calls when endpoints carry a
/// scheme; grpc-go servers accept that, and so must Keel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_endpoints_with_a_scheme_work_for_per_endpoint_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &[]);
    keel.ready().await;
    let ctl = Etcdctl { endpoint: keel.url() };
    assert_eq!(ctl.ok(&["put", "k", "v"]), "OK\n");
    let status = ctl.ok(&["endpoint", "status"]);
    assert!(status.starts_with(&format!("{}, ", keel.url())) && status.contains(", true, false, "), "{status}");
    let hashkv = ctl.ok(&["endpoint", "hashkv"]);
    assert!(hashkv.starts_with(&format!("{}, ", keel.url())), "{hashkv}");
    assert_eq!(ctl.ok(&["get", "k", "--print-value-only"]), "v\n");
    keel.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_user_role_and_auth_commands_work_like_etcds() {
    let dir = tempfile::tempdir().unwrap();
    let mut keel = KeelProcess::spawn(&dir.path().join("data"), free_port(), free_port(), &["--bcrypt-cost", "4"]);
    keel.ready().await;
    let ctl = Etcdctl { endpoint: keel.endpoint() };

    assert_eq!(ctl.ok(&["user", "add", "root:rootpw"]), "User root created\n");
    assert_eq!(ctl.ok(&["user", "grant-role", "root", "root"]), "Role root is granted to user root\n");
    assert_eq!(ctl.ok(&["auth", "enable"]), "Authentication Enabled\n");

    // Without credentials nothing is served; with root's, administration works.
    assert!(ctl.fails(&["put", "k", "v"]).contains("user name is empty"));
    assert!(ctl.fails(&["get", "k", "--user", "root:wrong"]).contains("authentication failed"));
    let root = ["--user", "root:rootpw"];
    let as_root = |args: &[&'static str]| -> Vec<&'static str> { [&root[..], args].concat() };
    assert_eq!(ctl.ok(&as_root(&["role", "add", "app"])), "Role app created\n");
    assert_eq!(
        ctl.ok(&as_root(&["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"])),
        "Role app updated\n"
    );
    assert_eq!(ctl.ok(&as_root(&["user", "add", "alice:alicepw"])), "User alice created\n");
    assert_eq!(ctl.ok(&as_root(&["user", "grant-role", "alice", "app"])), "Role app is granted to user alice\n");
    assert_eq!(ctl.ok(&as_root(&["user", "list"])), "alice\nroot\n");
    assert_eq!(ctl.ok(&as_root(&["role", "list"])), "app\n");
    let role = ctl.ok(&as_root(&["role", "get", "app"]));
    assert!(role.contains("KV Read:") && role.contains("[/app/, /app0) (prefix /app/)"), "{role}");
    assert_eq!(ctl.ok(&as_root(&["user", "get", "alice"])), "User: alice\nRoles: app\n");

    // alice may use /app/ and nothing else, and may not administer.
    let alice = ["--user", "alice:alicepw"];
    let as_alice = |args: &[&'static str]| -> Vec<&'static str> { [&alice[..], args].concat() };
    assert_eq!(ctl.ok(&as_alice(&["put", "/app/x", "1"])), "OK\n");
    assert_eq!(ctl.ok(&as_alice(&["get", "/app/x", "--print-value-only"])), "1\n");
    assert!(ctl.fails(&as_alice(&["put", "/other", "1"])).contains("permission denied"));
    assert!(ctl.fails(&as_alice(&["get", "/other"])).contains("permission denied"));
    assert!(ctl.fails(&as_alice(&["user", "list"])).contains("permission denied"));

    // Revoking the role takes alice's access away at once.
    assert_eq!(ctl.ok(&as_root(&["user", "revoke-role", "alice", "app"])), "Role app is revoked from user alice\n");
    assert!(ctl.fails(&as_alice(&["get", "/app/x"])).contains("permission denied"));
    assert!(ctl.fails(&as_root(&["user", "delete", "root"])).contains("invalid auth management"));

    assert_eq!(ctl.ok(&as_root(&["auth", "disable"])), "Authentication Disabled\n");
    assert_eq!(ctl.ok(&["get", "/app/x", "--print-value-only"]), "1\n");
    // With auth off, credentials are ignored (etcd's clients treat "not enabled" as no token).
    assert_eq!(ctl.ok(&["put", "/other", "2", "--user", "alice:alicepw"]), "OK\n");
    keel.terminate();
}
