//! The HTML report of one test run: the verdict, how to reproduce the run, what every checker
//! found, and three pictures of the history (a per-process timeline with the faults shaded, the
//! latency of every operation over time, and the throughput per outcome).
//!
//! The work is split by what each part draws: `model` digests the history once for every
//! section, `page` writes the page around the pictures (head, header, checkers), `timeline`,
//! `latency` and `throughput` each draw one picture, `svg` holds what the charts share (the time
//! axis, the legend, the fault shading), and `text` turns operations and numbers into words.
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

use crate::checker::{CheckResult, Validity};
use crate::history::History;

/// Writes formatted text into a `String`.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        // Formatting into a String cannot fail, so the Result carries nothing worth handling.
        let _ = write!($out, $($arg)*);
    }};
}

// The submodules are declared after `w!` so that the macro is in scope in all of them.
mod latency;
mod model;
mod page;
mod svg;
mod text;
mod throughput;
mod timeline;

pub use latency::MAX_LATENCY_POINTS;
pub use timeline::MAX_LANES;

use latency::write_latency;
use model::Model;
use page::{write_checkers, write_head, write_header};
use throughput::write_throughput;
use timeline::write_timeline;

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

#[cfg(test)]
mod tests;
