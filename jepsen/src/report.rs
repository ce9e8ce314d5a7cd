//! The HTML report of one test run: the verdict, how to reproduce the run, what every checker
//! found, and three pictures of the history (a per-process timeline with the faults shaded, the
//! latency of every operation over time, and the throughput per outcome).
//!
//! Invariants:
//! - The page is self-contained: inline CSS and inline SVG, no scripts, no external resources, so
//!   it can be attached to a bug report or opened from an archive years later.
//! - Every piece of text that comes from the caller, the history or the checkers goes through
//!   [`escape`] before it is written, both in HTML and inside SVG.
//! - The output depends only on the input: no clock is read and nothing iterates a hash map, so the
//!   same input renders byte for byte the same page.
//! - The page's size is bounded whatever the history's length: timeline lanes are capped, bars in
//!   crowded stretches of a lane are merged, scatter points are sampled and tables truncated, and
//!   each time the page says so next to the picture or table concerned.
//! - Rendering never fails: a history that breaks the pairing conventions is paired as well as
//!   possible and the page carries a warning naming the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::Value;

use crate::checker::{Anomaly, CheckResult, Validity};
use crate::history::{Event, EventType, Fault, History, Mop, Op, Process};

/// Writes formatted text into a `String`.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        // Formatting into a String cannot fail, so the Result carries nothing worth handling.
        let _ = write!($out, $($arg)*);
    }};
}

/// The most client processes given a lane on the timeline; the page counts the others.
pub const MAX_LANES: usize = 60;

/// The most points drawn on the latency plot before ok operations are sampled.
pub const MAX_LATENCY_POINTS: usize = 5_000;

/// The most failed or unknown operations drawn on the latency plot. They are all kept up to this
/// bound because they are the interesting ones, but a workload where most compare-and-sets fail
/// could otherwise put every operation on the plot.
const MAX_FAILED_POINTS: usize = 10_000;

/// The most shapes (bars and merged runs) drawn on the timeline; beyond it the merge cell widens.
const MAX_TIMELINE_MARKS: usize = 12_000;

/// The narrowest cell, in pixels, within which two operation starts in one lane count as crowded.
const MIN_CELL_PX: f64 = 2.0;

/// The widest merge cell; a history needing more is drawn with what this allows.
const MAX_CELL_PX: f64 = 64.0;

/// The most rows shown in one anomaly's table of operations.
const MAX_ANOMALY_ROWS: usize = 200;

/// The most rows shown in the table of fault windows.
const MAX_FAULT_ROWS: usize = 200;

/// The longest text put in a table cell, in characters.
const MAX_TEXT: usize = 400;

/// The longest tooltip on a timeline bar or fault window, in characters. Tooltips are most of a
/// big timeline's bytes, so this and the mark bound together bound the timeline's size.
const MAX_TOOLTIP: usize = 240;

/// The longest tooltip on a latency point, in characters: there can be thousands of points.
const MAX_POINT_TOOLTIP: usize = 160;

/// Width of every chart, in SVG pixels.
const SVG_W: f64 = 1200.0;

/// Left edge of every chart's plot area: room for lane labels and y-axis labels.
const PLOT_X: f64 = 70.0;

/// Width of every chart's plot area.
const PLOT_W: f64 = SVG_W - PLOT_X - 20.0;

/// The color of `ok` operations in the legends; the CSS uses the same value.
const OK_COLOR: &str = "#2e9e4f";
/// The color of `fail` operations in the legends; the CSS uses the same value.
const FAIL_COLOR: &str = "#e0557a";
/// The color of `info` operations in the legends; the CSS uses the same value.
const INFO_COLOR: &str = "#f0a030";

/// Colors for the known fault kinds: fixed, so that reports compare at a glance.
const KNOWN_FAULT_COLORS: [(&str, &str); 5] =
    [("kill", "#8e44ad"), ("partition", "#1f6fb4"), ("pause", "#0f9fb0"), ("clock", "#8c564b"), ("member", "#7a7d12")];
/// Colors for other fault kinds, handed out in the kinds' name order so that they are stable.
const SPARE_FAULT_COLORS: [&str; 4] = ["#c2409a", "#5a6270", "#3b4cc0", "#b35806"];

/// What the report is drawn from.
#[derive(Clone, Copy, Debug)]
pub struct ReportInput<'a> {
    /// The page's title, e.g. the test's name.
    pub title: &'a str,
    /// The exact command that reproduces the run, shown ready to copy.
    pub command: &'a str,
    /// The history the checkers read.
    pub history: &'a History,
    /// Every checker's result, in the order to show them.
    pub results: &'a [CheckResult],
    /// Key facts about the run in the order to show them: workload, nemeses, nodes, seed,
    /// operation count, duration, ...
    pub summary: &'a [(String, String)],
}

/// Renders the whole report as one self-contained HTML page.
pub fn render(input: &ReportInput<'_>) -> String {
    let model = Model::new(input.history, input.results);
    let verdict = input.results.iter().map(|r| r.valid).reduce(Validity::and);
    let mut out = String::with_capacity(256 * 1024);
    write_head(&mut out, input.title, verdict);
    write_header(&mut out, input, verdict, &model);
    write_checkers(&mut out, input.results);
    write_timeline(&mut out, &model);
    write_latency(&mut out, &model);
    write_throughput(&mut out, &model);
    out.push_str(
        "<footer>Rendered from the history and the checkers' results alone; the same inputs give the same page.\
         </footer>\n</main>\n</body>\n</html>\n",
    );
    out
}

/// Escapes text for HTML and SVG, in element content and in quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// One client operation: an invocation and its completion, if the history has one.
#[derive(Clone, Copy, Debug)]
struct Span<'h> {
    invoke: &'h Event,
    complete: Option<&'h Event>,
    process: u64,
}

impl Span<'_> {
    /// The outcome; a missing completion counts as unknown, as in the history's conventions.
    fn outcome(&self) -> EventType {
        self.complete.map_or(EventType::Info, |c| c.kind)
    }

    fn start(&self) -> u64 {
        self.invoke.time_ns
    }

    /// When the client learnt the outcome, or the end of the test if it never did.
    fn done(&self, end_ns: u64) -> u64 {
        self.complete.map_or(end_ns, |c| c.time_ns).max(self.start())
    }

    /// The latency, for operations whose outcome is known.
    fn latency_ns(&self) -> Option<u64> {
        match self.complete {
            Some(c) if c.kind != EventType::Info => Some(c.time_ns.saturating_sub(self.start())),
            _ => None,
        }
    }

    /// The most informative version of the operation: the completion carries results (a read's
    /// value) on top of the arguments.
    fn op(&self) -> &Op {
        self.complete.map_or(&self.invoke.op, |c| &c.op)
    }

    fn node(&self) -> Option<&str> {
        self.complete.and_then(|c| c.node.as_deref()).or(self.invoke.node.as_deref())
    }

    fn error(&self) -> Option<&str> {
        self.complete.and_then(|c| c.error.as_deref())
    }
}

/// A stretch of time during which a fault was (or may have been) in place.
#[derive(Clone, Debug)]
struct FaultWindow {
    fault: Fault,
    start_ns: u64,
    /// When it was healed, or when its start failed; `None` while it is still open.
    end_ns: Option<u64>,
    /// The nemesis reported that the fault could not be put in place.
    failed: bool,
}

impl FaultWindow {
    fn end(&self, test_end_ns: u64) -> u64 {
        self.end_ns.unwrap_or(test_end_ns).max(self.start_ns)
    }

    /// The short label drawn on the timeline: kind and targets.
    fn label(&self) -> String {
        let label = if self.fault.targets.is_empty() {
            self.fault.kind.clone()
        } else {
            format!("{} {}", self.fault.kind, self.fault.targets.join(","))
        };
        truncate(&label, 48)
    }

    fn describe(&self, test_end_ns: u64) -> String {
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
struct Model<'h> {
    /// Client operations in invocation order.
    spans: Vec<Span<'h>>,
    /// Fault windows in start order.
    windows: Vec<FaultWindow>,
    /// The fault kinds present, in name order, with their colors.
    fault_colors: BTreeMap<String, &'static str>,
    /// The end of the test: the last event's time, at least 1 ns so that scales never divide by 0.
    end_ns: u64,
    /// Indices into `spans` of the operations some anomaly names.
    highlighted: BTreeSet<usize>,
    /// Why the history breaks the pairing conventions, if it does.
    problem: Option<String>,
}

impl<'h> Model<'h> {
    fn new(history: &'h History, results: &[CheckResult]) -> Self {
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

    fn fault_color(&self, kind: &str) -> &'static str {
        self.fault_colors.get(kind).copied().unwrap_or("#777777")
    }

    fn count(&self, outcome: EventType) -> usize {
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
fn fault_windows(history: &History) -> Vec<FaultWindow> {
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

/// Maps test time onto the x axis of a chart's plot area.
#[derive(Clone, Copy, Debug)]
struct TimeAxis {
    end_ns: u64,
}

impl TimeAxis {
    fn x(&self, t_ns: u64) -> f64 {
        PLOT_X + (t_ns.min(self.end_ns) as f64 / self.end_ns as f64) * PLOT_W
    }

    /// Tick positions and labels, in seconds, at a round step giving at most about ten ticks.
    fn ticks(&self) -> Vec<(f64, String)> {
        let end_s = self.end_ns as f64 / 1e9;
        let step = nice_step(end_s / 10.0);
        let decimals = decimals_for(step);
        (0..)
            .map(|k| k as f64 * step)
            .take_while(|t| *t <= end_s * (1.0 + 1e-9))
            .map(|t| (PLOT_X + t / end_s * PLOT_W, format!("{t:.decimals$}")))
            .collect()
    }

    /// Draws the axis line, the ticks and their labels at `y`, with grid lines up to `grid_top`.
    fn draw(&self, out: &mut String, y: f64, grid_top: f64) {
        for (x, label) in self.ticks() {
            w!(
                out,
                r#"<line class="grid" x1="{x}" y1="{top}" x2="{x}" y2="{y}"/>"#,
                x = c(x),
                top = c(grid_top),
                y = c(y)
            );
            w!(
                out,
                r#"<line class="axis" x1="{x}" y1="{y}" x2="{x}" y2="{y2}"/>"#,
                x = c(x),
                y = c(y),
                y2 = c(y + 4.0)
            );
            w!(
                out,
                r#"<text class="tick" x="{x}" y="{ty}" text-anchor="middle">{label}</text>"#,
                x = c(x),
                ty = c(y + 15.0)
            );
        }
        w!(
            out,
            r#"<line class="axis" x1="{x0}" y1="{y}" x2="{x1}" y2="{y}"/><text class="axis-title" x="{x1}" y="{ty}" text-anchor="end">time since start (s)</text>"#,
            x0 = c(PLOT_X),
            x1 = c(PLOT_X + PLOT_W),
            y = c(y),
            ty = c(y + 29.0)
        );
    }
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw.is_infinite() || raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * magnitude)
}

/// How many decimals a tick step needs to tell its ticks apart.
fn decimals_for(step: f64) -> usize {
    if step >= 1.0 { 0 } else { (-step.log10().floor()).max(0.0) as usize }
}

/// A coordinate, to a tenth of a pixel, without a trailing `.0`: it keeps big SVGs small.
fn c(v: f64) -> String {
    let rounded = (v * 10.0).round() / 10.0;
    if rounded == rounded.trunc() { format!("{}", rounded as i64) } else { format!("{rounded:.1}") }
}

/// A number to about three significant digits (no decimals from 100 up), integers exactly, and
/// without trailing zeros: enough to read a latency or a rate, short enough for axis labels.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_string();
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let magnitude = v.abs();
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else {
        ((-magnitude.log10().floor()) as usize + 2).min(9)
    };
    let text = format!("{v:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text }
}

/// A time since the start of the test, in seconds to the millisecond: the precision that tells
/// operations apart in a table without drowning the reader in digits.
fn fmt_secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// A duration in the unit that keeps it short.
fn fmt_duration(ns: u64) -> String {
    let ns = ns as f64;
    if ns >= 1e9 {
        format!("{} s", fmt_num(ns / 1e9))
    } else if ns >= 1e6 {
        format!("{} ms", fmt_num(ns / 1e6))
    } else if ns >= 1e3 {
        format!("{} µs", fmt_num(ns / 1e3))
    } else {
        format!("{} ns", fmt_num(ns))
    }
}

/// A count with its noun, singular or plural as the count needs.
fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Cuts text to at most `max` characters, marking the cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn verdict_word(verdict: Option<Validity>) -> (&'static str, &'static str) {
    match verdict {
        Some(Validity::Valid) => ("valid", "valid"),
        Some(Validity::Invalid) => ("invalid", "INVALID"),
        Some(Validity::Unknown) | None => ("unknown", "unknown"),
    }
}

fn outcome_class(outcome: EventType) -> &'static str {
    match outcome {
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
        EventType::Invoke => "invoke",
    }
}

fn process_name(process: Process) -> String {
    match process {
        Process::Client(p) => format!("p{p}"),
        Process::Nemesis => "nemesis".to_string(),
    }
}

/// The operation's `f`, as in the history's JSON.
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Read { .. } => "read",
        Op::Write { .. } => "write",
        Op::Cas { .. } => "cas",
        Op::Txn { .. } => "txn",
        Op::Put { .. } => "put",
        Op::Delete { .. } => "delete",
        Op::Watch { .. } => "watch",
        Op::Grant { .. } => "grant",
        Op::KeepAlive { .. } => "keep_alive",
        Op::Acquire { .. } => "acquire",
        Op::Fenced { .. } => "fenced",
        Op::Release { .. } => "release",
        Op::Revoke { .. } => "revoke",
        Op::Abandon { .. } => "abandon",
        Op::Leases { .. } => "leases",
        Op::Start(_) => "start",
        Op::Stop(_) => "stop",
    }
}

/// The operation's arguments and, when the event carries them, its results.
fn op_args(op: &Op, kind: EventType) -> String {
    let text = match op {
        Op::Read { key, value: Some(v) } => format!("key={key} value={v}"),
        // An ok read without a value found no such key; elsewhere the value is just not known.
        Op::Read { key, value: None } if kind == EventType::Ok => format!("key={key} value=nil"),
        Op::Read { key, value: None } => format!("key={key}"),
        Op::Write { key, value } => format!("key={key} value={value}"),
        Op::Cas { key, from, to } => format!("key={key} from={from} to={to}"),
        Op::Txn { mops } => mops.iter().map(mop_text).collect::<Vec<_>>().join("; "),
        Op::Put { key, value, revision } => match revision {
            Some(revision) => format!("key={key} value={value} rev={revision}"),
            None => format!("key={key} value={value}"),
        },
        Op::Delete { key, revision, deleted } => match (revision, deleted) {
            (Some(revision), Some(deleted)) => format!("key={key} rev={revision} deleted={deleted}"),
            _ => format!("key={key}"),
        },
        Op::Watch { spec, responses } => {
            let mut text = format!("keys [{}, {}) from rev {}", spec.from_key, spec.to_key, spec.start_revision);
            for (set, name) in [
                (spec.prev_kv, "prev_kv"),
                (spec.no_put, "noput"),
                (spec.no_delete, "nodelete"),
                (spec.progress_notify, "progress"),
                (spec.reference, "reference"),
            ] {
                if set {
                    w!(text, " {name}");
                }
            }
            if let Some(responses) = responses {
                let events: usize = responses.iter().map(|r| r.events.len()).sum();
                let last = responses.iter().map(|r| r.revision).max().unwrap_or(0);
                w!(text, " → {} responses, {events} events, up to rev {last}", responses.len());
            }
            text
        }
        Op::Grant { ttl_s, lease } => match lease {
            Some(lease) => format!("ttl={ttl_s}s lease={lease:x}"),
            None => format!("ttl={ttl_s}s"),
        },
        Op::KeepAlive { lease, ttl } => match ttl {
            Some(ttl) => format!("lease={lease:x} ttl={ttl}"),
            None => format!("lease={lease:x}"),
        },
        Op::Acquire { lock, lease, fence, revision, .. } => match (fence, revision) {
            (Some(fence), Some(revision)) => format!("lock={lock} lease={lease:x} fence={fence} granted@{revision}"),
            _ => format!("lock={lock} lease={lease:x}"),
        },
        Op::Fenced { lock, fence, applied, revision, .. } => match (applied, revision) {
            (Some(applied), Some(revision)) => format!("lock={lock} fence={fence} applied={applied} rev={revision}"),
            _ => format!("lock={lock} fence={fence}"),
        },
        Op::Release { lock, fence, revision, .. } => match revision {
            Some(revision) => format!("lock={lock} fence={fence} rev={revision}"),
            None => format!("lock={lock} fence={fence}"),
        },
        Op::Revoke { lease } | Op::Abandon { lease } => format!("lease={lease:x}"),
        Op::Leases { ids } => match ids {
            Some(ids) => format!(
                "{} leases: {}",
                ids.len(),
                ids.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>().join(" ")
            ),
            None => String::new(),
        },
        Op::Start(fault) | Op::Stop(fault) => {
            let mut text = format!("{} [{}]", fault.kind, fault.targets.join(", "));
            if !fault.detail.is_empty() {
                w!(text, " {}", fault.detail);
            }
            text
        }
    };
    truncate(&text, MAX_TEXT)
}

fn mop_text(mop: &Mop) -> String {
    match mop {
        Mop::Append { key, value } => format!("append({key}, {value})"),
        Mop::Read { key, value: Some(list) } => {
            let items: Vec<String> = list.iter().map(u64::to_string).collect();
            format!("read({key}) → [{}]", items.join(", "))
        }
        Mop::Read { key, value: None } => format!("read({key})"),
    }
}

/// A client operation's tooltip: what it was, how it ended, where, when, and why it failed.
fn span_tooltip(span: &Span<'_>, end_ns: u64) -> String {
    let op = span.op();
    let outcome = span.outcome();
    let (index, process, name, args) = (span.invoke.index, span.process, op_name(op), op_args(op, outcome));
    let mut text = format!("#{index} p{process} {name} {args} → {}", outcome_class(outcome));
    if span.complete.is_none() {
        text.push_str(" (no completion)");
    }
    if let Some(node) = span.node() {
        w!(text, "\nnode {node}");
    }
    let done = span.done(end_ns);
    w!(text, "\n{} → {} ({})", fmt_secs(span.start()), fmt_secs(done), fmt_duration(done - span.start()));
    if let Some(error) = span.error() {
        w!(text, "\nerror: {error}");
    }
    escape(&truncate(&text, MAX_TOOLTIP))
}

fn write_head(out: &mut String, title: &str, verdict: Option<Validity>) {
    let (_, word) = verdict_word(verdict);
    w!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{} — {word}</title>\n<style>\n",
        escape(title)
    );
    out.push_str(CSS);
    out.push_str("</style>\n</head>\n<body>\n<main>\n");
}

/// The page's style. Outcome colors are also used in inline SVG through these classes, which
/// keeps each bar and point to a short class name instead of repeated colors.
const CSS: &str = "\
body{margin:0;background:#f4f5f7;color:#1d2330;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
main{max-width:1240px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:24px;margin:4px 0 10px}h2{font-size:19px;margin:4px 0 10px}h3{font-size:16px;margin:14px 0 6px}
h4{font-size:14px;margin:0 0 4px}
.verdict{display:inline-block;font-size:42px;font-weight:800;letter-spacing:.03em;padding:2px 24px;border-radius:8px;color:#fff}
.valid{background:#2e8b47}.invalid{background:#c62f4f}.unknown{background:#c98612}
.badge{display:inline-block;font-size:12px;font-weight:700;padding:1px 8px;border-radius:4px;color:#fff;vertical-align:2px}
.counts{color:#4a5262;margin:8px 0}
.warning{background:#fff4d6;border:1px solid #e8c66a;padding:6px 12px;border-radius:6px}
pre.cmd{background:#1d2330;color:#e8ecf3;padding:10px 14px;border-radius:6px;white-space:pre-wrap;word-break:break-all;user-select:all;font-size:13px}
nav a{margin-right:16px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:12px 18px;margin:16px 0}
table{border-collapse:collapse;margin:6px 0}th,td{padding:3px 10px;border-bottom:1px solid #e6e8ed;text-align:left;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.args{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-word}
.checker{border-top:1px solid #e1e4ea;padding-top:6px}
.anomaly{border-left:4px solid #c62f4f;background:#fdf4f6;padding:6px 12px;margin:10px 0}
.t{font-weight:600}.t.ok{color:#2e8b47}.t.fail{color:#c62f4f}.t.info{color:#b87408}
.legend{margin:4px 0 8px;color:#3a4150}.legend span{margin-right:14px;white-space:nowrap}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
figure{margin:0}figcaption{color:#4a5262;font-size:13px;margin-top:4px}
svg.chart{display:block;max-width:100%;height:auto;font:11px system-ui,sans-serif;background:#fff}
.grid{stroke:#e9ebef}.axis{stroke:#6b7280}.tick{fill:#4a5262}.axis-title{fill:#4a5262}
.lane{fill:#f5f6f8}.lane-label{fill:#4a5262;font-size:10px}
.op{stroke:#fff;stroke-width:.4}
.ok{fill:#2e9e4f}.fail{fill:#e0557a}.info{fill:#f0a030}
.ext{fill:#f0a030;fill-opacity:.2}.run{fill-opacity:.8}
.hl{stroke:#111;stroke-width:2.5}
.fault{fill-opacity:.14;stroke-opacity:.55;pointer-events:none}.fault-band{fill-opacity:.4}
.flabel{font-size:10.5px;font-weight:600}
.pt{fill-opacity:.75}.cap{stroke:#f0a030;stroke-dasharray:4 3}
.line{fill:none;stroke-width:1.6}.line.ok{stroke:#2e9e4f}.line.fail{stroke:#e0557a}.line.info{stroke:#f0a030}
footer{color:#6b7280;font-size:12px;margin-top:20px}
";

fn write_header(out: &mut String, input: &ReportInput<'_>, verdict: Option<Validity>, model: &Model<'_>) {
    let (class, word) = verdict_word(verdict);
    w!(out, "<header>\n<h1>{}</h1>\n<div class=\"verdict {class}\">{word}</div>\n", escape(input.title));
    let per_verdict = |v: Validity| input.results.iter().filter(|r| r.valid == v).count();
    out.push_str("<p class=\"counts\">");
    if input.results.is_empty() {
        out.push_str("No checker ran, so nothing is claimed about this history.");
    } else {
        w!(
            out,
            "{}: {} valid, {} invalid, {} unknown.",
            plural(input.results.len(), "checker", "checkers"),
            per_verdict(Validity::Valid),
            per_verdict(Validity::Invalid),
            per_verdict(Validity::Unknown)
        );
    }
    w!(
        out,
        " {} ({} ok, {} fail, {} info), {}, over {}.</p>\n",
        plural(model.spans.len(), "client operation", "client operations"),
        model.count(EventType::Ok),
        model.count(EventType::Fail),
        model.count(EventType::Info),
        plural(model.windows.len(), "fault window", "fault windows"),
        fmt_duration(model.end_ns)
    );
    if let Some(problem) = &model.problem {
        w!(
            out,
            "<p class=\"warning\">The history breaks the pairing conventions ({}); the pictures pair operations as well \
             as they can.</p>\n",
            escape(problem)
        );
    }
    w!(out, "<h2>Reproduce</h2>\n<pre class=\"cmd\">{}</pre>\n", escape(input.command));
    if !input.summary.is_empty() {
        out.push_str("<table class=\"summary\">\n");
        for (key, value) in input.summary {
            w!(out, "<tr><th>{}</th><td>{}</td></tr>\n", escape(key), escape(value));
        }
        out.push_str("</table>\n");
    }
    out.push_str(
        "<nav><a href=\"#checkers\">Checkers</a><a href=\"#timeline\">Timeline</a><a href=\"#latency\">Latency</a>\
         <a href=\"#throughput\">Throughput</a></nav>\n</header>\n",
    );
}

fn write_checkers(out: &mut String, results: &[CheckResult]) {
    out.push_str("<section id=\"checkers\">\n<h2>Checkers</h2>\n");
    if results.is_empty() {
        out.push_str("<p>No checker results.</p>\n");
    }
    for result in results {
        let (class, word) = verdict_word(Some(result.valid));
        w!(
            out,
            "<div class=\"checker\">\n<h3>{} <span class=\"badge {class}\">{word}</span></h3>\n",
            escape(&result.checker)
        );
        match (result.valid, result.anomalies.is_empty()) {
            (Validity::Valid, true) => out.push_str("<p>No anomalies.</p>\n"),
            (Validity::Unknown, true) => out.push_str("<p>The analysis was cut short; nothing is claimed.</p>\n"),
            (_, true) => out.push_str("<p>No anomaly was reported in detail.</p>\n"),
            (_, false) => w!(out, "<p>{} reported.</p>\n", plural(result.anomalies.len(), "anomaly", "anomalies")),
        }
        if !result.stats.is_empty() {
            out.push_str("<table class=\"stats\">\n");
            for (key, value) in &result.stats {
                w!(out, "<tr><th>{}</th><td class=\"num\">{}</td></tr>\n", escape(key), escape(&stat_text(value)));
            }
            out.push_str("</table>\n");
        }
        for anomaly in &result.anomalies {
            write_anomaly(out, anomaly);
        }
        out.push_str("</div>\n");
    }
    out.push_str("</section>\n");
}

/// A statistic's value as text: strings without their JSON quotes, numbers compactly.
fn stat_text(value: &Value) -> String {
    match value {
        Value::String(s) => truncate(s, MAX_TEXT),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => fmt_num(f),
            _ => n.to_string(),
        },
        other => truncate(&other.to_string(), MAX_TEXT),
    }
}

fn write_anomaly(out: &mut String, anomaly: &Anomaly) {
    w!(out, "<div class=\"anomaly\">\n<h4>{}</h4>\n<p>{}</p>\n", escape(&anomaly.kind), escape(&anomaly.explanation));
    if !anomaly.ops.is_empty() {
        out.push_str(
            "<table class=\"ops\">\n<tr><th>index</th><th>time</th><th>process</th><th>type</th><th>f</th>\
             <th>args / value</th><th>node</th><th>error</th></tr>\n",
        );
        for event in anomaly.ops.iter().take(MAX_ANOMALY_ROWS) {
            let kind = outcome_class(event.kind);
            w!(
                out,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"t {kind}\">{kind}</td>\
                 <td>{}</td><td class=\"args\">{}</td><td>{}</td><td>{}</td></tr>\n",
                event.index,
                fmt_secs(event.time_ns),
                process_name(event.process),
                op_name(&event.op),
                escape(&op_args(&event.op, event.kind)),
                escape(event.node.as_deref().unwrap_or("")),
                escape(&truncate(event.error.as_deref().unwrap_or(""), MAX_TEXT))
            );
        }
        out.push_str("</table>\n");
        if anomaly.ops.len() > MAX_ANOMALY_ROWS {
            w!(out, "<p>… and {} more operations, not shown.</p>\n", anomaly.ops.len() - MAX_ANOMALY_ROWS);
        }
    }
    out.push_str("</div>\n");
}

/// The legend shared by the charts: outcome colors, then fault kinds.
fn write_legend(out: &mut String, model: &Model<'_>, info_note: &str) {
    w!(
        out,
        "<div class=\"legend\"><span><i class=\"sw\" style=\"background:{OK_COLOR}\"></i>ok</span>\
         <span><i class=\"sw\" style=\"background:{FAIL_COLOR}\"></i>fail</span>\
         <span><i class=\"sw\" style=\"background:{INFO_COLOR}\"></i>info {info_note}</span>"
    );
    for (kind, color) in &model.fault_colors {
        w!(out, "<span><i class=\"sw\" style=\"background:{color};opacity:.45\"></i>fault: {}</span>", escape(kind));
    }
    out.push_str("</div>\n");
}

/// Shades every fault window over a chart's plot area, from `top` to `bottom`.
fn shade_faults(out: &mut String, model: &Model<'_>, axis: TimeAxis, top: f64, bottom: f64) {
    for window in &model.windows {
        let x0 = axis.x(window.start_ns);
        let x1 = axis.x(window.end(model.end_ns));
        let color = model.fault_color(&window.fault.kind);
        w!(
            out,
            r#"<rect class="fault" x="{}" y="{}" width="{}" height="{}" fill="{color}" stroke="{color}"/>"#,
            c(x0),
            c(top),
            c((x1 - x0).max(1.0)),
            c(bottom - top)
        );
    }
}

/// A stretch of crowded operations of one outcome in one lane, drawn as one bar.
#[derive(Clone, Copy, Debug)]
struct Run {
    outcome: EventType,
    lane: usize,
    x0: f64,
    x1: f64,
    count: usize,
    first: usize,
    last: usize,
}

/// What the timeline draws: single operations (lane, span index) and merged runs.
#[derive(Debug, Default)]
struct BarLayout {
    singles: Vec<(usize, usize)>,
    runs: Vec<Run>,
    merged_ops: usize,
    cell_px: f64,
}

/// Lays out the bars of each lane. Within a lane, operations are sequential, so bars never
/// overlap; but thousands of them can fall within a few pixels, where drawing each is useless and
/// makes the page huge. An operation is drawn alone unless another operation of its lane starts in
/// the same `cell_px`-wide cell; crowded operations of one outcome are merged into runs while
/// they follow each other within a cell's width. Operations named by an anomaly and unknown ones
/// (at most one per lane, since a process ends at its first `info`) are always drawn alone.
fn layout_bars(model: &Model<'_>, lanes: &[(u64, Vec<usize>)], axis: TimeAxis, cell_px: f64) -> BarLayout {
    let mut layout = BarLayout { cell_px, ..BarLayout::default() };
    for (lane, (_, members)) in lanes.iter().enumerate() {
        let cell = |i: usize| (axis.x(model.spans[i].start()) / cell_px).floor() as i64;
        let mut starts: BTreeMap<i64, usize> = BTreeMap::new();
        for &i in members {
            *starts.entry(cell(i)).or_default() += 1;
        }
        let mut open: [Option<Run>; 2] = [None, None];
        for &i in members {
            let span = &model.spans[i];
            let outcome = span.outcome();
            let crowded = starts.get(&cell(i)).copied().unwrap_or(0) > 1
                && outcome != EventType::Info
                && !model.highlighted.contains(&i);
            if !crowded {
                layout.singles.push((lane, i));
                continue;
            }
            layout.merged_ops += 1;
            let x0 = axis.x(span.start());
            let x1 = axis.x(span.done(model.end_ns));
            let slot = usize::from(outcome != EventType::Ok);
            if let Some(run) = open[slot].as_mut().filter(|run| x0 - run.x1 <= cell_px) {
                run.x1 = run.x1.max(x1);
                run.count += 1;
                run.last = i;
            } else {
                layout.runs.extend(open[slot].take());
                open[slot] = Some(Run { outcome, lane, x0, x1, count: 1, first: i, last: i });
            }
        }
        layout.runs.extend(open.into_iter().flatten());
    }
    // Fails go over oks so that they stay visible in dense stretches.
    layout.runs.sort_by_key(|run| (run.outcome != EventType::Ok, run.lane));
    layout
}

fn write_timeline(out: &mut String, model: &Model<'_>) {
    out.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
    if model.spans.is_empty() {
        out.push_str("<p>No client operations.</p>\n</section>\n");
        return;
    }
    write_legend(out, model, "(faint: may take effect until the end)");
    let axis = TimeAxis { end_ns: model.end_ns };

    let mut by_process: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, span) in model.spans.iter().enumerate() {
        by_process.entry(span.process).or_default().push(i);
    }
    let process_count = by_process.len();
    // When lanes must be capped, the processes an anomaly names come first: they are why the
    // reader is looking at the timeline.
    let mut chosen: Vec<u64> = by_process.keys().copied().collect();
    if chosen.len() > MAX_LANES {
        let named: BTreeSet<u64> = model.highlighted.iter().map(|&i| model.spans[i].process).collect();
        chosen.sort_by_key(|p| (!named.contains(p), *p));
        chosen.truncate(MAX_LANES);
        chosen.sort_unstable();
    }
    let lanes: Vec<(u64, Vec<usize>)> = chosen.iter().map(|p| (*p, by_process.remove(p).unwrap_or_default())).collect();
    let omitted_ops: usize = by_process.values().map(Vec::len).sum();

    let mut cell_px = MIN_CELL_PX;
    let layout = loop {
        let layout = layout_bars(model, &lanes, axis, cell_px);
        if layout.singles.len() + layout.runs.len() <= MAX_TIMELINE_MARKS || cell_px >= MAX_CELL_PX {
            break layout;
        }
        cell_px *= 2.0;
    };

    // Fault labels go in rows above the lanes, each in the first row where it does not run
    // into the previous label.
    let label_rows = 3;
    let mut row_ends: Vec<f64> = Vec::new();
    let mut placed: Vec<(usize, bool)> = Vec::new();
    for window in &model.windows {
        let x0 = axis.x(window.start_ns);
        let width = window.label().chars().count() as f64 * 6.2 + 8.0;
        let x_end = x0 + width.max(axis.x(window.end(model.end_ns)) - x0);
        match row_ends.iter().position(|end| *end <= x0) {
            Some(row) => {
                row_ends[row] = x_end;
                placed.push((row, true));
            }
            None if row_ends.len() < label_rows => {
                row_ends.push(x_end);
                placed.push((row_ends.len() - 1, true));
            }
            None => placed.push((label_rows - 1, false)),
        }
    }
    let lane_h = if lanes.len() <= 24 { 16.0 } else { 11.0 };
    let band_h = 14.0;
    let lanes_top = 6.0 + row_ends.len() as f64 * (band_h + 2.0);
    let lanes_bottom = lanes_top + lanes.len() as f64 * lane_h;
    let height = lanes_bottom + 36.0;

    w!(
        out,
        "<figure>\n<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"timeline of operations per process\">\n",
        w = c(SVG_W),
        h = c(height)
    );
    for (lane, (process, _)) in lanes.iter().enumerate() {
        let y = lanes_top + lane as f64 * lane_h;
        if lane % 2 == 0 {
            w!(
                out,
                r#"<rect class="lane" x="{}" y="{}" width="{}" height="{}"/>"#,
                c(PLOT_X),
                c(y),
                c(PLOT_W),
                c(lane_h)
            );
        }
        w!(
            out,
            "<text class=\"lane-label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">p{process}</text>\n",
            c(PLOT_X - 6.0),
            c(y + lane_h / 2.0 + 3.5)
        );
    }
    axis.draw(out, lanes_bottom, lanes_top);

    let bar = |lane: usize| (lanes_top + lane as f64 * lane_h + 2.0, lane_h - 4.0);
    for run in &layout.runs {
        let (y, h) = bar(run.lane);
        let (first, last) = (&model.spans[run.first], &model.spans[run.last]);
        w!(
            out,
            "<rect class=\"run {}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{} {} operations merged (too many \
             to draw apart): #{}…#{}, {} → {}</title></rect>\n",
            outcome_class(run.outcome),
            c(run.x0),
            c(y),
            c((run.x1 - run.x0).max(1.0)),
            c(h),
            run.count,
            outcome_class(run.outcome),
            first.invoke.index,
            last.invoke.index,
            fmt_secs(first.start()),
            fmt_secs(last.done(model.end_ns))
        );
    }
    // Highlighted operations are drawn last so that their outlines are never covered.
    let (highlighted, plain): (Vec<_>, Vec<_>) =
        layout.singles.iter().partition(|(_, i)| model.highlighted.contains(i));
    for &(lane, i) in plain.iter().chain(&highlighted) {
        let span = &model.spans[i];
        let (y, h) = bar(lane);
        let outcome = span.outcome();
        let x0 = axis.x(span.start());
        let x1 = axis.x(span.done(model.end_ns));
        let tooltip = span_tooltip(span, model.end_ns);
        if outcome == EventType::Info {
            // The operation may take effect at any time after its invocation, so the bar goes
            // on, faint, to the end of the test.
            let end = axis.x(model.end_ns);
            if end > x1 {
                w!(
                    out,
                    r#"<rect class="ext" x="{}" y="{}" width="{}" height="{}"><title>{tooltip}</title></rect>"#,
                    c(x1),
                    c(y),
                    c(end - x1),
                    c(h)
                );
            }
        }
        let hl = if model.highlighted.contains(&i) { " hl" } else { "" };
        w!(
            out,
            "<rect class=\"op {}{hl}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{tooltip}</title></rect>\n",
            outcome_class(outcome),
            c(x0),
            c(y),
            c((x1 - x0).max(1.0)),
            c(h)
        );
    }

    for (window, (row, labelled)) in model.windows.iter().zip(&placed) {
        let x0 = axis.x(window.start_ns);
        let x1 = axis.x(window.end(model.end_ns));
        let color = model.fault_color(&window.fault.kind);
        let y = 6.0 + *row as f64 * (band_h + 2.0);
        w!(
            out,
            r#"<rect class="fault" x="{}" y="{}" width="{}" height="{}" fill="{color}" stroke="{color}"/>"#,
            c(x0),
            c(lanes_top),
            c((x1 - x0).max(1.0)),
            c(lanes_bottom - lanes_top)
        );
        w!(
            out,
            "<g><title>{}</title><rect class=\"fault-band\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{color}\"/>",
            escape(&window.describe(model.end_ns)),
            c(x0),
            c(y),
            c((x1 - x0).max(1.0)),
            c(band_h)
        );
        if *labelled {
            w!(
                out,
                "<text class=\"flabel\" x=\"{}\" y=\"{}\" fill=\"{color}\">{}{}</text>",
                c(x0 + 3.0),
                c(y + band_h - 3.5),
                escape(&window.label()),
                if window.failed { " (failed)" } else { "" }
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n<figcaption>");
    w!(
        out,
        "One lane per client process; each bar runs from an operation's invocation to its completion. Fault windows \
         ({}) are shaded across every lane, from the nemesis starting the fault to its healing. Operations named by an \
         anomaly are outlined in black.",
        model.windows.len()
    );
    if layout.merged_ops > 0 {
        w!(
            out,
            " Where operations of one lane start within {} px of each other they are too many to draw apart: {} such \
             operations are merged into {} bars of one outcome each (hover for their ranges).",
            fmt_num(layout.cell_px),
            layout.merged_ops,
            layout.runs.len()
        );
    }
    if process_count > lanes.len() {
        w!(
            out,
            " Lanes are capped at {MAX_LANES}: {} processes ({} operations) are omitted, keeping first the processes \
             an anomaly names; the latency and throughput charts include them.",
            process_count - lanes.len(),
            omitted_ops
        );
    }
    out.push_str("</figcaption>\n</figure>\n");
    write_fault_table(out, model);
    out.push_str("</section>\n");
}

fn write_fault_table(out: &mut String, model: &Model<'_>) {
    if model.windows.is_empty() {
        out.push_str("<p>No faults were injected.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"faults\">\n<tr><th>fault</th><th>targets</th><th>detail</th><th>start</th><th>end</th>\
         <th>duration</th></tr>\n",
    );
    for window in model.windows.iter().take(MAX_FAULT_ROWS) {
        let end = window.end(model.end_ns);
        let end_text = match (window.failed, window.end_ns) {
            (true, _) => format!("{} (start failed)", fmt_secs(end)),
            (false, Some(_)) => fmt_secs(end),
            (false, None) => "not healed".to_string(),
        };
        w!(
            out,
            "<tr><td><i class=\"sw\" style=\"background:{};opacity:.6\"></i>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            model.fault_color(&window.fault.kind),
            escape(&window.fault.kind),
            escape(&truncate(&window.fault.targets.join(", "), MAX_TEXT)),
            escape(&truncate(&window.fault.detail, MAX_TEXT)),
            fmt_secs(window.start_ns),
            end_text,
            fmt_duration(end - window.start_ns)
        );
    }
    out.push_str("</table>\n");
    if model.windows.len() > MAX_FAULT_ROWS {
        w!(
            out,
            "<p>… and {} more, not listed.</p>\n",
            plural(model.windows.len() - MAX_FAULT_ROWS, "fault window", "fault windows")
        );
    }
}

/// Picks the operations drawn on the latency plot, in drawing order (ok, fail, info, then the
/// ones an anomaly names, so that the rare ones are on top). Failed and unknown operations are all
/// kept up to their own bound; ok operations are kept whole when they fit in the budget, and
/// otherwise sampled deterministically: the slowest of each pixel column (so that latency spikes
/// survive) plus every k-th in order. Returns the indices and whether anything was dropped.
fn sample_latency_points(model: &Model<'_>, axis: TimeAxis) -> (Vec<usize>, bool) {
    let x_of = |i: usize| {
        let span = &model.spans[i];
        axis.x(span.complete.map_or(span.start(), |c| c.time_ns))
    };
    let named = |i: &usize| model.highlighted.contains(i);
    let of = |outcome: EventType| -> Vec<usize> {
        (0..model.spans.len()).filter(|i| model.spans[*i].outcome() == outcome && !named(i)).collect()
    };
    let stride_sample = |all: Vec<usize>, budget: usize| -> Vec<usize> {
        if all.len() <= budget {
            return all;
        }
        let stride = all.len().div_ceil(budget.max(1));
        all.into_iter().step_by(stride).collect()
    };
    let (fails, infos) = (of(EventType::Fail), of(EventType::Info));
    let unsampled = fails.len() + infos.len();
    let fails = stride_sample(fails, MAX_FAILED_POINTS / 2);
    let infos = stride_sample(infos, MAX_FAILED_POINTS / 2);
    let mut dropped = fails.len() + infos.len() < unsampled;

    let oks = of(EventType::Ok);
    let budget = MAX_LATENCY_POINTS.saturating_sub(fails.len() + infos.len()).max(PLOT_W as usize);
    let oks = if oks.len() <= budget {
        oks
    } else {
        dropped = true;
        let mut keep = vec![false; oks.len()];
        let mut slowest: BTreeMap<i64, (u64, usize)> = BTreeMap::new();
        for (k, &i) in oks.iter().enumerate() {
            let latency = model.spans[i].latency_ns().unwrap_or(0);
            let entry = slowest.entry(x_of(i).floor() as i64).or_insert((latency, k));
            if latency > entry.0 {
                *entry = (latency, k);
            }
        }
        for (_, k) in slowest.values() {
            keep[*k] = true;
        }
        let rest = budget.saturating_sub(slowest.len()).max(1);
        let stride = oks.len().div_ceil(rest);
        for k in (0..oks.len()).step_by(stride) {
            keep[k] = true;
        }
        oks.into_iter().zip(keep).filter(|(_, kept)| *kept).map(|(i, _)| i).collect()
    };
    let points = oks.into_iter().chain(fails).chain(infos).chain(model.highlighted.iter().copied()).collect();
    (points, dropped)
}

/// The marker of an operation on the latency plot: its shape tells its `f`.
fn write_marker(out: &mut String, op: &Op, x: f64, y: f64, class: &str, tooltip: &str) {
    let (x, y) = (x, y);
    match op {
        Op::Write { .. } => w!(
            out,
            r#"<rect class="{class}" x="{}" y="{}" width="4.6" height="4.6"><title>{tooltip}</title></rect>"#,
            c(x - 2.3),
            c(y - 2.3)
        ),
        Op::Cas { .. } => {
            w!(out, r#"<path class="{class}" d="M{} {}l3 5.2h-6z"><title>{tooltip}</title></path>"#, c(x), c(y - 3.2))
        }
        Op::Txn { .. } => w!(
            out,
            r#"<path class="{class}" d="M{} {}l3.3 3.3-3.3 3.3-3.3-3.3z"><title>{tooltip}</title></path>"#,
            c(x),
            c(y - 3.3)
        ),
        _ => {
            w!(out, r#"<circle class="{class}" cx="{}" cy="{}" r="2.6"><title>{tooltip}</title></circle>"#, c(x), c(y))
        }
    }
    out.push('\n');
}

fn write_latency(out: &mut String, model: &Model<'_>) {
    out.push_str("<section id=\"latency\">\n<h2>Latency over time</h2>\n");
    if model.spans.is_empty() {
        out.push_str("<p>No client operations.</p>\n</section>\n");
        return;
    }
    write_legend(out, model, "(unknown latency: on the dashed line)");
    out.push_str(
        "<div class=\"legend\">Shape by operation: \
         <span><svg width=\"12\" height=\"12\"><circle cx=\"6\" cy=\"6\" r=\"4\" fill=\"#555\"/></svg> read</span>\
         <span><svg width=\"12\" height=\"12\"><rect x=\"2\" y=\"2\" width=\"8\" height=\"8\" fill=\"#555\"/></svg> write</span>\
         <span><svg width=\"12\" height=\"12\"><path d=\"M6 1l5 9H1z\" fill=\"#555\"/></svg> cas</span>\
         <span><svg width=\"12\" height=\"12\"><path d=\"M6 1l5 5-5 5-5-5z\" fill=\"#555\"/></svg> txn</span></div>\n",
    );
    let axis = TimeAxis { end_ns: model.end_ns };
    let latencies_ms: Vec<f64> =
        model.spans.iter().filter_map(Span::latency_ns).map(|ns| (ns as f64 / 1e6).max(1e-3)).collect();
    let min_ms = latencies_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ms = latencies_ms.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if latencies_ms.is_empty() {
        (1.0, 1000.0)
    } else {
        let lo = 10f64.powf(min_ms.log10().floor());
        let hi = 10f64.powf(max_ms.log10().ceil());
        (lo, if hi <= lo { lo * 10.0 } else { hi })
    };
    let (cap_y, top, bottom) = (14.0, 30.0, 330.0);
    let height = bottom + 36.0;
    let y_of = |ms: f64| bottom - (ms.log10() - lo.log10()) / (hi.log10() - lo.log10()) * (bottom - top);

    w!(
        out,
        "<figure>\n<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"latency of each operation over time\">\n",
        w = c(SVG_W),
        h = c(height)
    );
    let decades = (hi / lo).log10().round() as i32;
    let minors: &[f64] = if decades <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    for d in 0..=decades {
        for m in minors {
            let v = lo * 10f64.powi(d) * m;
            if v > hi * (1.0 + 1e-9) {
                continue;
            }
            let y = y_of(v);
            let label = if v >= 1000.0 { format!("{} s", fmt_num(v / 1000.0)) } else { format!("{} ms", fmt_num(v)) };
            w!(
                out,
                r#"<line class="grid" x1="{}" y1="{y}" x2="{}" y2="{y}"/><text class="tick" x="{}" y="{}" text-anchor="end">{label}</text>"#,
                c(PLOT_X),
                c(PLOT_X + PLOT_W),
                c(PLOT_X - 6.0),
                c(y + 3.5),
                y = c(y)
            );
            out.push('\n');
        }
    }
    shade_faults(out, model, axis, cap_y - 6.0, bottom);
    w!(
        out,
        r#"<line class="cap" x1="{}" y1="{y}" x2="{}" y2="{y}"/><text class="tick" x="{}" y="{}" text-anchor="end">info</text>"#,
        c(PLOT_X),
        c(PLOT_X + PLOT_W),
        c(PLOT_X - 6.0),
        c(cap_y + 3.5),
        y = c(cap_y)
    );
    out.push('\n');
    axis.draw(out, bottom, top);

    let (points, sampled) = sample_latency_points(model, axis);
    for &i in &points {
        let span = &model.spans[i];
        let outcome = span.outcome();
        let x = axis.x(span.complete.map_or(span.start(), |c| c.time_ns));
        let y = span.latency_ns().map_or(cap_y, |ns| y_of((ns as f64 / 1e6).max(1e-3)));
        let hl = if model.highlighted.contains(&i) { " hl" } else { "" };
        let class = format!("pt {}{hl}", outcome_class(outcome));
        let latency = span.latency_ns().map_or_else(|| "unknown latency".to_string(), fmt_duration);
        let tooltip = escape(&truncate(
            &format!(
                "#{} p{} {} {} → {}, {latency}",
                span.invoke.index,
                span.process,
                op_name(span.op()),
                op_args(span.op(), outcome),
                outcome_class(outcome)
            ),
            MAX_POINT_TOOLTIP,
        ));
        write_marker(out, span.op(), x, y, &class, &tooltip);
    }
    out.push_str("</svg>\n<figcaption>");
    w!(
        out,
        "Latency of each operation (log scale) at its completion time; unknown (info) operations sit on the dashed \
         line at the top, at the time the client gave up. {} of {} operations drawn.",
        points.len(),
        model.spans.len()
    );
    if sampled {
        w!(
            out,
            " Sampled deterministically to bound the page: every failed and unknown operation is kept (up to {} of \
             each), and ok operations are the slowest per pixel column plus an even stride.",
            MAX_FAILED_POINTS / 2
        );
    }
    out.push_str("</figcaption>\n</figure>\n</section>\n");
}

/// The bucket width for throughput, in nanoseconds: one second, unless the test is so short that
/// seconds would give fewer than about twenty buckets or so long that they would give thousands.
fn throughput_bucket_ns(end_ns: u64) -> u64 {
    let end_s = end_ns as f64 / 1e9;
    let seconds = if end_s < 20.0 { nice_step(end_s / 20.0).min(1.0) } else { nice_step(end_s / 1200.0).max(1.0) };
    ((seconds * 1e9).round() as u64).max(1_000_000)
}

/// Completions per bucket, for ok, fail and info in that order. Operations without a completion
/// never completed, so they are not counted.
fn throughput_counts(model: &Model<'_>, bucket_ns: u64) -> [Vec<u64>; 3] {
    let buckets = usize::try_from(model.end_ns / bucket_ns + 1).unwrap_or(usize::MAX);
    let mut counts = [vec![0; buckets], vec![0; buckets], vec![0; buckets]];
    for span in &model.spans {
        let Some(complete) = span.complete else { continue };
        let series = match complete.kind {
            EventType::Ok => 0,
            EventType::Fail => 1,
            _ => 2,
        };
        let bucket = usize::try_from(complete.time_ns / bucket_ns).unwrap_or(usize::MAX).min(buckets - 1);
        counts[series][bucket] += 1;
    }
    counts
}

fn write_throughput(out: &mut String, model: &Model<'_>) {
    out.push_str("<section id=\"throughput\">\n<h2>Throughput</h2>\n");
    if model.spans.is_empty() {
        out.push_str("<p>No client operations.</p>\n</section>\n");
        return;
    }
    write_legend(out, model, "");
    let axis = TimeAxis { end_ns: model.end_ns };
    let bucket_ns = throughput_bucket_ns(model.end_ns);
    let bucket_s = bucket_ns as f64 / 1e9;
    let counts = throughput_counts(model, bucket_ns);
    let max_rate = counts.iter().flatten().copied().max().unwrap_or(0) as f64 / bucket_s;
    let step = nice_step(max_rate.max(1.0) / 4.0);
    let top_rate = (max_rate / step).ceil().max(1.0) * step;
    let (top, bottom) = (12.0, 232.0);
    let height = bottom + 36.0;
    let y_of = |rate: f64| bottom - rate / top_rate * (bottom - top);

    w!(
        out,
        "<figure>\n<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"completions per second by outcome\">\n",
        w = c(SVG_W),
        h = c(height)
    );
    let ticks = (top_rate / step).round() as u64;
    for k in 0..=ticks {
        let rate = k as f64 * step;
        w!(
            out,
            r#"<line class="grid" x1="{}" y1="{y}" x2="{}" y2="{y}"/><text class="tick" x="{}" y="{}" text-anchor="end">{}</text>"#,
            c(PLOT_X),
            c(PLOT_X + PLOT_W),
            c(PLOT_X - 6.0),
            c(y_of(rate) + 3.5),
            fmt_num(rate),
            y = c(y_of(rate))
        );
        out.push('\n');
    }
    w!(
        out,
        r#"<text class="axis-title" x="{}" y="{}" text-anchor="start">ops/s</text>"#,
        c(PLOT_X + 4.0),
        c(top + 10.0)
    );
    shade_faults(out, model, axis, top, bottom);
    axis.draw(out, bottom, top);
    for (series, class) in counts.iter().zip(["ok", "fail", "info"]) {
        if series.iter().all(|n| *n == 0) {
            continue;
        }
        // A step line: each bucket's rate is flat across the bucket, which is what was measured.
        let mut points = String::new();
        for (b, n) in series.iter().enumerate() {
            let y = c(y_of(*n as f64 / bucket_s));
            let x0 = axis.x(b as u64 * bucket_ns);
            let x1 = axis.x((b as u64 + 1).saturating_mul(bucket_ns));
            w!(points, "{},{y} {},{y} ", c(x0), c(x1));
        }
        w!(out, "<polyline class=\"line {class}\" points=\"{}\"/>\n", points.trim_end());
    }
    out.push_str("</svg>\n<figcaption>");
    w!(out, "Completions per second by outcome, counted in {} buckets; fault windows shaded.", fmt_duration(bucket_ns));
    out.push_str("</figcaption>\n</figure>\n</section>\n");
}

#[cfg(test)]
mod tests;
