//! Tests of the watch module: each named after the property it protects.
//!
//! Histories come from a simulated correct store (`sim`). Such histories must be valid; each rule
//! is then broken by one targeted change of such a history and must be reported under its kind.
//! The tests are grouped by theme: the rules on ordinary watch streams (`stream_rules`), the rules
//! on the reference watch and on what happens without one (`reference_rules`), and properties of
//! the whole result (`overall`). This file holds what they share: the seeds, a generated case and
//! the helpers that edit its streams.
//!
//! Invariant: every `Case` starts from a generated history that the checker found valid, so any
//! anomaly a test sees comes from the change the test made.

use std::collections::BTreeSet;

use super::*;
use crate::checker::{CheckResult, MAX_ANOMALIES, Validity};
use crate::history::{Event, EventType, History, Op, Process, WatchEvent, WatchResponse, WatchSpec};

mod overall;
mod reference_rules;
mod sim;
mod stream_rules;

use sim::{Config, Sim};

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
