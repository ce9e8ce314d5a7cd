//! Property test: the MVCC engine against a simple in-memory model.
//!
//! Random puts, runs of puts staged and written as one batch (as apply writes consecutive put
//! entries), range deletes, transactions (with compares and both branches), compactions (with
//! physical removal awaited) and restarts are applied to the engine and to a model that keeps the
//! full state at every revision. After every step, ranges at revisions across the retained window
//! and watch replays from every retained revision must match the model exactly, and reads below
//! the compaction revision must fail with `Compacted`.
//!
//! The seed is fixed (reproducible in CI) and printed; set `KEEL_PROPTEST_SEED` to explore others.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel_store::backend::{Backend, Cf, Durability, MemBackend, RocksBackend, RocksOptions, WriteBatch};
use keel_store::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, Event, EventKind, KeyValue, LeaseCheck, Mvcc, MvccError,
    PutRequest, RangeRequest, RequestOp, TxnRequest, lease_attachment_prefix,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};

/// Keys chosen to exercise the index's escaping: NUL bytes, prefixes, and 0xff.
const KEYS: [&[u8]; 7] = [b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"b\xff", b"\xff"];

#[derive(Clone, Debug)]
enum SubOp {
    Put { key: usize, value: u8 },
    Delete { key: usize, end: Option<usize> },
}

#[derive(Clone, Debug)]
enum Op {
    Sub(SubOp),
    Txn {
        compare_key: usize,
        compare_version: i64,
        then: Vec<SubOp>,
        otherwise: Vec<SubOp>,
    },
    /// Standalone puts staged one on another and committed together.
    StagedPuts(Vec<(usize, u8)>),
    Compact {
        back: i64,
        wait: bool,
    },
    Restart,
}

#[derive(Clone, Debug)]
struct Probe {
    revision_pick: u16,
    start: usize,
    end: Option<usize>,
    limit: u8,
}

fn sub_op() -> impl Strategy<Value = SubOp> {
    prop_oneof![
        3 => (0..KEYS.len(), any::<u8>()).prop_map(|(key, value)| SubOp::Put { key, value }),
        1 => (0..KEYS.len(), proptest::option::of(0..KEYS.len() + 1))
            .prop_map(|(key, end)| SubOp::Delete { key, end }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => sub_op().prop_map(Op::Sub),
        2 => prop::collection::vec((0..KEYS.len(), any::<u8>()), 1..6).prop_map(Op::StagedPuts),
        3 => (0..KEYS.len(), 0i64..3, prop::collection::vec(sub_op(), 0..4), prop::collection::vec(sub_op(), 0..3))
            .prop_map(|(compare_key, compare_version, then, otherwise)| Op::Txn { compare_key, compare_version, then, otherwise }),
        1 => (0i64..6, any::<bool>()).prop_map(|(back, wait)| Op::Compact { back, wait }),
        1 => Just(Op::Restart),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    (any::<u16>(), 0..KEYS.len(), proptest::option::of(0..KEYS.len() + 1), 0u8..4)
        .prop_map(|(revision_pick, start, end, limit)| Probe { revision_pick, start, end, limit })
}

/// `None`: single key; index `KEYS.len()`: every key from the start ("\0" range end).
fn range_end(end: Option<usize>) -> Vec<u8> {
    match end {
        None => Vec::new(),
        Some(i) if i == KEYS.len() => vec![0],
        Some(i) => KEYS[i].to_vec(),
    }
}

fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

struct AllLeases;
impl LeaseCheck for AllLeases {
    fn lease_exists(&self, _: i64) -> bool {
        true
    }
}

#[derive(Default)]
struct Model {
    current: i64,
    compacted: i64,
    /// The full state at every revision from 1.
    states: BTreeMap<i64, BTreeMap<Vec<u8>, KeyValue>>,
    events: Vec<Event>,
}

impl Model {
    fn new() -> Self {
        let mut states = BTreeMap::new();
        states.insert(1, BTreeMap::new());
        Self { current: 1, compacted: 0, states, events: Vec::new() }
    }

    fn apply_sub(state: &mut BTreeMap<Vec<u8>, KeyValue>, rev: i64, op: &SubOp, events: &mut Vec<Event>) {
        match op {
            SubOp::Put { key, value } => {
                let key = KEYS[*key].to_vec();
                let prev = state.get(&key).cloned();
                let kv = KeyValue {
                    key: key.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    value: vec![*value],
                    lease: 0,
                };
                state.insert(key, kv.clone());
                events.push(Event { kind: EventKind::Put, kv, prev_kv: None });
            }
            SubOp::Delete { key, end } => {
                let start = KEYS[*key];
                let end = range_end(*end);
                let doomed: Vec<Vec<u8>> = state.keys().filter(|k| in_range(start, &end, k)).cloned().collect();
                for key in doomed {
                    state.remove(&key);
                    events.push(Event {
                        kind: EventKind::Delete,
                        kv: KeyValue { key, mod_revision: rev, ..KeyValue::default() },
                        prev_kv: None,
                    });
                }
            }
        }
    }

    /// Applies a write; returns its events (empty when nothing changed).
    fn apply(&mut self, op: &Op) -> Vec<Event> {
        let rev = self.current + 1;
        let mut state = self.states[&self.current].clone();
        let mut events = Vec::new();
        match op {
            Op::Sub(sub) => Self::apply_sub(&mut state, rev, sub, &mut events),
            Op::Txn { compare_key, compare_version, then, otherwise } => {
                let version = state.get(KEYS[*compare_key]).map_or(0, |kv| kv.version);
                let branch = if version == *compare_version { then } else { otherwise };
                for sub in branch {
                    Self::apply_sub(&mut state, rev, sub, &mut events);
                }
            }
            Op::StagedPuts(_) | Op::Compact { .. } | Op::Restart => unreachable!("not one write"),
        }
        if !events.is_empty() {
            self.current = rev;
            self.states.insert(rev, state);
            self.events.extend(events.clone());
        }
        events
    }
}

fn to_request(sub: &SubOp) -> RequestOp {
    match sub {
        SubOp::Put { key, value } => {
            RequestOp::Put(PutRequest { key: KEYS[*key].to_vec(), value: vec![*value], ..Default::default() })
        }
        SubOp::Delete { key, end } => RequestOp::DeleteRange(DeleteRangeRequest {
            key: KEYS[*key].to_vec(),
            range_end: range_end(*end),
            prev_kv: false,
        }),
    }
}

fn apply_engine(mvcc: &Mvcc, op: &Op) -> Vec<Event> {
    let mut txn = mvcc.write_txn(false);
    match op {
        // Standalone puts and deletes take the path the Put and DeleteRange RPCs take.
        Op::Sub(SubOp::Put { key, value }) => {
            let req = PutRequest { key: KEYS[*key].to_vec(), value: vec![*value], ..Default::default() };
            txn.execute_put(&req, &AllLeases).expect("put");
        }
        Op::Sub(SubOp::Delete { key, end }) => {
            let req = DeleteRangeRequest { key: KEYS[*key].to_vec(), range_end: range_end(*end), prev_kv: false };
            txn.execute_delete_range(&req).expect("delete");
        }
        Op::Txn { compare_key, compare_version, then, otherwise } => {
            let req = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Version(*compare_version),
                    key: KEYS[*compare_key].to_vec(),
                    range_end: Vec::new(),
                }],
                success: then.iter().map(to_request).collect(),
                failure: otherwise.iter().map(to_request).collect(),
            };
            txn.execute_txn(&req, &AllLeases).expect("apply txn");
        }
        Op::StagedPuts(_) | Op::Compact { .. } | Op::Restart => unreachable!("not one write"),
    }
    let committed = txn.commit(WriteBatch::new(), Durability::Buffered).expect("commit");
    committed
        .events
        .into_iter()
        .map(|mut e| {
            e.prev_kv = None;
            e
        })
        .collect()
}

/// A range over every key at the current revision.
fn every_key() -> RangeRequest {
    RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() }
}

/// Checks ranges and replays against the model.
fn check(mvcc: &Mvcc, model: &Model, probes: &[Probe]) -> Result<(), TestCaseError> {
    prop_assert_eq!(mvcc.current_revision(), model.current);
    prop_assert_eq!(mvcc.compacted_revision(), model.compacted);
    let oldest = model.compacted.max(1);
    for probe in probes {
        let window = (model.current - oldest + 1) as u64;
        let revision = oldest + (u64::from(probe.revision_pick) % window) as i64;
        let start = KEYS[probe.start];
        let end = range_end(probe.end);
        let req = RangeRequest {
            key: start.to_vec(),
            range_end: end.clone(),
            revision,
            limit: i64::from(probe.limit),
            ..Default::default()
        };
        let expected: Vec<KeyValue> =
            model.states[&revision].values().filter(|kv| in_range(start, &end, &kv.key)).cloned().collect();
        let got = mvcc.range(&req).map_err(|e| TestCaseError::fail(format!("range at {revision}: {e}")))?;
        prop_assert_eq!(got.count, expected.len() as i64, "count at revision {}", revision);
        let limit = if probe.limit == 0 { expected.len() } else { usize::from(probe.limit).min(expected.len()) };
        prop_assert_eq!(&got.kvs, &expected[..limit].to_vec(), "range at revision {}", revision);
        prop_assert_eq!(got.more, limit < expected.len());
        prop_assert_eq!(got.revision, model.current);

        // Below the compaction revision every read fails.
        if model.compacted > 1 {
            let stale = RangeRequest { revision: model.compacted - 1, ..req.clone() };
            prop_assert!(
                matches!(mvcc.range(&stale), Err(MvccError::Compacted { .. })),
                "a read below the compaction revision fails"
            );
        }
        // A future revision fails too.
        let future = RangeRequest { revision: model.current + 1, ..req };
        prop_assert!(
            matches!(mvcc.range(&future), Err(MvccError::FutureRevision)),
            "a read of a future revision fails"
        );

        // Replay from a retained revision returns exactly the model's events from there.
        let from = revision.max(model.compacted).max(1);
        let (events, resume) =
            mvcc.read_events(from, model.current, usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected_events: Vec<Event> = model.events.iter().filter(|e| e.kv.mod_revision >= from).cloned().collect();
        prop_assert_eq!(events, expected_events, "replay from {}", from);
        prop_assert_eq!(resume, model.current + 1);
    }
    Ok(())
}

struct Store {
    /// `None` only transiently, while restarting.
    backend: Option<Arc<dyn Backend>>,
    mvcc: Option<Arc<Mvcc>>,
    rocks_dir: Option<tempfile::TempDir>,
}

impl Store {
    fn open(rocks: bool) -> Self {
        let rocks_dir = rocks.then(|| tempfile::tempdir().expect("tempdir"));
        let mut store = Self { backend: None, mvcc: None, rocks_dir };
        store.start(None);
        store
    }

    /// Opens the engine on `backend`, or on a newly opened backend (RocksDB) / empty one (memory).
    fn start(&mut self, backend: Option<Arc<dyn Backend>>) {
        let backend = backend.unwrap_or_else(|| match &self.rocks_dir {
            Some(dir) => {
                Arc::new(RocksBackend::open(dir.path(), &RocksOptions::default()).expect("rocksdb")) as Arc<dyn Backend>
            }
            None => Arc::new(MemBackend::new()),
        });
        keel_store::format::check_or_init(&*backend).expect("format");
        self.mvcc = Some(Mvcc::open(backend.clone()).expect("open"));
        self.backend = Some(backend);
    }

    fn restart(&mut self) {
        drop(self.mvcc.take());
        let backend = self.backend.take().expect("backend");
        // RocksDB must be closed (every handle dropped) before it can be opened again; the memory
        // backend is kept, as a disk would be.
        let keep = if self.rocks_dir.is_some() {
            drop(backend);
            None
        } else {
            Some(backend)
        };
        self.start(keep);
    }

    fn mvcc(&self) -> &Mvcc {
        self.mvcc.as_deref().expect("open")
    }

    fn backend(&self) -> &dyn Backend {
        self.backend.as_deref().expect("open")
    }
}

fn run_case(rocks: bool, ops: &[Op], probes: &[Probe], runtime: &tokio::runtime::Runtime) -> Result<(), TestCaseError> {
    let mut store = Store::open(rocks);
    let mut model = Model::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Restart => store.restart(),
            Op::Compact { back, wait } => {
                let target = model.current - back;
                match store.mvcc().prepare_compaction(target) {
                    Ok(batch) => {
                        prop_assert!(
                            target > model.compacted && target <= model.current,
                            "compaction to {} accepted",
                            target
                        );
                        store.backend().write(batch, Durability::Buffered).expect("write");
                        store.mvcc().compaction_committed(target);
                        model.compacted = target;
                        if *wait {
                            let mut progress = store.mvcc().compaction_progress();
                            prop_assert!(runtime.block_on(progress.wait_for(target)), "compaction finished");
                        }
                    }
                    Err(MvccError::Compacted { .. }) => prop_assert!(target <= model.compacted),
                    Err(MvccError::FutureRevision) => prop_assert!(target > model.current),
                    Err(err) => return Err(TestCaseError::fail(format!("compaction: {err}"))),
                }
            }
            Op::StagedPuts(puts) => {
                let before = store.mvcc().range(&every_key()).expect("range before staging");
                let mut staged = store.mvcc().stage_puts();
                let mut expected = Vec::new();
                for (i, &(key, value)) in puts.iter().enumerate() {
                    expected.extend(model.apply(&Op::Sub(SubOp::Put { key, value })));
                    let req = PutRequest { key: KEYS[key].to_vec(), value: vec![value], ..Default::default() };
                    let resp = staged.execute_put(store.mvcc(), &req, &AllLeases, false).expect("staged put");
                    prop_assert_eq!(resp.revision, model.current, "revision of staged put {}", i);
                }
                let unwritten = store.mvcc().range(&every_key()).expect("range while staged");
                prop_assert_eq!(unwritten, before, "staged puts are invisible until committed");
                let committed = staged.commit(store.mvcc(), WriteBatch::new(), Durability::Buffered).expect("commit");
                prop_assert_eq!(committed.last().map(|c| c.revision), Some(model.current));
                let got: Vec<Event> = committed
                    .into_iter()
                    .flat_map(|c| c.events)
                    .map(|mut e| {
                        e.prev_kv = None;
                        e
                    })
                    .collect();
                prop_assert_eq!(got, expected, "events of step {}: {:?}", step, op);
            }
            write => {
                let expected = model.apply(write);
                let got = apply_engine(store.mvcc(), write);
                prop_assert_eq!(got, expected, "events of step {}: {:?}", step, write);
            }
        }
        check(store.mvcc(), &model, &probes[step % probes.len()..][..1])?;
    }
    for window in probes.chunks(4) {
        check(store.mvcc(), &model, window)?;
    }
    Ok(())
}

fn seed() -> u64 {
    let seed = std::env::var("KEEL_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x6b65_656c);
    eprintln!("mvcc model test seed: {seed} (set KEEL_PROPTEST_SEED to change)");
    seed
}

fn run(rocks: bool, cases: u32) {
    let seed = seed();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (prop::collection::vec(op(), 1..40), prop::collection::vec(probe(), 4..12));
    let result = runner.run(&strategy, |(ops, probes)| run_case(rocks, &ops, &probes, &runtime));
    if let Err(err) = result {
        panic!("seed {seed}: {err}");
    }
}

#[test]
fn mvcc_matches_the_model_on_the_memory_backend() {
    run(false, 256);
}

#[test]
fn mvcc_matches_the_model_on_the_rocksdb_backend() {
    run(true, 24);
}

/// Puts `value` under key `k` with `lease` in a transaction of its own; returns its events.
fn put_k(mvcc: &Mvcc, value: Vec<u8>, lease: i64) -> Vec<Event> {
    let mut txn = mvcc.write_txn(false);
    let req = PutRequest { key: b"k".to_vec(), value, lease, ..Default::default() };
    txn.execute_put(&req, &AllLeases).expect("put");
    txn.commit(WriteBatch::new(), Durability::Buffered).expect("commit").events
}

/// A snapshot install replaces the data under a running engine and reloads it; the live-key index
/// must describe the new data, not the old.
#[test]
fn a_reloaded_engine_builds_on_the_new_data_not_on_its_old_live_key_index() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    keel_store::format::check_or_init(&*backend).expect("format");
    let put = |mvcc: &Mvcc, value: u8| put_k(mvcc, vec![value], 0);
    let running = Mvcc::open(backend.clone()).expect("open");
    put(&running, 1);
    // Another writer (standing in for the installed snapshot's data) moves the key on.
    let installer = Mvcc::open(backend.clone()).expect("open");
    put(&installer, 2);
    put(&installer, 3);
    running.reload().expect("reload");
    let events = put(&running, 4);
    assert_eq!(events[0].kv.version, 4, "the put builds on the reloaded data, not on the indexed version 1");
    assert_eq!(events[0].kv.create_revision, 2);
}

/// Keys attached to lease `id`, read straight from the backend's attachment records.
fn attached(backend: &dyn Backend, id: i64) -> Vec<Vec<u8>> {
    let prefix = lease_attachment_prefix(id);
    let mut keys = Vec::new();
    let mut cursor = backend.cursor(Cf::Leases);
    cursor.seek(&prefix);
    while let Some((key, _)) = cursor.entry() {
        let Some(attached) = key.strip_prefix(prefix.as_slice()) else { break };
        keys.push(attached.to_vec());
        cursor.next();
    }
    keys
}

/// A put learns the key's previous create revision, version and lease from the live-key index,
/// before and after a restart reloads it from disk: the attachment moves from the old lease to
/// the new one, and a keys-only read (answered from the index) agrees with a full read.
#[test]
fn puts_build_on_the_indexed_version_and_lease_before_and_after_a_restart() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    keel_store::format::check_or_init(&*backend).expect("format");
    let put = |mvcc: &Mvcc, lease: i64| put_k(mvcc, vec![1], lease);
    let read = |mvcc: &Mvcc, keys_only: bool| {
        let req = RangeRequest { key: b"k".to_vec(), keys_only, ..Default::default() };
        let mut kvs = mvcc.range(&req).expect("range").kvs;
        assert_eq!(kvs.len(), 1);
        kvs.remove(0)
    };
    let running = Mvcc::open(backend.clone()).expect("open");
    put(&running, 7);
    let events = put(&running, 9);
    assert_eq!((events[0].kv.create_revision, events[0].kv.version, events[0].kv.lease), (2, 2, 9));
    assert_eq!(attached(&*backend, 7), Vec::<Vec<u8>>::new(), "the second put detached the key from lease 7");
    assert_eq!(attached(&*backend, 9), vec![b"k".to_vec()]);
    let full = read(&running, false);
    assert_eq!(read(&running, true), KeyValue { value: Vec::new(), ..full });
    drop(running);

    let reopened = Mvcc::open(backend.clone()).expect("reopen");
    let events = put(&reopened, 0);
    assert_eq!((events[0].kv.create_revision, events[0].kv.version, events[0].kv.lease), (2, 3, 0));
    assert_eq!(attached(&*backend, 9), Vec::<Vec<u8>>::new(), "the put after the restart detached lease 9");
    let full = read(&reopened, false);
    assert_eq!((full.version, full.mod_revision), (3, 4));
    assert_eq!(read(&reopened, true), KeyValue { value: Vec::new(), ..full });
}
