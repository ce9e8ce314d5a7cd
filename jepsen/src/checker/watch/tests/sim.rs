//! A simulated correct store and the clients using it, recording a history: writers put and
//! delete at random, watchers open, lose and resume streams with every combination of options,
//! and the reference reads everything at the end.
//!
//! Invariants:
//! - Every history is a function of its `Config` (seed included): the only source of randomness
//!   is the SplitMix64 generator seeded from it.
//! - The store behaves as etcd promises, so every history the simulator records must be valid;
//!   the tests rely on that to attribute every anomaly to the change they made.

use std::collections::BTreeMap;

use crate::checker::watch::stream::wanted;
use crate::history::{Event, EventType, History, Op, Process, WatchEvent, WatchResponse, WatchSpec};

/// SplitMix64: a tiny deterministic generator, so every history is a function of its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound.max(1))) >> 64) as u64
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// A number in `lo..=hi` (`lo <= hi`).
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

/// The shape of a simulated test.
#[derive(Clone, Copy)]
pub(super) struct Config {
    pub(super) seed: u64,
    /// Acknowledged writes to make before stopping.
    pub(super) writes: usize,
    pub(super) keys: u64,
    pub(super) writers: usize,
    /// Watchers that resume their streams where they broke off.
    pub(super) watchers: usize,
    /// Watchers whose every stream starts at revision 1 (long catch-ups).
    pub(super) catch_up_watchers: usize,
    /// Chance per step (per mille) that an open stream breaks.
    pub(super) close_per_mille: u64,
}

impl Config {
    pub(super) fn small(seed: u64) -> Self {
        Self { seed, writes: 400, keys: 6, writers: 4, watchers: 6, catch_up_watchers: 1, close_per_mille: 15 }
    }
}

#[derive(Clone, Copy)]
struct KeyState {
    value: u64,
    create_revision: i64,
    version: i64,
    mod_revision: i64,
}

/// A write invoked and not completed yet.
struct Pending {
    op: Op,
    /// Already applied along with another put in one revision; completes as `info`.
    applied: bool,
}

struct Writer {
    process: u64,
    pending: Option<Pending>,
}

struct Open {
    spec: WatchSpec,
    /// The store's revision when the stream was created.
    created: i64,
    /// False for a stream that will never be confirmed created (an `info` watch).
    confirmed: bool,
}

struct Watcher {
    process: u64,
    /// Range, filters and options shared by all of this watcher's streams.
    base: WatchSpec,
    catch_up: bool,
    /// Where the first stream starts: 0 from the current revision, 1 from a past revision,
    /// 2 from a future one.
    first_start: usize,
    /// Where the next stream starts: one past the last revision received.
    resume: Option<i64>,
    open: Option<Open>,
}

/// A correct store and the clients using it, recording the history.
pub(super) struct Sim {
    config: Config,
    rng: Rng,
    events: Vec<Event>,
    revision: i64,
    state: BTreeMap<u64, KeyState>,
    /// Every change, in revision order, with previous values.
    log: Vec<WatchEvent>,
    next_value: u64,
    next_process: u64,
    acknowledged: usize,
    /// A stream was canceled for compaction.
    compacted: bool,
    /// A stream was left unconfirmed.
    unconfirmed: bool,
}

impl Sim {
    fn record(&mut self, process: Process, kind: EventType, op: Op) -> usize {
        let index = self.events.len();
        let node = Some(format!("n{}", 1 + self.rng.below(3)));
        let error = (kind == EventType::Info || kind == EventType::Fail).then(|| "timeout".to_string());
        self.events.push(Event { index, time_ns: index as u64 * 1_000, process, kind, op, node, error });
        index
    }

    fn fresh_process(&mut self) -> u64 {
        self.next_process += 1;
        self.next_process
    }

    /// Applies one change of `key` at `revision`: a put of `value`, or a delete.
    fn change(&mut self, revision: i64, key: u64, value: Option<u64>) {
        let before = self.state.get(&key).copied();
        let (prev_value, prev_mod_revision) = before.map_or((None, None), |s| (Some(s.value), Some(s.mod_revision)));
        let event = match value {
            Some(value) => {
                let (create_revision, version) = before.map_or((revision, 1), |s| (s.create_revision, s.version + 1));
                self.state.insert(key, KeyState { value, create_revision, version, mod_revision: revision });
                WatchEvent {
                    delete: false,
                    key,
                    value: Some(value),
                    create_revision,
                    mod_revision: revision,
                    version,
                    prev_value,
                    prev_mod_revision,
                }
            }
            None => {
                self.state.remove(&key);
                WatchEvent {
                    delete: true,
                    key,
                    value: None,
                    create_revision: 0,
                    mod_revision: revision,
                    version: 0,
                    prev_value,
                    prev_mod_revision,
                }
            }
        };
        self.log.push(event);
    }

    /// Applies a write alone in a new revision; returns the revision, or `None` for a delete
    /// of a missing key (which changes nothing).
    fn apply(&mut self, op: &Op) -> Option<i64> {
        match *op {
            Op::Put { key, value, .. } => {
                self.revision += 1;
                self.change(self.revision, key, Some(value));
                Some(self.revision)
            }
            Op::Delete { key, .. } => {
                if !self.state.contains_key(&key) {
                    return None;
                }
                self.revision += 1;
                self.change(self.revision, key, None);
                Some(self.revision)
            }
            _ => unreachable!("only writes are applied"),
        }
    }

    fn writer_step(&mut self, writers: &mut [Writer], w: usize) {
        let Some(pending) = writers[w].pending.take() else {
            let key = self.rng.below(self.config.keys);
            let op = if self.rng.chance(750) {
                self.next_value += 1;
                Op::Put { key, value: self.next_value, revision: None }
            } else {
                Op::Delete { key, revision: None, deleted: None }
            };
            self.record(Process::Client(writers[w].process), EventType::Invoke, op.clone());
            writers[w].pending = Some(Pending { op, applied: false });
            return;
        };
        let process = Process::Client(writers[w].process);
        if pending.applied {
            // Applied along with another put; the client never heard.
            self.record(process, EventType::Info, pending.op);
            writers[w].process = self.fresh_process();
            return;
        }
        match self.rng.below(100) {
            0..82 => {
                let revision = self.apply(&pending.op);
                let op = match pending.op {
                    Op::Put { key, value, .. } => Op::Put { key, value, revision },
                    // A delete of a missing key answers with the current revision.
                    Op::Delete { key, .. } => Op::Delete {
                        key,
                        revision: Some(revision.unwrap_or(self.revision)),
                        deleted: Some(revision.is_some()),
                    },
                    _ => unreachable!("only writes are pending"),
                };
                self.record(process, EventType::Ok, op);
                self.acknowledged += 1;
            }
            82..88 => {
                self.record(process, EventType::Fail, pending.op);
            }
            roll => {
                if roll < 95 {
                    self.apply_unacknowledged(writers, &pending.op);
                }
                self.record(process, EventType::Info, pending.op);
                writers[w].process = self.fresh_process();
            }
        }
    }

    /// Applies a write whose client will not hear back: usually alone, but a put is often
    /// applied with another writer's pending put in one revision. That stands in for a
    /// transaction, which this workload does not issue, so that atomicity is exercised.
    fn apply_unacknowledged(&mut self, writers: &mut [Writer], op: &Op) {
        let &Op::Put { key, value, .. } = op else {
            self.apply(op);
            return;
        };
        let partner = writers.iter().position(
            |o| matches!(o.pending, Some(Pending { op: Op::Put { key: theirs, .. }, applied: false }) if theirs != key),
        );
        let Some(o) = partner.filter(|_| self.rng.chance(800)) else {
            self.apply(op);
            return;
        };
        let Some(Pending { op: Op::Put { key: other, value: theirs, .. }, ref mut applied }) = writers[o].pending
        else {
            unreachable!("the partner has a pending put")
        };
        *applied = true;
        self.revision += 1;
        self.change(self.revision, key, Some(value));
        self.change(self.revision, other, Some(theirs));
    }

    fn watcher_step(&mut self, watcher: &mut Watcher) {
        let Some(open) = watcher.open.take() else {
            let start = if watcher.catch_up {
                1
            } else {
                match watcher.resume {
                    Some(start) => start,
                    None => match watcher.first_start {
                        0 => 0,
                        1 => self.rng.between(1, self.revision + 1),
                        _ => self.revision + self.rng.between(1, 5),
                    },
                }
            };
            let spec = WatchSpec { start_revision: start, ..watcher.base.clone() };
            self.record(
                Process::Client(watcher.process),
                EventType::Invoke,
                Op::Watch { spec: spec.clone(), responses: None },
            );
            // The first stream opened is never confirmed created, and then some others.
            let confirmed = self.unconfirmed && !self.rng.chance(80);
            self.unconfirmed = true;
            watcher.open = Some(Open { spec, created: self.revision, confirmed });
            return;
        };
        if !self.rng.chance(self.config.close_per_mille) {
            watcher.open = Some(open);
            return;
        }
        self.close(watcher, open);
    }

    /// Ends a stream, recording everything it received.
    fn close(&mut self, watcher: &mut Watcher, open: Open) {
        let process = Process::Client(watcher.process);
        if !open.confirmed {
            self.record(process, EventType::Info, Op::Watch { spec: open.spec, responses: None });
            watcher.process = self.fresh_process();
            return;
        }
        let start = open.spec.start_revision;
        // The first stream that can be is canceled for compaction, and then some others.
        if start > 0 && start <= self.revision && (!self.compacted || self.rng.chance(100)) {
            self.compacted = true;
            let compacted = WatchResponse {
                revision: self.revision,
                events: Vec::new(),
                canceled: true,
                compact_revision: self.rng.between(start, self.revision),
            };
            self.record(process, EventType::Ok, Op::Watch { spec: open.spec, responses: Some(vec![compacted]) });
            return;
        }
        let responses = self.responses(&open);
        if let Some(last) = responses.iter().rev().find_map(|r| r.events.last()) {
            watcher.resume = Some(last.mod_revision + 1);
        } else if let Some(p) = responses.iter().filter(|r| !r.canceled).map(|r| r.revision).max() {
            watcher.resume = Some(p + 1);
        } else if start == 0 {
            watcher.resume = Some(open.created + 1);
        }
        self.record(process, EventType::Ok, Op::Watch { spec: open.spec, responses: Some(responses) });
    }

    /// What a correct store sends a stream from its creation until now: whole revisions in
    /// order, headers never below their events nor going back, progress notifications only
    /// once everything up to them was sent.
    fn responses(&mut self, open: &Open) -> Vec<WatchResponse> {
        let spec = &open.spec;
        let end = self.revision;
        let from = if spec.start_revision > 0 { spec.start_revision } else { open.created + 1 };
        // A stream may break while lagging behind the store.
        let upto = if self.rng.chance(700) || from > end { end } else { self.rng.between(from - 1, end) };
        let lo = self.log.partition_point(|e| e.mod_revision < from);
        let events: Vec<WatchEvent> = self.log[lo..]
            .iter()
            .take_while(|e| e.mod_revision <= upto)
            .filter(|e| wanted(spec, e.key, e.delete))
            .map(|e| {
                let mut e = e.clone();
                if !spec.prev_kv {
                    e.prev_value = None;
                    e.prev_mod_revision = None;
                }
                e
            })
            .collect();
        let progress_per_mille = if spec.progress_notify { 300 } else { 30 };
        let mut out = Vec::new();
        let mut delivered = if spec.start_revision > 0 { spec.start_revision - 1 } else { open.created };
        let mut header = 0;
        let mut progress = i64::MIN;
        let mut i = 0;
        loop {
            let next = events.get(i).map(|e| e.mod_revision);
            // A stream that asked for progress notifications gets one at its end more often
            // than not.
            let chance = if next.is_none() && spec.progress_notify { 900 } else { progress_per_mille };
            if self.rng.chance(chance) {
                let lo = delivered.max(progress).max(header);
                let hi = next.map_or(upto, |r| r - 1);
                if lo <= hi {
                    progress = self.rng.between(lo, hi);
                    out.push(WatchResponse {
                        revision: progress,
                        events: Vec::new(),
                        canceled: false,
                        compact_revision: 0,
                    });
                }
            }
            if next.is_none() {
                break;
            }
            let revisions = 1 + self.rng.below(4);
            let mut chunk = Vec::new();
            for _ in 0..revisions {
                let Some(revision) = events.get(i).map(|e| e.mod_revision) else { break };
                while events.get(i).is_some_and(|e| e.mod_revision == revision) {
                    chunk.push(events[i].clone());
                    i += 1;
                }
            }
            let last = chunk.last().map_or(0, |e: &WatchEvent| e.mod_revision);
            header = header.max(last);
            if self.rng.chance(200) {
                // A catch-up response carries the store's current revision.
                header = header.max(self.rng.between(last, end));
            }
            delivered = last;
            out.push(WatchResponse { revision: header, events: chunk, canceled: false, compact_revision: 0 });
        }
        if self.rng.chance(100) {
            out.push(WatchResponse { revision: end, events: Vec::new(), canceled: true, compact_revision: 0 });
        }
        out
    }

    pub(super) fn run(config: Config) -> History {
        let mut sim = Sim {
            config,
            rng: Rng(config.seed),
            events: Vec::new(),
            revision: 1,
            state: BTreeMap::new(),
            log: Vec::new(),
            next_value: 0,
            next_process: 0,
            acknowledged: 0,
            compacted: false,
            unconfirmed: false,
        };
        let mut writers: Vec<Writer> =
            (0..config.writers).map(|_| Writer { process: sim.fresh_process(), pending: None }).collect();
        let rotation = sim.rng.below(6) as usize;
        let mut watchers: Vec<Watcher> = (0..config.watchers + config.catch_up_watchers)
            .map(|w| {
                let keys = config.keys;
                let whole = w < 2 || w >= config.watchers;
                let (from_key, to_key) = if whole {
                    (0, keys)
                } else {
                    let from = sim.rng.below(keys);
                    (from, from + 1 + sim.rng.below(keys - from))
                };
                // Each option on and off among any six watchers in a row; the rotation varies
                // which range goes with which options. No two neighbours both filter out puts,
                // so one of the two first watchers, which watch every key, sees every put.
                const OPTIONS: [(bool, bool, bool, bool); 6] = [
                    (true, false, false, true),
                    (false, true, false, true),
                    (false, false, false, false),
                    (true, true, false, false),
                    (true, false, true, false),
                    (false, false, true, true),
                ];
                let (prev_kv, no_put, no_delete, progress_notify) = OPTIONS[(w + rotation) % OPTIONS.len()];
                let base = WatchSpec {
                    from_key,
                    to_key,
                    start_revision: 0,
                    prev_kv,
                    no_put,
                    no_delete,
                    progress_notify,
                    reference: false,
                };
                let catch_up = w >= config.watchers;
                // Catching up from revision 1 with puts, a stream sees the revisions that hold
                // two changes.
                let base = WatchSpec { no_put: base.no_put && !catch_up, ..base };
                let first_start = (w + rotation) % 3;
                Watcher { process: sim.fresh_process(), base, catch_up, first_start, resume: None, open: None }
            })
            .collect();
        // Operations of other workloads and faults are in the history too, and ignored.
        let reader = sim.fresh_process();
        sim.record(Process::Client(reader), EventType::Invoke, Op::Read { key: 1, value: None });
        sim.record(Process::Client(reader), EventType::Ok, Op::Read { key: 1, value: None });
        let mut fault_open = false;
        while sim.acknowledged < config.writes {
            let actor = sim.rng.below((writers.len() + watchers.len()) as u64) as usize;
            if actor < writers.len() {
                sim.writer_step(&mut writers, actor);
            } else {
                sim.watcher_step(&mut watchers[actor - writers.len()]);
            }
            if sim.rng.chance(5) {
                let fault =
                    crate::history::Fault { kind: "kill".into(), targets: vec!["n2".into()], detail: String::new() };
                let op = if fault_open { Op::Stop(fault) } else { Op::Start(fault) };
                sim.record(Process::Nemesis, EventType::Invoke, op.clone());
                sim.record(Process::Nemesis, EventType::Ok, op);
                fault_open = !fault_open;
            }
        }
        // The end: some writes stay outstanding (and may take effect), the others complete.
        for w in 0..writers.len() {
            if writers[w].pending.is_none() {
                continue;
            }
            if sim.rng.chance(300) {
                let pending = writers[w].pending.take().expect("pending");
                if !pending.applied && sim.rng.chance(500) {
                    sim.apply(&pending.op);
                }
            } else {
                sim.writer_step(&mut writers, w);
            }
        }
        for watcher in &mut watchers {
            if let Some(open) = watcher.open.take() {
                sim.close(watcher, open);
            }
        }
        sim.reference();
        History { events: sim.events }
    }

    /// The reference: every change from revision 1, then a progress notification at the
    /// last revision.
    fn reference(&mut self) {
        let spec = WatchSpec {
            from_key: 0,
            to_key: u64::MAX,
            start_revision: 1,
            prev_kv: true,
            no_put: false,
            no_delete: false,
            progress_notify: true,
            reference: true,
        };
        let process = Process::Client(self.fresh_process());
        self.record(process, EventType::Invoke, Op::Watch { spec: spec.clone(), responses: None });
        let mut responses = Vec::new();
        let mut i = 0;
        while i < self.log.len() {
            let revisions = 1 + self.rng.below(8);
            let mut chunk = Vec::new();
            for _ in 0..revisions {
                let Some(revision) = self.log.get(i).map(|e| e.mod_revision) else { break };
                while self.log.get(i).is_some_and(|e| e.mod_revision == revision) {
                    chunk.push(self.log[i].clone());
                    i += 1;
                }
            }
            responses.push(WatchResponse {
                revision: self.revision,
                events: chunk,
                canceled: false,
                compact_revision: 0,
            });
        }
        responses.push(WatchResponse {
            revision: self.revision,
            events: Vec::new(),
            canceled: false,
            compact_revision: 0,
        });
        self.record(process, EventType::Ok, Op::Watch { spec, responses: Some(responses) });
    }
}
