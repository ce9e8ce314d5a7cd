//! The latency picture: every operation as a point at its completion time and its latency on a
//! log scale, its shape telling its `f` and its color its outcome; operations of unknown outcome
//! sit on a dashed line at the top.
//!
//! Invariants:
//! - At most about [`MAX_LATENCY_POINTS`] points are drawn: failed and unknown operations are all
//!   kept up to their own bound, and ok operations are sampled deterministically (the slowest of
//!   each pixel column, so that spikes survive, plus an even stride); the caption says when points
//!   were dropped.
//! - Operations an anomaly names are always drawn, and drawn last, so that they are on top.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::escape;
use super::model::{Model, Span};
use super::svg::{PLOT_W, PLOT_X, SVG_W, TimeAxis, c, shade_faults, write_legend};
use super::text::{fmt_duration, fmt_num, op_args, op_name, outcome_class, truncate};
use crate::history::{EventType, Op};

/// The most points drawn on the latency plot before ok operations are sampled.
pub const MAX_LATENCY_POINTS: usize = 5_000;

/// The most failed or unknown operations drawn on the latency plot. They are all kept up to this
/// bound because they are the interesting ones, but a workload where most compare-and-sets fail
/// could otherwise put every operation on the plot.
const MAX_FAILED_POINTS: usize = 10_000;

/// The longest tooltip on a latency point, in characters: there can be thousands of points.
const MAX_POINT_TOOLTIP: usize = 160;

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

pub(super) fn write_latency(out: &mut String, model: &Model<'_>) {
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
