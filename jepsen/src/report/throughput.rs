//! The throughput picture: completions per second for each outcome, as step lines over buckets
//! of a fixed width, with the fault windows shaded.
//!
//! Invariants:
//! - Every completion is counted exactly once, in the bucket of its completion time; operations
//!   that never completed are not counted.
//! - The bucket width is one second unless that would give fewer than about twenty buckets or
//!   thousands of them, so the picture's size is bounded whatever the test's length.

use std::fmt::Write as _;

use super::model::Model;
use super::svg::{PLOT_W, PLOT_X, SVG_W, TimeAxis, c, nice_step, shade_faults, write_legend};
use super::text::{fmt_duration, fmt_num};
use crate::history::EventType;

/// The bucket width for throughput, in nanoseconds: one second, unless the test is so short that
/// seconds would give fewer than about twenty buckets or so long that they would give thousands.
pub(super) fn throughput_bucket_ns(end_ns: u64) -> u64 {
    let end_s = end_ns as f64 / 1e9;
    let seconds = if end_s < 20.0 { nice_step(end_s / 20.0).min(1.0) } else { nice_step(end_s / 1200.0).max(1.0) };
    ((seconds * 1e9).round() as u64).max(1_000_000)
}

/// Completions per bucket, for ok, fail and info in that order. Operations without a completion
/// never completed, so they are not counted.
pub(super) fn throughput_counts(model: &Model<'_>, bucket_ns: u64) -> [Vec<u64>; 3] {
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

pub(super) fn write_throughput(out: &mut String, model: &Model<'_>) {
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
