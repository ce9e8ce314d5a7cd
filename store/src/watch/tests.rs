//! Watch hub guarantees under pressure: with a stream buffer of two messages and nobody reading
//! while hundreds of revisions commit, every watcher still receives every matching event exactly
//! once, in order; progress messages never promise a revision before its events were delivered.

use std::sync::Arc;
use std::time::Duration;

use super::{WatchConfig, WatchHub, WatchMessage, WatchSpec};
use crate::backend::{Backend, Durability, MemBackend, WriteBatch};
use crate::mvcc::{Mvcc, PutRequest};

const BOUND: Duration = Duration::from_secs(30);

struct Fixture {
    mvcc: Arc<Mvcc>,
    hub: Arc<WatchHub>,
}

impl Fixture {
    fn new(stream_buffer: usize) -> Self {
        let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
        crate::format::check_or_init(&*backend).unwrap();
        let mvcc = Mvcc::open(backend).unwrap();
        let hub =
            WatchHub::new(mvcc.clone(), WatchConfig { stream_buffer, sync_batch_events: 7, ..WatchConfig::default() });
        Self { mvcc, hub }
    }

    /// Commits a put and publishes it, as the apply path does.
    fn put(&self, key: &str, value: &str) -> i64 {
        struct Any;
        impl crate::mvcc::LeaseCheck for Any {
            fn lease_exists(&self, _: i64) -> bool {
                true
            }
        }
        let mut txn = self.mvcc.write_txn(self.hub.wants_prev_values());
        txn.execute_put(&PutRequest { key: key.into(), value: value.into(), ..Default::default() }, &Any).unwrap();
        let committed = txn.commit(WriteBatch::new(), Durability::Buffered).unwrap();
        self.hub.publish(committed.revision, &committed.events);
        committed.revision
    }
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<WatchMessage>) -> WatchMessage {
    tokio::time::timeout(BOUND, rx.recv()).await.expect("message within bound").expect("stream open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_catches_up_without_gaps_or_duplicates() {
    let f = Fixture::new(2);
    let _syncer = f.hub.start_syncer();
    let (stream, mut rx) = f.hub.open_stream();
    let spec = |key: &str| WatchSpec { key: key.into(), prev_kv: true, ..WatchSpec::default() };
    let id_a = f.hub.create(stream, spec("a")).await.unwrap();
    let id_b = f.hub.create(stream, spec("b")).await.unwrap();
    assert!(matches!(next(&mut rx).await, WatchMessage::Created { watch_id, .. } if watch_id == id_a));
    assert!(matches!(next(&mut rx).await, WatchMessage::Created { watch_id, .. } if watch_id == id_b));

    // Nobody reads while 300 revisions commit: both watchers overflow the two-message buffer.
    let mut expected_a = Vec::new();
    let mut expected_b = Vec::new();
    for i in 0..300 {
        let key = if i % 3 == 0 { "b" } else { "a" };
        let rev = f.put(key, &i.to_string());
        if key == "a" { expected_a.push(rev) } else { expected_b.push(rev) }
    }

    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.len() < expected_a.len() || got_b.len() < expected_b.len() {
        match next(&mut rx).await {
            WatchMessage::Events { watch_id, revision, events, .. } => {
                for event in events.iter() {
                    assert!(event.kv.mod_revision <= revision, "header revision covers its events");
                    let prev = event.prev_kv.as_ref().map(|p| p.mod_revision);
                    if event.kv.version > 1 {
                        assert!(prev.is_some_and(|p| p < event.kv.mod_revision), "previous version attached");
                    }
                    if watch_id == id_a { got_a.push(event.kv.mod_revision) } else { got_b.push(event.kv.mod_revision) }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got_a, expected_a);
    assert_eq!(got_b, expected_b);

    // Once caught up, a progress request is answered with the latest revision, after the events.
    f.hub.request_progress(stream);
    let latest = f.mvcc.current_revision();
    match next(&mut rx).await {
        WatchMessage::Progress { watch_id: -1, revision } => assert_eq!(revision, latest),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_and_cancellation_bracket_a_watchers_events() {
    let f = Fixture::new(8);
    let _syncer = f.hub.start_syncer();
    f.put("k", "before");
    let (stream, mut rx) = f.hub.open_stream();
    let id = f
        .hub
        .create(stream, WatchSpec { key: b"k".to_vec(), start_revision: 2, ..WatchSpec::default() })
        .await
        .unwrap();
    assert!(
        matches!(next(&mut rx).await, WatchMessage::Created { watch_id, revision } if watch_id == id && revision == 2)
    );
    match next(&mut rx).await {
        WatchMessage::Events { events, .. } => assert_eq!(events[0].kv.value, b"before"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(f.hub.cancel(stream, id).await.unwrap());
    assert!(matches!(next(&mut rx).await, WatchMessage::Canceled { watch_id, .. } if watch_id == id));
    f.put("k", "after");
    assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(), "nothing after cancel");

    // Duplicate ids and empty ranges are refused with etcd's reasons.
    let dup =
        f.hub.create(stream, WatchSpec { key: b"x".to_vec(), watch_id: 5, ..WatchSpec::default() }).await.unwrap();
    assert_eq!(dup, 5);
    assert!(matches!(next(&mut rx).await, WatchMessage::Created { .. }));
    let err = f.hub.create(stream, WatchSpec { key: b"x".to_vec(), watch_id: 5, ..WatchSpec::default() }).await;
    assert_eq!(err, Err(super::WatchError::DuplicateId));
    assert!(
        matches!(next(&mut rx).await, WatchMessage::CreateFailed { reason, .. } if reason == "mvcc: duplicate watch ID provided on the WatchStream")
    );
    let err =
        f.hub.create(stream, WatchSpec { key: b"b".to_vec(), range_end: b"a".to_vec(), ..WatchSpec::default() }).await;
    assert_eq!(err, Err(super::WatchError::EmptyRange));
    f.hub.close_stream(stream);
    assert_eq!(f.hub.watcher_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receiving_the_same_events_share_one_batch() {
    let f = Fixture::new(8);
    let _syncer = f.hub.start_syncer();
    let (one, mut rx_one) = f.hub.open_stream();
    let (two, mut rx_two) = f.hub.open_stream();
    let plain = || WatchSpec { key: b"k".to_vec(), ..WatchSpec::default() };
    let range = WatchSpec { key: b"a".to_vec(), range_end: b"z".to_vec(), ..WatchSpec::default() };
    let with_prev = WatchSpec { key: b"k".to_vec(), prev_kv: true, ..WatchSpec::default() };
    let ids_one = [f.hub.create(one, plain()).await.unwrap(), f.hub.create(one, range).await.unwrap()];
    let ids_two = [f.hub.create(two, plain()).await.unwrap(), f.hub.create(two, with_prev).await.unwrap()];

    // Each watcher sees the first put (through the syncer or directly); after it every watcher is
    // synced, so the second put reaches all of them through `publish`.
    let mut batches = Vec::new();
    for value in ["first", "second"] {
        let revision = f.put("k", value);
        batches.clear();
        for (stream, rx, ids) in [(one, &mut rx_one, ids_one), (two, &mut rx_two, ids_two)] {
            let mut seen = 0;
            while seen < ids.len() {
                match next(rx).await {
                    WatchMessage::Events { watch_id, events, .. }
                        if events.last().unwrap().kv.mod_revision == revision =>
                    {
                        batches.push(((stream, watch_id), events));
                        seen += 1;
                    }
                    WatchMessage::Created { .. } | WatchMessage::Events { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    let prev_id = (two, ids_two[1]);
    let (with_prev, without): (Vec<_>, Vec<_>) = batches.into_iter().partition(|(id, _)| *id == prev_id);
    assert_eq!(without.len(), 3);
    for (_, batch) in &without {
        assert!(Arc::ptr_eq(batch, &without[0].1), "watchers wanting the same events share one batch");
        assert!(batch[0].prev_kv.is_none(), "no previous value for watchers that did not ask");
    }
    let prev = &with_prev[0].1;
    assert!(!Arc::ptr_eq(prev, &without[0].1));
    assert_eq!(prev[0].prev_kv.as_ref().map(|kv| kv.value.as_slice()), Some(&b"first"[..]));
}
