//! How the report puts things into words: numbers, times and durations, counts with their
//! nouns, verdicts and outcomes, processes, and operations with their arguments and results.
//!
//! Invariants:
//! - Nothing here escapes: every function returns plain text, and the caller passes it through
//!   [`super::escape`] when it writes it into the page, so text is escaped exactly once.
//! - Text that may be long (operation arguments, tooltips) is cut with [`truncate`] to a fixed
//!   number of characters, which is part of what keeps the page's size bounded.

use std::fmt::Write as _;

use crate::checker::Validity;
use crate::history::{EventType, Mop, Op, Process};

/// The longest text put in a table cell, in characters.
pub(super) const MAX_TEXT: usize = 400;

/// The longest tooltip on a timeline bar or fault window, in characters. Tooltips are most of a
/// big timeline's bytes, so this and the mark bound together bound the timeline's size.
pub(super) const MAX_TOOLTIP: usize = 240;

/// A number to about three significant digits (no decimals from 100 up), integers exactly, and
/// without trailing zeros: enough to read a latency or a rate, short enough for axis labels.
pub(super) fn fmt_num(v: f64) -> String {
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
pub(super) fn fmt_secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// A duration in the unit that keeps it short.
pub(super) fn fmt_duration(ns: u64) -> String {
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
pub(super) fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Cuts text to at most `max` characters, marking the cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

pub(super) fn verdict_word(verdict: Option<Validity>) -> (&'static str, &'static str) {
    match verdict {
        Some(Validity::Valid) => ("valid", "valid"),
        Some(Validity::Invalid) => ("invalid", "INVALID"),
        Some(Validity::Unknown) | None => ("unknown", "unknown"),
    }
}

pub(super) fn outcome_class(outcome: EventType) -> &'static str {
    match outcome {
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
        EventType::Invoke => "invoke",
    }
}

pub(super) fn process_name(process: Process) -> String {
    match process {
        Process::Client(p) => format!("p{p}"),
        Process::Nemesis => "nemesis".to_string(),
    }
}

/// The operation's `f`, as in the history's JSON.
pub(super) fn op_name(op: &Op) -> &'static str {
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
pub(super) fn op_args(op: &Op, kind: EventType) -> String {
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
