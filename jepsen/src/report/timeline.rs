//! The timeline picture: one lane per client process, one bar per operation from its
//! invocation to its completion, the fault windows shaded across every lane with their labels
//! above, and the table of fault windows below it.
//!
//! Invariants:
//! - The timeline's size is bounded: at most [`MAX_LANES`] lanes (the processes an anomaly names
//!   first), at most about `MAX_TIMELINE_MARKS` shapes (crowded operations of one lane are merged
//!   into runs, with a merge cell that widens until they fit), tooltips cut to `MAX_TOOLTIP`
//!   characters, and at most `MAX_FAULT_ROWS` rows in the fault table; the caption or the table
//!   says whenever something was capped or merged.
//! - Operations an anomaly names, and operations of unknown outcome, are always drawn alone, and
//!   the named ones last, so that their outlines are never covered.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::escape;
use super::model::{Model, Span};
use super::svg::{PLOT_W, PLOT_X, SVG_W, TimeAxis, c, write_legend};
use super::text::{
    MAX_TEXT, MAX_TOOLTIP, fmt_duration, fmt_num, fmt_secs, op_args, op_name, outcome_class, plural, truncate,
};
use crate::history::EventType;

/// The most client processes given a lane on the timeline; the page counts the others.
pub const MAX_LANES: usize = 60;

/// The most shapes (bars and merged runs) drawn on the timeline; beyond it the merge cell widens.
pub(super) const MAX_TIMELINE_MARKS: usize = 12_000;

/// The narrowest cell, in pixels, within which two operation starts in one lane count as crowded.
const MIN_CELL_PX: f64 = 2.0;

/// The widest merge cell; a history needing more is drawn with what this allows.
const MAX_CELL_PX: f64 = 64.0;

/// The most rows shown in the table of fault windows.
const MAX_FAULT_ROWS: usize = 200;

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

pub(super) fn write_timeline(out: &mut String, model: &Model<'_>) {
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
