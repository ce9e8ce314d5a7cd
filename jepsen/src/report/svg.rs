//! What the charts share: their geometry, the time axis along their bottom, the legend above
//! them and the shading of fault windows across them.
//!
//! Invariants:
//! - Every chart has the same width and the same plot area, so that one instant sits at the same
//!   x position in the timeline, the latency plot and the throughput plot.
//! - Coordinates are written with [`c`], to a tenth of a pixel, which keeps big SVGs small and
//!   the output byte for byte reproducible.

use std::fmt::Write as _;

use super::escape;
use super::model::Model;

/// Width of every chart, in SVG pixels.
pub(super) const SVG_W: f64 = 1200.0;

/// Left edge of every chart's plot area: room for lane labels and y-axis labels.
pub(super) const PLOT_X: f64 = 70.0;

/// Width of every chart's plot area.
pub(super) const PLOT_W: f64 = SVG_W - PLOT_X - 20.0;

/// The color of `ok` operations in the legends; the CSS uses the same value.
const OK_COLOR: &str = "#2e9e4f";
/// The color of `fail` operations in the legends; the CSS uses the same value.
const FAIL_COLOR: &str = "#e0557a";
/// The color of `info` operations in the legends; the CSS uses the same value.
const INFO_COLOR: &str = "#f0a030";

/// Maps test time onto the x axis of a chart's plot area.
#[derive(Clone, Copy, Debug)]
pub(super) struct TimeAxis {
    pub(super) end_ns: u64,
}

impl TimeAxis {
    pub(super) fn x(&self, t_ns: u64) -> f64 {
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
    pub(super) fn draw(&self, out: &mut String, y: f64, grid_top: f64) {
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
pub(super) fn nice_step(raw: f64) -> f64 {
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
pub(super) fn c(v: f64) -> String {
    let rounded = (v * 10.0).round() / 10.0;
    if rounded == rounded.trunc() { format!("{}", rounded as i64) } else { format!("{rounded:.1}") }
}

/// The legend shared by the charts: outcome colors, then fault kinds.
pub(super) fn write_legend(out: &mut String, model: &Model<'_>, info_note: &str) {
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
pub(super) fn shade_faults(out: &mut String, model: &Model<'_>, axis: TimeAxis, top: f64, bottom: f64) {
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
