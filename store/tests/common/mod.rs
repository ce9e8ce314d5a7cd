//! Test harness: a real member with a RocksDB data directory and the gRPC API on a free loopback
//! port, inside the test's runtime. Stopped (and its directory removed) when dropped.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use keel_store::server::{Member, StoreConfig};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub member: Arc<Member>,
    pub endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _dir: TempDir,
}

/// Fast elections so tests do not wait a second for the first leader.
pub fn test_config(dir: &std::path::Path, client_port: u16) -> StoreConfig {
    let mut config = StoreConfig::with_data_dir(dir.join("data"));
    config.name = "test".into();
    config.listen_client_urls = vec![format!("http://127.0.0.1:{client_port}")];
    config.advertise_client_urls = config.listen_client_urls.clone();
    // Peer URLs are only identities in a single-member cluster; nothing listens there.
    config.initial_advertise_peer_urls = vec![format!("http://127.0.0.1:{}", client_port as u32 + 10000)];
    config.listen_peer_urls = config.initial_advertise_peer_urls.clone();
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout = Duration::from_millis(500);
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut config = test_config(dir.path(), port);
        tweak(&mut config);
        let member = Member::start(config).await.expect("member starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let member = member.clone();
            async move {
                let _ = keel_store::api::serve(
                    member,
                    vec![keel_store::tls::Listener { tcp: listener, tls: None }],
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
            }
        });
        member
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .state(openraft::ServerState::Leader, "single member elects itself")
            .await
            .expect("member becomes leader");
        // A started member has published its name and client URLs (etcdctl's "started").
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !member.core().member_attributes().contains_key(&member.member_id()) {
            assert!(tokio::time::Instant::now() < deadline, "the member never published its attributes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self { member, endpoint: format!("http://127.0.0.1:{port}"), stop: Some(stop), server: Some(server), _dir: dir }
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint.as_str()], None).await.expect("client connects")
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            // Streams end at shutdown; unary calls finish; a bound keeps a bug from hanging tests.
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await.expect("server stops");
        }
        self.member.shutdown().await;
        // The database must be closed before the test process exits: RocksDB aborts the process
        // ("pthread lock: Invalid argument") when its statics are destroyed under an open database
        // or one being closed. Every other holder of the store (tasks finishing after shutdown)
        // lets go shortly; the last reference is then dropped here, so the database is closed on
        // this thread before the test returns.
        let backend = self.member.core().backend().clone();
        drop(self);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&backend) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store is still open 30 s after shutdown: a task holds it"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(backend);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Logs to stderr when `KEEL_TEST_LOG` holds a filter (e.g. `debug`); shown for failing tests.
fn init_logging() {
    if let Ok(filter) = std::env::var("KEEL_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// The gRPC status of a failed call.
pub fn status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}
