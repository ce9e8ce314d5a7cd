//! Tests of the watch module: each named after the property it protects.

//! Histories come from a simulated correct store: writers put and delete at random, watchers
//! open, lose and resume streams with every combination of options, and the reference reads
//! everything at the end. Such histories must be valid; each rule is then broken by one
//! targeted change of such a history and must be reported under its kind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::*;
use crate::history::Process;

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
struct Config {
    seed: u64,
    /// Acknowledged writes to make before stopping.
    writes: usize,
    keys: u64,
    writers: usize,
    /// Watchers that resume their streams where they broke off.
    watchers: usize,
    /// Watchers whose every stream starts at revision 1 (long catch-ups).
    catch_up_watchers: usize,
    /// Chance per step (per mille) that an open stream breaks.
    close_per_mille: u64,
}

impl Config {
    fn small(seed: u64) -> Self {
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
struct Sim {
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

    fn run(config: Config) -> History {
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

const SEEDS: [u64; 4] = [0x5EED_0001, 0x5EED_0002, 0x5EED_0003, 0x5EED_0004];

fn kinds(result: &CheckResult) -> BTreeSet<String> {
    result.anomalies.iter().map(|a| a.kind.clone()).collect()
}

fn set(kinds: &[&str]) -> BTreeSet<String> {
    kinds.iter().map(|k| (*k).to_string()).collect()
}

/// A generated history and the seed that made it, for failure messages.
struct Case {
    seed: u64,
    history: History,
}

impl Case {
    fn new(seed: u64) -> Self {
        let history = Sim::run(Config::small(seed));
        let result = check(&history);
        assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
        Case { seed, history }
    }

    /// History indices of the `ok` completions of ordinary watches with responses.
    fn streams(&self) -> Vec<usize> {
        self.history
            .events
            .iter()
            .filter(|e| e.kind == EventType::Ok)
            .filter(|e| matches!(&e.op, Op::Watch { spec, responses: Some(_) } if !spec.reference))
            .map(|e| e.index)
            .collect()
    }

    fn reference(&self) -> usize {
        self.history
            .events
            .iter()
            .rposition(|e| e.kind == EventType::Ok && matches!(&e.op, Op::Watch { spec, .. } if spec.reference))
            .expect("a reference")
    }

    fn spec(&self, index: usize) -> &WatchSpec {
        let Op::Watch { spec, .. } = &self.history.events[index].op else { panic!("not a watch") };
        spec
    }

    fn responses(&self, index: usize) -> &Vec<WatchResponse> {
        let Op::Watch { responses: Some(responses), .. } = &self.history.events[index].op else {
            panic!("not a watch with responses")
        };
        responses
    }

    fn responses_mut(&mut self, index: usize) -> &mut Vec<WatchResponse> {
        let Op::Watch { responses: Some(responses), .. } = &mut self.history.events[index].op else {
            panic!("not a watch with responses")
        };
        responses
    }

    /// The reference's changes, in order.
    fn changes(&self) -> Vec<WatchEvent> {
        self.responses(self.reference()).iter().flat_map(|r| r.events.clone()).collect()
    }

    /// How many changes the reference has at `revision`.
    fn changes_at(&self, revision: i64) -> usize {
        self.changes().iter().filter(|e| e.mod_revision == revision).count()
    }

    /// Finds the first stream and position satisfying `pick`, which sees the stream's index,
    /// spec and responses and returns a position of interest.
    fn find<T>(&self, what: &str, pick: impl Fn(usize, &WatchSpec, &[WatchResponse]) -> Option<T>) -> (usize, T) {
        self.streams()
            .into_iter()
            .find_map(|s| pick(s, self.spec(s), self.responses(s)).map(|t| (s, t)))
            .unwrap_or_else(|| panic!("seed {:#x}: no stream {what}", self.seed))
    }

    /// Removes every event of key `key` at `revision` from every watch, dropping responses
    /// left empty (an empty response would read as a progress notification).
    fn erase(&mut self, revision: i64, key: u64) {
        for index in 0..self.history.events.len() {
            if let Op::Watch { responses: Some(responses), .. } = &mut self.history.events[index].op {
                remove_events(responses, |e| e.mod_revision == revision && e.key == key);
            }
        }
    }

    fn check(&self) -> CheckResult {
        check(&self.history)
    }

    /// Checks and asserts the kinds reported are exactly `expected`.
    fn expect(&self, expected: &[&str]) -> CheckResult {
        let result = self.check();
        assert_eq!(kinds(&result), set(expected), "seed {:#x}: {:#?}", self.seed, result.anomalies);
        let verdict = if expected.is_empty() {
            Validity::Valid
        } else if expected.iter().all(|k| *k == NO_REFERENCE || *k == REFERENCE_INCOMPLETE) {
            Validity::Unknown
        } else {
            Validity::Invalid
        };
        assert_eq!(result.valid, verdict, "seed {:#x}", self.seed);
        result
    }
}

/// Removes the events `doomed` approves of, dropping the responses they leave empty (an empty
/// response would read as a progress notification); returns how many were removed.
fn remove_events(responses: &mut Vec<WatchResponse>, mut doomed: impl FnMut(&WatchEvent) -> bool) -> usize {
    let mut removed = 0;
    responses.retain_mut(|r| {
        let had = r.events.len();
        r.events.retain(|e| !doomed(e));
        removed += had - r.events.len();
        had == 0 || !r.events.is_empty()
    });
    removed
}

/// Removes the event at (response, event) of a stream, dropping the response if it empties.
fn drop_event(responses: &mut Vec<WatchResponse>, r: usize, e: usize) -> WatchEvent {
    let removed = responses[r].events.remove(e);
    if responses[r].events.is_empty() {
        responses.remove(r);
    }
    removed
}

/// Positions (response, event) of a stream's events, in order.
fn positions(responses: &[WatchResponse]) -> Vec<(usize, usize)> {
    responses.iter().enumerate().flat_map(|(r, resp)| (0..resp.events.len()).map(move |e| (r, e))).collect()
}

fn event_at(responses: &[WatchResponse], (r, e): (usize, usize)) -> &WatchEvent {
    &responses[r].events[e]
}

#[test]
fn a_correct_store_gives_a_valid_history() {
    for seed in SEEDS {
        let history = Sim::run(Config::small(seed));
        let result = check(&history);
        assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
        let stat = |name: &str| result.stats[name].as_u64().unwrap_or(0);
        for name in [
            "puts_ok",
            "puts_info",
            "puts_fail",
            "deletes_ok",
            "watches_checked",
            "watches_ignored",
            "watches_compacted",
            "events_received",
            "reference_events",
            "progress_notifications",
        ] {
            assert!(stat(name) > 0, "seed {seed:#x}: no {name}: {:?}", result.stats);
        }
        assert_eq!(stat("writes_unverified") + stat("events_unverified"), 0, "seed {seed:#x}");
        // The generator exercises what the rules are about.
        let case = Case { seed, history };
        let streams = case.streams();
        let specs: Vec<&WatchSpec> = streams.iter().map(|&s| case.spec(s)).collect();
        assert!(specs.iter().any(|s| s.prev_kv) && specs.iter().any(|s| !s.prev_kv), "seed {seed:#x}");
        assert!(specs.iter().any(|s| s.no_put) && specs.iter().any(|s| s.no_delete), "seed {seed:#x}");
        assert!(specs.iter().any(|s| s.start_revision == 0), "seed {seed:#x}");
        assert!(specs.iter().filter(|s| s.start_revision > 1).count() > 5, "seed {seed:#x}: few resumed streams");
        let changes = case.changes();
        assert!(changes.windows(2).any(|w| w[0].mod_revision == w[1].mod_revision), "seed {seed:#x}");
    }
}

#[test]
fn a_dropped_event_is_a_missed_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // Neither the first nor the last event (those only move the stream's bounds), and of a
        // revision with a single change.
        let (s, at) = case.find("with three events", |_, _, responses| {
            let all = positions(responses);
            all.iter()
                .skip(1)
                .take(all.len().saturating_sub(2))
                .copied()
                .find(|&p| case.changes_at(event_at(responses, p).mod_revision) == 1)
        });
        let dropped = drop_event(case.responses_mut(s), at.0, at.1);
        let result = case.expect(&[MISSED_EVENT]);
        let text = &result.anomalies[0].explanation;
        assert!(text.contains(&format!("index {s}")), "seed {seed:#x}: {text}");
        assert!(text.contains(&format!("revision {}", dropped.mod_revision)), "seed {seed:#x}: {text}");
    }
}

#[test]
fn a_repeated_event_is_a_duplicate_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with an event", |_, _, responses| positions(responses).first().copied());
        let responses = case.responses_mut(s);
        let copy = responses[at.0].events[at.1].clone();
        responses[at.0].events.insert(at.1 + 1, copy);
        case.expect(&[DUPLICATE_EVENT]);
    }
}

#[test]
fn swapped_events_are_unordered() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // Not in the first event-carrying response, so that the stream still begins where it
        // should.
        let (s, r) = case.find("with a later response of three events", |_, _, responses| {
            let first = responses.iter().position(|r| !r.events.is_empty())?;
            (first + 1..responses.len()).find(|&r| {
                let events = &responses[r].events;
                events.len() >= 3 && events[0].mod_revision != events[1].mod_revision
            })
        });
        case.responses_mut(s)[r].events.swap(0, 1);
        case.expect(&[UNORDERED]);
    }
}

#[test]
fn a_header_revision_going_back_is_unordered() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, r) = case.find("with two event responses", |_, _, responses| {
            let carrying: Vec<usize> = (0..responses.len()).filter(|&r| !responses[r].events.is_empty()).collect();
            carrying.get(1).copied()
        });
        case.responses_mut(s)[r].revision = 0;
        case.expect(&[UNORDERED]);
    }
}

#[test]
fn a_revision_split_across_responses_is_non_atomic() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, (r, e)) = case.find("receiving a revision of two changes", |_, _, responses| {
            responses.iter().enumerate().find_map(|(r, resp)| {
                resp.events.windows(2).position(|w| w[0].mod_revision == w[1].mod_revision).map(|e| (r, e + 1))
            })
        });
        let responses = case.responses_mut(s);
        let tail = responses[r].events.split_off(e);
        let second = WatchResponse { events: tail, ..responses[r].clone() };
        responses.insert(r + 1, second);
        case.expect(&[NON_ATOMIC]);
    }
}

#[test]
fn a_change_missing_from_a_revision_is_non_atomic() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, (r, e)) = case.find("receiving a revision of two changes", |_, _, responses| {
            responses.iter().enumerate().find_map(|(r, resp)| {
                resp.events.windows(2).position(|w| w[0].mod_revision == w[1].mod_revision).map(|e| (r, e + 1))
            })
        });
        drop_event(case.responses_mut(s), r, e);
        case.expect(&[NON_ATOMIC]);
    }
}

#[test]
fn an_event_after_a_progress_notification_covering_it_is_event_before_progress() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, r) = case.find("with two event responses", |_, _, responses| {
            let carrying: Vec<usize> = (0..responses.len()).filter(|&r| !responses[r].events.is_empty()).collect();
            carrying.get(1).copied()
        });
        let responses = case.responses_mut(s);
        let revision = responses[r].events[0].mod_revision;
        let progress = WatchResponse { revision, events: Vec::new(), canceled: false, compact_revision: 0 };
        responses.insert(r, progress);
        case.expect(&[EVENT_BEFORE_PROGRESS]);
    }
}

#[test]
fn a_progress_notification_going_back_is_a_progress_regression() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, r) = case.find("with a progress notification after an event", |_, _, responses| {
            (1..responses.len()).find(|&r| {
                responses[r].events.is_empty()
                    && !responses[r].canceled
                    && responses[..r].iter().any(|before| !before.events.is_empty())
            })
        });
        let responses = case.responses_mut(s);
        let earlier = WatchResponse { revision: responses[r].revision - 1, ..responses[r].clone() };
        responses.insert(r + 1, earlier);
        case.expect(&[PROGRESS_REGRESSION]);
    }
}

#[test]
fn a_progress_notification_ahead_of_missing_events_is_a_missed_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // The stream's last event, followed by a progress notification covering it; dropping
        // the event leaves the promise broken.
        let (s, at) = case.find("whose last event is followed by progress", |_, _, responses| {
            let last = positions(responses).last().copied()?;
            let promised = responses[last.0 + 1..]
                .iter()
                .any(|r| r.events.is_empty() && !r.canceled && r.revision >= event_at(responses, last).mod_revision);
            (promised && last != (0, 0) && case.changes_at(event_at(responses, last).mod_revision) == 1).then_some(last)
        });
        drop_event(case.responses_mut(s), at.0, at.1);
        case.expect(&[MISSED_EVENT]);
    }
}

#[test]
fn a_wrong_previous_value_is_bad_prev_kv() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with prev_kv", |_, spec, responses| {
            spec.prev_kv.then(|| positions(responses).first().copied()).flatten()
        });
        let e = &mut case.responses_mut(s)[at.0].events[at.1];
        e.prev_value = Some(e.prev_value.map_or(1_000_000, |v| v + 1_000_000));
        e.prev_mod_revision = Some(e.prev_mod_revision.unwrap_or(1));
        case.expect(&[BAD_PREV_KV]);
    }
}

#[test]
fn a_previous_value_without_prev_kv_is_bad_prev_kv() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("without prev_kv", |_, spec, responses| {
            (!spec.prev_kv).then(|| positions(responses).first().copied()).flatten()
        });
        case.responses_mut(s)[at.0].events[at.1].prev_mod_revision = Some(1);
        case.expect(&[BAD_PREV_KV]);
    }
}

#[test]
fn a_wrong_create_revision_is_a_bad_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with a put", |_, _, responses| {
            positions(responses).into_iter().find(|&p| !event_at(responses, p).delete)
        });
        case.responses_mut(s)[at.0].events[at.1].create_revision += 1;
        case.expect(&[BAD_EVENT]);
    }
}

#[test]
fn a_wrong_value_is_a_bad_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("with a put", |_, _, responses| {
            positions(responses).into_iter().find(|&p| !event_at(responses, p).delete)
        });
        case.responses_mut(s)[at.0].events[at.1].value = Some(u64::MAX);
        case.expect(&[BAD_EVENT]);
    }
}

/// Inserts a change of the reference that `pick` approves of into a stream, right after an
/// event of a lower revision that is followed by one of a higher revision, so that only the
/// filter is broken.
fn insert_unwanted(case: &mut Case, pick: impl Fn(&WatchSpec, &WatchEvent) -> bool) {
    let changes = case.changes();
    let (s, ((r, e), change)) = case.find("straddling an unwanted change", |_, spec, responses| {
        let all = positions(responses);
        all.windows(2).find_map(|w| {
            let (before, after) = (event_at(responses, w[0]).mod_revision, event_at(responses, w[1]).mod_revision);
            changes
                .iter()
                .find(|c| before < c.mod_revision && c.mod_revision < after && pick(spec, c))
                .map(|c| (w[0], c.clone()))
        })
    });
    let prev_kv = case.spec(s).prev_kv;
    let mut change = change;
    if !prev_kv {
        change.prev_value = None;
        change.prev_mod_revision = None;
    }
    let response = &mut case.responses_mut(s)[r];
    // The response's header must not fall below the change now in it.
    response.revision = response.revision.max(change.mod_revision);
    response.events.insert(e + 1, change);
}

#[test]
fn an_event_outside_the_range_is_a_filter_violation() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        insert_unwanted(&mut case, |spec, c| c.key < spec.from_key || c.key >= spec.to_key);
        case.expect(&[FILTER]);
    }
}

#[test]
fn a_filtered_type_delivered_is_a_filter_violation() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        insert_unwanted(&mut case, |spec, c| {
            spec.from_key <= c.key && c.key < spec.to_key && (c.delete && spec.no_delete || !c.delete && spec.no_put)
        });
        case.expect(&[FILTER]);
    }
}

#[test]
fn a_resumed_watch_starting_later_than_its_start_revision_is_not_resumable() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("resumed, with two events", |_, spec, responses| {
            let all = positions(responses);
            let first = *all.first()?;
            (spec.start_revision > 1 && all.len() >= 2 && case.changes_at(event_at(responses, first).mod_revision) == 1)
                .then_some(first)
        });
        drop_event(case.responses_mut(s), at.0, at.1);
        // The skipped change is also missing from the revisions the stream covers.
        case.expect(&[NOT_RESUMABLE, MISSED_EVENT]);
    }
}

#[test]
fn a_gap_in_a_resumed_watch_is_a_missed_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let (s, at) = case.find("resumed, with three events", |_, spec, responses| {
            let all = positions(responses);
            (spec.start_revision > 1 && all.len() >= 3)
                .then(|| {
                    all[1..all.len() - 1]
                        .iter()
                        .copied()
                        .find(|&p| case.changes_at(event_at(responses, p).mod_revision) == 1)
                })
                .flatten()
        });
        drop_event(case.responses_mut(s), at.0, at.1);
        case.expect(&[MISSED_EVENT]);
    }
}

/// A key's last change in the reference that `pick` approves of, alone in its revision.
fn last_change_where(case: &Case, pick: impl Fn(&WatchEvent) -> bool) -> Option<WatchEvent> {
    let changes = case.changes();
    let mut last: BTreeMap<u64, &WatchEvent> = BTreeMap::new();
    for c in &changes {
        last.insert(c.key, c);
    }
    last.values().find(|c| pick(c) && case.changes_at(c.mod_revision) == 1).map(|c| (*c).clone())
}

/// Like [`last_change_where`], for changes every generated history has.
fn last_change(case: &Case, pick: impl Fn(&WatchEvent) -> bool) -> WatchEvent {
    last_change_where(case, pick).unwrap_or_else(|| panic!("seed {:#x}: no such last change", case.seed))
}

/// The completion of the write that made `change`.
fn writer_of(case: &Case, change: &WatchEvent) -> Option<usize> {
    case.history.events.iter().position(|e| match (&e.op, change.delete) {
        (Op::Put { key, value, .. }, false) => {
            *key == change.key && Some(*value) == change.value && e.kind != EventType::Invoke
        }
        (Op::Delete { key, revision, .. }, true) => {
            *key == change.key && *revision == Some(change.mod_revision) && e.kind == EventType::Ok
        }
        _ => false,
    })
}

#[test]
fn an_acknowledged_put_missing_from_the_reference_is_a_lost_write() {
    let mut tested = 0;
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // The last change of a key, erased everywhere: nothing else depends on it, so the only
        // evidence left is the put's acknowledgement.
        let change = last_change(&case, |c| !c.delete);
        let Some(put) = writer_of(&case, &change).filter(|&i| case.history.events[i].kind == EventType::Ok) else {
            continue;
        };
        case.erase(change.mod_revision, change.key);
        let result = case.expect(&[LOST_WRITE]);
        assert!(result.anomalies[0].ops.iter().any(|op| op.index == put), "seed {seed:#x}: {:#?}", result.anomalies);
        tested += 1;
    }
    assert!(tested > 0, "no seed ended a key with an acknowledged put");
}

#[test]
fn an_acknowledged_delete_missing_from_the_reference_is_a_lost_write() {
    let mut tested = 0;
    for seed in SEEDS.into_iter().chain([0x5EED_0005, 0x5EED_0006, 0x5EED_0007, 0x5EED_0008]) {
        let mut case = Case::new(seed);
        let Some(change) = last_change_where(&case, |c| c.delete && writer_of(&case, c).is_some()) else {
            continue;
        };
        case.erase(change.mod_revision, change.key);
        case.expect(&[LOST_WRITE]);
        tested += 1;
    }
    assert!(tested > 0, "no seed ended a key with an acknowledged delete");
}

#[test]
fn a_value_nobody_put_is_a_garbage_event() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let change = last_change(&case, |c| !c.delete);
        let acknowledged = writer_of(&case, &change).is_some_and(|i| case.history.events[i].kind == EventType::Ok);
        // Replace the value everywhere, so that the watchers still agree with the reference.
        for event in &mut case.history.events {
            if let Op::Watch { responses: Some(responses), .. } = &mut event.op {
                for e in responses.iter_mut().flat_map(|r| r.events.iter_mut()) {
                    if e.mod_revision == change.mod_revision && e.key == change.key {
                        e.value = Some(u64::MAX);
                    }
                }
            }
        }
        let expected: &[&str] = if acknowledged { &[GARBAGE_EVENT, LOST_WRITE] } else { &[GARBAGE_EVENT] };
        case.expect(expected);
    }
}

#[test]
fn a_delete_nobody_issued_is_a_garbage_event() {
    let mut tested = 0;
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // A key that exists at the end and has no delete of unknown outcome, deleted in a new
        // last revision of the reference (beyond every other watcher's revisions).
        let uncertain: BTreeSet<u64> = case
            .history
            .client_pairs()
            .expect("well formed")
            .iter()
            .filter(|p| p.outcome() == EventType::Info)
            .filter_map(|p| match p.invoke.op {
                Op::Delete { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        let Some(existing) = last_change_where(&case, |c| !c.delete && !uncertain.contains(&c.key)) else {
            continue;
        };
        let r = case.reference();
        let responses = case.responses_mut(r);
        let progress = responses.pop().expect("the final progress notification");
        let revision = progress.revision + 1;
        let delete = WatchEvent {
            delete: true,
            key: existing.key,
            value: None,
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            prev_value: existing.value,
            prev_mod_revision: Some(existing.mod_revision),
        };
        responses.push(WatchResponse { revision, events: vec![delete], canceled: false, compact_revision: 0 });
        responses.push(WatchResponse { revision, ..progress });
        case.expect(&[GARBAGE_EVENT]);
        tested += 1;
    }
    assert!(tested > 0, "no seed had a key without deletes of unknown outcome");
}

#[test]
fn a_failed_put_in_the_reference_is_an_aborted_write() {
    let mut tested = 0;
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let change = last_change(&case, |c| !c.delete);
        let failed = case.history.events.iter().find_map(|e| match e.op {
            Op::Put { key, value, .. } if e.kind == EventType::Fail && key == change.key => Some(value),
            _ => None,
        });
        let Some(failed) = failed else { continue };
        for event in &mut case.history.events {
            if let Op::Watch { responses: Some(responses), .. } = &mut event.op {
                for e in responses.iter_mut().flat_map(|r| r.events.iter_mut()) {
                    if e.mod_revision == change.mod_revision && e.key == change.key {
                        e.value = Some(failed);
                    }
                }
            }
        }
        let result = case.check();
        assert!(kinds(&result).contains(ABORTED_WRITE), "seed {seed:#x}: {:#?}", result.anomalies);
        assert_eq!(result.valid, Validity::Invalid);
        tested += 1;
    }
    assert!(tested > 0, "no seed failed a put of a key's last value");
}

#[test]
fn a_wrong_version_in_the_reference_is_a_reference_mismatch() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let r = case.reference();
        let responses = case.responses_mut(r);
        let e = responses.iter_mut().flat_map(|r| r.events.iter_mut()).find(|e| !e.delete).expect("a put");
        e.version += 1;
        // The watchers are compared with what the changes imply, so only the reference is wrong.
        case.expect(&[REFERENCE_MISMATCH]);
    }
}

#[test]
fn reference_responses_out_of_order_are_a_reference_mismatch() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let r = case.reference();
        case.responses_mut(r).swap(0, 1);
        let result = case.check();
        assert!(kinds(&result).contains(REFERENCE_MISMATCH), "seed {seed:#x}: {:#?}", result.anomalies);
    }
}

#[test]
fn no_reference_is_unknown() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        for event in &mut case.history.events {
            if let Op::Watch { spec, .. } = &mut event.op {
                spec.reference = false;
            }
        }
        let result = case.expect(&[NO_REFERENCE]);
        // The former reference is now checked like any other watch.
        assert_eq!(result.stats["watches_checked"], case.streams().len(), "seed {seed:#x}");
    }
}

#[test]
fn a_reference_of_unknown_outcome_is_unknown() {
    let mut case = Case::new(SEEDS[0]);
    let r = case.reference();
    case.history.events[r].kind = EventType::Info;
    case.history.events[r].op = Op::Watch { spec: case.spec(r).clone(), responses: None };
    case.expect(&[NO_REFERENCE]);
}

#[test]
fn rules_needing_no_reference_still_apply_without_one() {
    let mut case = Case::new(SEEDS[0]);
    for event in &mut case.history.events {
        if let Op::Watch { spec, .. } = &mut event.op {
            spec.reference = false;
        }
    }
    let (s, at) = case.find("with an event", |_, _, responses| positions(responses).first().copied());
    let responses = case.responses_mut(s);
    let copy = responses[at.0].events[at.1].clone();
    responses[at.0].events.insert(at.1 + 1, copy);
    case.expect(&[NO_REFERENCE, DUPLICATE_EVENT]);
}

#[test]
fn a_reference_that_stopped_early_is_unknown() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        let r = case.reference();
        let responses = case.responses_mut(r);
        let keep = responses.len() / 2;
        responses.truncate(keep);
        let result = case.expect(&[REFERENCE_INCOMPLETE]);
        assert!(result.stats["writes_unverified"].as_u64().unwrap_or(0) > 0, "seed {seed:#x}");
    }
}

#[test]
fn a_watch_canceled_for_compaction_may_omit_previous_values() {
    for seed in SEEDS {
        let mut case = Case::new(seed);
        // A new prev_kv stream from revision `start` that received some changes without their
        // previous values, then was canceled because its position was compacted.
        let changes = case.changes();
        let start = changes[changes.len() / 3].mod_revision;
        let spec = WatchSpec {
            from_key: 0,
            to_key: u64::MAX,
            start_revision: start,
            prev_kv: true,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            reference: false,
        };
        let events: Vec<WatchEvent> = changes
            .iter()
            .filter(|c| c.mod_revision >= start && c.mod_revision < start + 10)
            .map(|c| WatchEvent { prev_value: None, prev_mod_revision: None, ..c.clone() })
            .collect();
        let last = events.last().expect("events").mod_revision;
        let mut responses = vec![WatchResponse { revision: last, events, canceled: false, compact_revision: 0 }];
        responses.push(WatchResponse { revision: last, events: Vec::new(), canceled: true, compact_revision: last });
        let at = case.history.events.len();
        let process = Process::Client(1_000_000);
        let op = Op::Watch { spec: spec.clone(), responses: None };
        case.history.events.push(Event {
            index: at,
            time_ns: 0,
            process,
            kind: EventType::Invoke,
            op,
            node: None,
            error: None,
        });
        let op = Op::Watch { spec, responses: Some(responses) };
        case.history.events.push(Event {
            index: at + 1,
            time_ns: 0,
            process,
            kind: EventType::Ok,
            op,
            node: None,
            error: None,
        });
        case.expect(&[]);
        // Without the compaction, the missing previous values are wrong (unless every change
        // in the window created its key).
        case.responses_mut(at + 1).pop();
        let result = case.check();
        let creates_only =
            changes.iter().filter(|c| c.mod_revision >= start && c.mod_revision < start + 10).all(|c| c.version == 1);
        if !creates_only {
            assert_eq!(kinds(&result), set(&[BAD_PREV_KV]), "seed {seed:#x}: {:#?}", result.anomalies);
        }
    }
}

#[test]
fn anomalies_are_bounded_per_kind_but_all_counted() {
    let mut case = Case::new(SEEDS[0]);
    let (s, _) =
        case.find("with many events", |_, _, responses| (positions(responses).len() > 4 * MAX_ANOMALIES).then_some(()));
    // Drop every other event past the first, keeping the last.
    let responses = case.responses_mut(s);
    let total = positions(responses).len();
    let mut seen = 0;
    let dropped = remove_events(responses, |_| {
        seen += 1;
        seen > 1 && seen < total && seen % 2 == 0
    });
    let result = case.check();
    let missed = result.anomalies.iter().filter(|a| a.kind == MISSED_EVENT).count();
    assert_eq!(missed, MAX_ANOMALIES, "{:#?}", result.anomalies);
    let counts = &result.stats["anomalies"];
    let counted = counts[MISSED_EVENT].as_u64().unwrap_or(0) + counts[NON_ATOMIC].as_u64().unwrap_or(0);
    assert!(counted as usize >= dropped, "{counts:?} < {dropped}");
}

#[test]
fn a_malformed_history_is_unknown() {
    let mut case = Case::new(SEEDS[0]);
    let first = case.history.events[0].clone();
    let mut again = first.clone();
    again.index = case.history.events.len();
    case.history.events.push(again.clone());
    again.index += 1;
    case.history.events.push(again);
    let result = case.check();
    assert_eq!(result.valid, Validity::Unknown, "{result:#?}");
    assert!(result.stats.contains_key("error"));
}

#[test]
fn twenty_thousand_writes_and_a_hundred_streams_check_in_seconds() {
    let seed = 0x5EED_0B16;
    let config =
        Config { seed, writes: 20_000, keys: 8, writers: 8, watchers: 2, catch_up_watchers: 4, close_per_mille: 3 };
    let started = Instant::now();
    let history = Sim::run(config);
    let generated = started.elapsed();
    let started = Instant::now();
    let result = check(&history);
    let took = started.elapsed();
    println!(
        "generated {} history events in {generated:?}; checked in {took:?}: {:?}",
        history.events.len(),
        result.stats
    );
    assert_eq!(result.valid, Validity::Valid, "seed {seed:#x}: {:#?}", result.anomalies);
    assert!(result.stats["watches_checked"].as_u64().unwrap_or(0) >= 80, "seed {seed:#x}: {:?}", result.stats);
    assert!(took.as_secs() < 30, "seed {seed:#x}: took {took:?}");
}
