//! The history digested once for every section of the report: client operations paired into
//! spans, the fault windows the nemesis opened and closed, the colors of the fault kinds, and
//! the operations some anomaly names.
//!
//! Invariants:
//! - Digesting never fails: operations are paired as well as the history allows (see
//!   `pair_client_ops`), and why the history breaks the pairing conventions is kept for the page
//!   to show as a warning.
//! - Everything is kept in history order or in ordered maps, never in hash maps, so every section
//!   drawn from the model is deterministic; fault colors are fixed per known kind and handed out
//!   in name order otherwise, so that reports compare at a glance.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::text::{MAX_TOOLTIP, fmt_duration, fmt_secs, truncate};
use crate::checker::CheckResult;
use crate::history::{Event, EventType, Fault, History, Op, Process};

/// Colors for the known fault kinds: fixed, so that reports compare at a glance.
const KNOWN_FAULT_COLORS: [(&str, &str); 5] =
    [("kill", "#8e44ad"), ("partition", "#1f6fb4"), ("pause", "#0f9fb0"), ("clock", "#8c564b"), ("member", "#7a7d12")];
/// Colors for other fault kinds, handed out in the kinds' name order so that they are stable.
const SPARE_FAULT_COLORS: [&str; 4] = ["#c2409a", "#5a6270", "#3b4cc0", "#b35806"];

/// One client operation: an invocation and its completion, if the history has one.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span<'h> {
    pub(super) invoke: &'h Event,
    pub(super) complete: Option<&'h Event>,
    pub(super) process: u64,
}

impl Span<'_> {
    /// The outcome; a missing completion counts as unknown, as in the history's conventions.
    pub(super) fn outcome(&self) -> EventType {
        self.complete.map_or(EventType::Info, |c| c.kind)
    }

    pub(super) fn start(&self) -> u64 {
        self.invoke.time_ns
    }

    /// When the client learnt the outcome, or the end of the test if it never did.
    pub(super) fn done(&self, end_ns: u64) -> u64 {
        self.complete.map_or(end_ns, |c| c.time_ns).max(self.start())
    }

    /// The latency, for operations whose outcome is known.
    pub(super) fn latency_ns(&self) -> Option<u64> {
        match self.complete {
            Some(c) if c.kind != EventType::Info => Some(c.time_ns.saturating_sub(self.start())),
            _ => None,
        }
    }

    /// The most informative version of the operation: the completion carries results (a read's
    /// value) on top of the arguments.
    pub(super) fn op(&self) -> &Op {
        self.complete.map_or(&self.invoke.op, |c| &c.op)
    }

    pub(super) fn node(&self) -> Option<&str> {
        self.complete.and_then(|c| c.node.as_deref()).or(self.invoke.node.as_deref())
    }

    pub(super) fn error(&self) -> Option<&str> {
        self.complete.and_then(|c| c.error.as_deref())
    }
}

/// A stretch of time during which a fault was (or may have been) in place.
#[derive(Clone, Debug)]
pub(super) struct FaultWindow {
    pub(super) fault: Fault,
    pub(super) start_ns: u64,
    /// When it was healed, or when its start failed; `None` while it is still open.
    pub(super) end_ns: Option<u64>,
    /// The nemesis reported that the fault could not be put in place.
    pub(super) failed: bool,
}

impl FaultWindow {
    pub(super) fn end(&self, test_end_ns: u64) -> u64 {
        self.end_ns.unwrap_or(test_end_ns).max(self.start_ns)
    }

    /// The short label drawn on the timeline: kind and targets.
    pub(super) fn label(&self) -> String {
        let label = if self.fault.targets.is_empty() {
            self.fault.kind.clone()
        } else {
            format!("{} {}", self.fault.kind, self.fault.targets.join(","))
        };
        truncate(&label, 48)
    }

    pub(super) fn describe(&self, test_end_ns: u64) -> String {
        let mut text = self.label();
        if !self.fault.detail.is_empty() {
            w!(text, " ({})", self.fault.detail);
        }
        let end = self.end(test_end_ns);
        let how = match (self.failed, self.end_ns) {
            (true, _) => "start failed at",
            (false, Some(_)) => "healed at",
            (false, None) => "not healed by the end of the test at",
        };
        w!(
            text,
            "\nstarted {}, {how} {} (lasted {})",
            fmt_secs(self.start_ns),
            fmt_secs(end),
            fmt_duration(end - self.start_ns)
        );
        truncate(&text, MAX_TOOLTIP)
    }
}

/// The history, digested once for all the sections.
pub(super) struct Model<'h> {
    /// Client operations in invocation order.
    pub(super) spans: Vec<Span<'h>>,
    /// Fault windows in start order.
    pub(super) windows: Vec<FaultWindow>,
    /// The fault kinds present, in name order, with their colors.
    pub(super) fault_colors: BTreeMap<String, &'static str>,
    /// The end of the test: the last event's time, at least 1 ns so that scales never divide by 0.
    pub(super) end_ns: u64,
    /// Indices into `spans` of the operations some anomaly names.
    pub(super) highlighted: BTreeSet<usize>,
    /// Why the history breaks the pairing conventions, if it does.
    pub(super) problem: Option<String>,
}

impl<'h> Model<'h> {
    pub(super) fn new(history: &'h History, results: &[CheckResult]) -> Self {
        let spans = pair_client_ops(history);
        let end_ns = history.events.iter().map(|e| e.time_ns).max().unwrap_or(0).max(1);
        let windows = fault_windows(history);
        let kinds: BTreeSet<&str> = windows.iter().map(|w| w.fault.kind.as_str()).collect();
        let mut spare = SPARE_FAULT_COLORS.iter().cycle();
        let fault_colors = kinds
            .into_iter()
            .map(|kind| {
                let known = KNOWN_FAULT_COLORS.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c);
                (kind.to_string(), known.unwrap_or_else(|| spare.next().copied().unwrap_or("#777777")))
            })
            .collect();
        // Anomalies name events by history index, either an operation's completion or its
        // invocation, so both lead to the operation.
        let mut span_of_event: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, span) in spans.iter().enumerate() {
            span_of_event.insert(span.invoke.index, i);
            if let Some(c) = span.complete {
                span_of_event.insert(c.index, i);
            }
        }
        let highlighted = results
            .iter()
            .flat_map(|r| &r.anomalies)
            .flat_map(|a| &a.ops)
            .filter_map(|e| span_of_event.get(&e.index).copied())
            .collect();
        let problem = history.pairs().err().map(|e| e.to_string());
        Self { spans, windows, fault_colors, end_ns, highlighted, problem }
    }

    pub(super) fn fault_color(&self, kind: &str) -> &'static str {
        self.fault_colors.get(kind).copied().unwrap_or("#777777")
    }

    pub(super) fn count(&self, outcome: EventType) -> usize {
        self.spans.iter().filter(|s| s.outcome() == outcome).count()
    }
}

/// Pairs every client invocation with its process's next completion. Unlike
/// [`History::pairs`] it never fails: a completion with nothing outstanding is skipped and an
/// invocation while another is outstanding leaves the earlier one without completion, so that a
/// broken history still gets a report (with a warning) rather than none.
fn pair_client_ops(history: &History) -> Vec<Span<'_>> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut spans: Vec<Span<'_>> = Vec::new();
    for event in &history.events {
        let Process::Client(process) = event.process else { continue };
        if event.kind == EventType::Invoke {
            open.insert(process, spans.len());
            spans.push(Span { invoke: event, complete: None, process });
        } else if let Some(slot) = open.remove(&process) {
            spans[slot].complete = Some(event);
        }
    }
    spans
}

/// Finds the fault windows: from a nemesis `start` invocation to the completion of the `stop`
/// that heals it. A `stop` heals the earliest open window with the same kind and targets; failing
/// that, a `stop` without targets heals every open window of its kind, and one with targets the
/// earliest of its kind. A failed `start` closes its window when the failure is reported; a
/// failed `stop` heals nothing.
pub(super) fn fault_windows(history: &History) -> Vec<FaultWindow> {
    let mut windows: Vec<FaultWindow> = Vec::new();
    for event in history.events.iter().filter(|e| e.process == Process::Nemesis) {
        match (&event.op, event.kind) {
            (Op::Start(fault), EventType::Invoke) => {
                windows.push(FaultWindow {
                    fault: fault.clone(),
                    start_ns: event.time_ns,
                    end_ns: None,
                    failed: false,
                });
            }
            (Op::Start(fault), EventType::Fail) => {
                if let Some(w) = windows.iter_mut().rev().find(|w| w.end_ns.is_none() && w.fault.kind == fault.kind) {
                    w.end_ns = Some(event.time_ns);
                    w.failed = true;
                }
            }
            (Op::Stop(fault), EventType::Ok | EventType::Info) => {
                let open = |w: &FaultWindow| w.end_ns.is_none() && w.fault.kind == fault.kind;
                if let Some(w) = windows.iter_mut().find(|w| open(w) && w.fault.targets == fault.targets) {
                    w.end_ns = Some(event.time_ns);
                } else if fault.targets.is_empty() {
                    windows.iter_mut().filter(|w| open(w)).for_each(|w| w.end_ns = Some(event.time_ns));
                } else if let Some(w) = windows.iter_mut().find(|w| open(w)) {
                    w.end_ns = Some(event.time_ns);
                }
            }
            _ => {}
        }
    }
    windows
}
