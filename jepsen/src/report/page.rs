//! The page around the pictures: the HTML head with its inline style, the header with the
//! verdict, the command that reproduces the run and the run's summary, and the section listing
//! every checker's result with its anomalies.
//!
//! Invariants:
//! - The page is self-contained: the style is inline and nothing is loaded from elsewhere.
//! - Every text from the caller or the checkers is escaped; anomaly tables are capped at
//!   `MAX_ANOMALY_ROWS` rows and say how many operations they leave out.

use std::fmt::Write as _;

use serde_json::Value;

use super::model::Model;
use super::text::{
    MAX_TEXT, fmt_duration, fmt_num, fmt_secs, op_args, op_name, outcome_class, plural, process_name, truncate,
    verdict_word,
};
use super::{ReportInput, escape};
use crate::checker::{Anomaly, CheckResult, Validity};
use crate::history::EventType;

/// The most rows shown in one anomaly's table of operations.
const MAX_ANOMALY_ROWS: usize = 200;

pub(super) fn write_head(out: &mut String, title: &str, verdict: Option<Validity>) {
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

pub(super) fn write_header(out: &mut String, input: &ReportInput<'_>, verdict: Option<Validity>, model: &Model<'_>) {
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

pub(super) fn write_checkers(out: &mut String, results: &[CheckResult]) {
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
