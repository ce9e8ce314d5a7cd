//! Tests of the report module: each named after the property it protects.

use super::model::{Model, fault_windows};
use super::svg::{TimeAxis, c};
use super::text::{fmt_duration, fmt_num, fmt_secs};
use super::throughput::{throughput_bucket_ns, throughput_counts};
use super::timeline::MAX_TIMELINE_MARKS;
use super::*;
use crate::checker::Anomaly;
use crate::history::{Event, EventType, Fault, Mop, Op, Process};

/// Builds histories in order, numbering events and stamping times in milliseconds.
#[derive(Default)]
struct Builder {
    events: Vec<Event>,
}

impl Builder {
    fn push(&mut self, ms: u64, process: Process, kind: EventType, op: Op, node: Option<&str>, error: Option<&str>) {
        self.push_ns(ms * 1_000_000, process, kind, op, node, error);
    }

    fn push_ns(
        &mut self,
        time_ns: u64,
        process: Process,
        kind: EventType,
        op: Op,
        node: Option<&str>,
        error: Option<&str>,
    ) {
        let index = self.events.len();
        self.events.push(Event {
            index,
            time_ns,
            process,
            kind,
            op,
            node: node.map(str::to_string),
            error: error.map(str::to_string),
        });
    }

    fn history(self) -> History {
        History { events: self.events }
    }
}

fn kill(target: &str) -> Fault {
    Fault { kind: "kill".into(), targets: vec![target.into()], detail: String::new() }
}

const SCRIPT: &str = "<script>alert('x')</script>";

/// A few processes doing reads, writes, a cas and a txn, one operation ending `info`, and one
/// kill window; an error and a node name carry markup that must be escaped.
fn small_history() -> History {
    use EventType::{Fail, Info, Invoke, Ok};
    use Process::{Client, Nemesis};
    let mut b = Builder::default();
    b.push(0, Client(0), Invoke, Op::Write { key: 1, value: 1 }, Some("n1"), None);
    b.push(10, Client(1), Invoke, Op::Read { key: 1, value: None }, Some("n2"), None);
    b.push(20, Client(2), Invoke, Op::Cas { key: 1, from: 1, to: 2 }, Some("n3"), None);
    b.push(60, Client(0), Ok, Op::Write { key: 1, value: 1 }, Some("n1"), None);
    b.push(80, Client(1), Ok, Op::Read { key: 1, value: Some(1) }, Some("n2"), None);
    b.push(140, Client(2), Fail, Op::Cas { key: 1, from: 1, to: 2 }, Some("n3"), Some(SCRIPT));
    b.push(200, Nemesis, Invoke, Op::Start(kill("n2")), None, None);
    b.push(230, Nemesis, Ok, Op::Start(kill("n2")), None, None);
    let mops = vec![Mop::Append { key: 7, value: 1 }, Mop::Read { key: 7, value: None }];
    b.push(250, Client(0), Invoke, Op::Txn { mops }, Some("n1"), None);
    b.push(260, Client(1), Invoke, Op::Write { key: 1, value: 3 }, Some("n2"), None);
    let mops = vec![Mop::Append { key: 7, value: 1 }, Mop::Read { key: 7, value: Some(vec![1]) }];
    b.push(340, Client(0), Ok, Op::Txn { mops }, Some("n1"), None);
    b.push(400, Client(2), Invoke, Op::Read { key: 1, value: None }, Some(SCRIPT), None);
    b.push(470, Client(2), Ok, Op::Read { key: 1, value: Some(3) }, Some(SCRIPT), None);
    b.push(1260, Client(1), Info, Op::Write { key: 1, value: 3 }, Some("n2"), Some("timeout after 1 s"));
    b.push(1300, Client(4), Invoke, Op::Read { key: 1, value: None }, Some("n3"), None);
    b.push(1340, Client(4), Ok, Op::Read { key: 1, value: Some(3) }, Some("n3"), None);
    b.push(1500, Nemesis, Invoke, Op::Stop(kill("n2")), None, None);
    b.push(1530, Nemesis, Ok, Op::Stop(kill("n2")), None, None);
    b.push(1600, Client(0), Invoke, Op::Cas { key: 1, from: 3, to: 4 }, Some("n1"), None);
    b.push(1650, Client(0), Ok, Op::Cas { key: 1, from: 3, to: 4 }, Some("n1"), None);
    b.history()
}

fn small_results(history: &History) -> Vec<CheckResult> {
    let mut stats = serde_json::Map::new();
    stats.insert("operations".into(), 8.into());
    stats.insert("keys".into(), 1.into());
    let anomaly = Anomaly {
        kind: "nonlinearizable".into(),
        explanation: format!(
            "The read #4 saw 1 but #12 saw 3 although the write of 3 (#9) never completed; {SCRIPT} is escaped."
        ),
        ops: vec![history.events[4].clone(), history.events[12].clone()],
    };
    vec![
        CheckResult {
            checker: "linearizable".into(),
            valid: Validity::Invalid,
            anomalies: vec![anomaly],
            stats: stats.clone(),
        },
        CheckResult { checker: "append".into(), valid: Validity::Valid, anomalies: vec![], stats },
    ]
}

fn summary() -> Vec<(String, String)> {
    vec![
        ("workload".into(), "register".into()),
        ("nemeses".into(), "kill".into()),
        ("nodes".into(), "n1, n2, n3".into()),
        ("seed".into(), "42".into()),
        (SCRIPT.into(), "a key with markup".into()),
    ]
}

const COMMAND: &str = "cargo run -- test --workload register --seed 42 --nemesis 'kill' && echo \"done\"";

fn render_small() -> String {
    let history = small_history();
    let results = small_results(&history);
    let summary = summary();
    render(&ReportInput {
        title: "register under kill",
        command: COMMAND,
        history: &history,
        results: &results,
        summary: &summary,
    })
}

/// The part of the page inside `<section id="{id}">`.
fn section<'p>(page: &'p str, id: &str) -> &'p str {
    let start = page.find(&format!("<section id=\"{id}\">")).unwrap_or_else(|| panic!("no section {id}"));
    let end = start + page[start..].find("</section>").expect("unclosed section");
    &page[start..end]
}

/// A long, busy history: `workers` workers doing `ops` operations with random latencies,
/// a few failures and timeouts (after which the worker continues as a new process), and a
/// fault every ten seconds.
fn big_history(ops: usize, workers: u64) -> History {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |bound: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    // Events are generated worker by worker, then put in time order; the generation order
    // breaks ties so that a completion never precedes its invocation.
    let mut raw: Vec<Event> = Vec::new();
    let mut add = |time_ns: u64, process: Process, kind: EventType, op: Op, error: Option<&str>| {
        let (node, error) = (Some("n1".to_string()), error.map(str::to_string));
        raw.push(Event { index: raw.len(), time_ns, process, kind, op, node, error });
    };
    let per_worker = ops / workers as usize;
    let mut end = 0;
    for worker in 0..workers {
        let (mut t, mut process) = (next(5_000_000), worker);
        for _ in 0..per_worker {
            let key = next(5);
            let op = match next(4) {
                0 => Op::Read { key, value: None },
                1 => Op::Write { key, value: next(1_000_000) },
                2 => Op::Cas { key, from: next(10), to: next(10) },
                _ => Op::Txn { mops: vec![Mop::Append { key, value: next(1_000_000) }] },
            };
            let latency = if next(100) == 0 { 200_000_000 + next(800_000_000) } else { 1_000_000 + next(30_000_000) };
            let (kind, error) = match next(1000) {
                0..=1 => (EventType::Info, Some("timeout")),
                2..=40 => (EventType::Fail, Some("cas mismatch")),
                _ => (EventType::Ok, None),
            };
            add(t, Process::Client(process), EventType::Invoke, op.clone(), None);
            t += latency;
            add(t, Process::Client(process), kind, op, error);
            end = end.max(t);
            t += next(2_000_000);
            if kind == EventType::Info {
                process += workers;
            }
        }
    }
    let kinds = ["kill", "partition", "pause"];
    for k in 0..end / 10_000_000_000 {
        let targets = vec![format!("n{}", k % 3 + 1)];
        let fault = Fault { kind: kinds[k as usize % 3].into(), targets, detail: String::new() };
        let t = (k + 1) * 10_000_000_000;
        add(t, Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()), None);
        add(t + 50_000_000, Process::Nemesis, EventType::Ok, Op::Start(fault.clone()), None);
        add(t + 5_000_000_000, Process::Nemesis, EventType::Invoke, Op::Stop(fault.clone()), None);
        add(t + 5_050_000_000, Process::Nemesis, EventType::Ok, Op::Stop(fault), None);
    }
    raw.sort_by_key(|e| (e.time_ns, e.index));
    for (index, event) in raw.iter_mut().enumerate() {
        event.index = index;
    }
    History { events: raw }
}

fn render_big(history: &History) -> String {
    let picks = [100, 2_000, 40_000].map(|i| history.events[i.min(history.events.len() - 1)].clone());
    let results = vec![CheckResult {
        checker: "linearizable".into(),
        valid: Validity::Invalid,
        anomalies: vec![Anomaly { kind: "stale-read".into(), explanation: "made up".into(), ops: picks.to_vec() }],
        stats: serde_json::Map::new(),
    }];
    render(&ReportInput { title: "big", command: "run", history, results: &results, summary: &[] })
}

#[test]
fn escape_replaces_every_markup_character() {
    assert_eq!(escape(r#"a<b>&"c"'d'"#), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
    assert_eq!(escape("plain text, ünïcode → ok"), "plain text, ünïcode → ok");
    assert_eq!(escape("&amp;"), "&amp;amp;", "escaping is not idempotent, so text is escaped exactly once");
}

#[test]
fn markup_from_the_inputs_is_escaped_everywhere() {
    let page = render_small();
    assert!(!page.contains("<script"), "unescaped markup in the page");
    assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    // The error shows in the anomaly-free tooltip of the failed cas, and the node in a tooltip.
    let timeline = section(&page, "timeline");
    assert!(timeline.contains("error: &lt;script&gt;"), "{timeline}");
    assert!(timeline.contains("node &lt;script&gt;"), "{timeline}");
    assert!(page.contains("<th>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;</th>"), "summary key");
}

#[test]
fn header_shows_the_combined_verdict_and_the_exact_command() {
    let page = render_small();
    assert!(page.contains(r#"<div class="verdict invalid">INVALID</div>"#));
    let escaped =
        "cargo run -- test --workload register --seed 42 --nemesis &#39;kill&#39; &amp;&amp; echo &quot;done&quot;";
    assert!(page.contains(&format!("<pre class=\"cmd\">{escaped}</pre>")));
    assert!(page.contains("<tr><th>seed</th><td>42</td></tr>"));
    assert!(page.contains("<title>register under kill — INVALID</title>"));
}

#[test]
fn verdict_combines_checkers_with_validity_and() {
    let history = small_history();
    let verdict_of = |valids: &[Validity]| {
        let results: Vec<CheckResult> = valids
            .iter()
            .map(|v| CheckResult { checker: "c".into(), valid: *v, anomalies: vec![], stats: serde_json::Map::new() })
            .collect();
        let page =
            render(&ReportInput { title: "t", command: "c", history: &history, results: &results, summary: &[] });
        let start = page.find("<div class=\"verdict").expect("verdict");
        page[start..start + page[start..].find("</div>").expect("closed")].to_string()
    };
    assert!(verdict_of(&[Validity::Valid, Validity::Valid]).ends_with(">valid"));
    assert!(verdict_of(&[Validity::Valid, Validity::Unknown]).ends_with(">unknown"));
    assert!(verdict_of(&[Validity::Unknown, Validity::Invalid, Validity::Valid]).ends_with(">INVALID"));
    assert!(verdict_of(&[]).ends_with(">unknown"), "no checker claims nothing");
}

#[test]
fn each_checker_shows_its_stats_and_anomaly_operations() {
    let page = render_small();
    let checkers = section(&page, "checkers");
    assert!(checkers.contains("linearizable <span class=\"badge invalid\">INVALID</span>"));
    assert!(checkers.contains("append <span class=\"badge valid\">valid</span>"));
    assert!(checkers.contains("<tr><th>operations</th><td class=\"num\">8</td></tr>"));
    assert!(checkers.contains("<h4>nonlinearizable</h4>"));
    // Event 4 is p1's ok read of 1 at 80 ms from n2.
    assert!(
        checkers.contains(
            "<tr><td class=\"num\">4</td><td class=\"num\">0.080 s</td><td>p1</td><td class=\"t ok\">ok</td>\
             <td>read</td><td class=\"args\">key=1 value=1</td><td>n2</td><td></td></tr>"
        ),
        "{checkers}"
    );
}

#[test]
fn timeline_draws_one_bar_per_operation() {
    let history = small_history();
    let ops = history.client_pairs().expect("well formed").len();
    let page = render_small();
    let timeline = section(&page, "timeline");
    assert_eq!(timeline.matches("<rect class=\"op ").count(), ops);
    assert_eq!(timeline.matches("<rect class=\"op ok").count(), 6);
    assert_eq!(timeline.matches("<rect class=\"op fail").count(), 1);
    assert_eq!(timeline.matches("<rect class=\"op info").count(), 1);
    assert_eq!(timeline.matches("<rect class=\"run ").count(), 0, "nothing is crowded");
    assert_eq!(timeline.matches("<rect class=\"ext\"").count(), 1, "the info op extends to the end");
    for lane in ["p0", "p1", "p2", "p4"] {
        assert!(timeline.contains(&format!(">{lane}</text>")), "lane {lane}");
    }
    assert!(timeline.contains("txn append(7, 1); read(7) → [1] → ok"), "txn tooltip shows its results");
}

#[test]
fn fault_windows_are_shaded_across_every_lane() {
    let page = render_small();
    let timeline = section(&page, "timeline");
    let shades: Vec<&str> = timeline.match_indices("<rect class=\"fault\"").map(|(i, _)| &timeline[i..]).collect();
    assert_eq!(shades.len(), 1, "one kill window");
    // Four lanes of 16 px, starting below one row of fault labels.
    let lanes_top = 6.0 + 16.0;
    assert!(shades[0].starts_with(&format!(
        "<rect class=\"fault\" x=\"{}\" y=\"{}\"",
        c(TimeAxis { end_ns: 1_650_000_000 }.x(200_000_000)),
        c(lanes_top)
    )));
    assert!(shades[0].contains(&format!("height=\"{}\"", c(4.0 * 16.0))));
    assert!(timeline.contains(">kill n2</text>"), "labelled with kind and target");
    for id in ["latency", "throughput"] {
        assert_eq!(section(&page, id).matches("<rect class=\"fault\"").count(), 1, "{id}");
    }
}

#[test]
fn anomaly_operations_are_outlined_on_the_timeline() {
    let page = render_small();
    let timeline = section(&page, "timeline");
    assert_eq!(timeline.matches("<rect class=\"op ok hl\"").count(), 2);
    assert_eq!(section(&page, "latency").matches(" hl\"").count(), 2);
}

#[test]
fn fault_windows_pair_starts_with_the_stops_that_heal_them() {
    use EventType::{Fail, Invoke, Ok};
    use Process::Nemesis;
    let partition = |targets: &[&str]| Fault {
        kind: "partition".into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        detail: String::new(),
    };
    let mut b = Builder::default();
    b.push(0, Nemesis, Invoke, Op::Start(kill("n1")), None, None);
    b.push(1, Nemesis, Ok, Op::Start(kill("n1")), None, None);
    b.push(2, Nemesis, Invoke, Op::Start(partition(&["n2"])), None, None);
    b.push(3, Nemesis, Fail, Op::Start(partition(&["n2"])), None, None);
    b.push(4, Nemesis, Invoke, Op::Start(partition(&["n3"])), None, None);
    b.push(5, Nemesis, Ok, Op::Start(partition(&["n3"])), None, None);
    b.push(6, Nemesis, Invoke, Op::Stop(kill("n1")), None, None);
    b.push(7, Nemesis, Ok, Op::Stop(kill("n1")), None, None);
    b.push(8, Nemesis, Invoke, Op::Stop(partition(&[])), None, None);
    b.push(9, Nemesis, Fail, Op::Stop(partition(&[])), None, None);
    let windows = fault_windows(&b.history());
    let ends: Vec<(&str, Option<u64>, bool)> =
        windows.iter().map(|w| (w.fault.kind.as_str(), w.end_ns, w.failed)).collect();
    assert_eq!(
        ends,
        [("kill", Some(7_000_000), false), ("partition", Some(3_000_000), true), ("partition", None, false)]
    );
}

#[test]
fn throughput_counts_every_completion_once() {
    let history = small_history();
    let model = Model::new(&history, &[]);
    let bucket = throughput_bucket_ns(model.end_ns);
    assert_eq!(bucket, 100_000_000, "a 1.65 s test gets 100 ms buckets");
    let counts = throughput_counts(&model, bucket);
    let totals: Vec<u64> = counts.iter().map(|s| s.iter().sum()).collect();
    assert_eq!(totals, [6, 1, 1]);
    assert_eq!(throughput_bucket_ns(600_000_000_000), 1_000_000_000, "a 10-minute test gets 1 s buckets");
    assert!(throughput_bucket_ns(100_000_000_000_000) > 1_000_000_000, "a very long test gets wider buckets");
}

#[test]
fn numbers_are_formatted_compactly() {
    assert_eq!(fmt_num(3.0), "3");
    assert_eq!(fmt_num(12.3456), "12.3");
    assert_eq!(fmt_num(0.012345), "0.0123");
    assert_eq!(fmt_num(1234.6), "1235");
    assert_eq!(fmt_duration(12_345_678), "12.3 ms");
    assert_eq!(fmt_duration(850_000), "850 µs");
    assert_eq!(fmt_duration(1_500_000_000), "1.5 s");
    assert_eq!(fmt_secs(80_000_000), "0.080 s");
    assert_eq!(c(12.04), "12");
    assert_eq!(c(-0.01), "0");
    assert_eq!(c(3.25), "3.3");
}

#[test]
fn output_is_deterministic() {
    assert_eq!(render_small(), render_small());
    let history = big_history(5_000, 8);
    assert_eq!(render_big(&history), render_big(&history));
}

#[test]
fn a_fifty_thousand_operation_history_renders_with_bounded_size() {
    let history = big_history(50_000, 10);
    let page = render_big(&history);
    assert!(page.len() < 3_000_000, "page is {} bytes", page.len());
    let timeline = section(&page, "timeline");
    let marks = timeline.matches("<rect class=\"op ").count() + timeline.matches("<rect class=\"run ").count();
    assert!(marks <= MAX_TIMELINE_MARKS, "{marks} marks");
    assert!(timeline.contains("too many to draw apart"), "the caption says bars were merged");
    assert_eq!(timeline.matches(" hl\"").count(), 3, "anomaly operations stay outlined");
    let latency = section(&page, "latency");
    let points = latency.matches("class=\"pt ").count();
    let failed = history.client_pairs().expect("well formed").iter().filter(|p| p.outcome() != EventType::Ok).count();
    assert!(points <= MAX_LATENCY_POINTS + 3, "{points} points");
    assert!(
        latency.matches("class=\"pt fail").count() + latency.matches("class=\"pt info").count() >= failed - 3,
        "every failed and unknown operation is kept"
    );
    assert!(latency.contains("Sampled deterministically"));
}

#[test]
fn lanes_are_capped_and_the_omitted_processes_are_counted() {
    let mut b = Builder::default();
    for p in 0..100u64 {
        b.push(p * 10, Process::Client(p), EventType::Invoke, Op::Read { key: 1, value: None }, None, None);
        b.push(p * 10 + 5, Process::Client(p), EventType::Ok, Op::Read { key: 1, value: Some(1) }, None, None);
    }
    let history = b.history();
    let named = history.events[199].clone();
    let results = vec![CheckResult {
        checker: "c".into(),
        valid: Validity::Invalid,
        anomalies: vec![Anomaly { kind: "k".into(), explanation: "e".into(), ops: vec![named] }],
        stats: serde_json::Map::new(),
    }];
    let page = render(&ReportInput { title: "t", command: "c", history: &history, results: &results, summary: &[] });
    let timeline = section(&page, "timeline");
    assert_eq!(timeline.matches("class=\"lane-label\"").count(), MAX_LANES);
    assert!(timeline.contains(">p99</text>"), "the process an anomaly names keeps its lane");
    assert!(!timeline.contains(">p59</text>"), "it displaced the last of the others");
    assert!(timeline.contains("40 processes (40 operations) are omitted"));
}

#[test]
fn empty_and_malformed_histories_still_render() {
    let empty = History::default();
    let page = render(&ReportInput { title: "t", command: "c", history: &empty, results: &[], summary: &[] });
    assert!(page.contains("No client operations."));
    assert!(page.ends_with("</html>\n"));
    let mut b = Builder::default();
    b.push(0, Process::Client(0), EventType::Ok, Op::Read { key: 1, value: None }, None, None);
    b.push(1, Process::Client(0), EventType::Invoke, Op::Read { key: 1, value: None }, None, None);
    let history = b.history();
    let page = render(&ReportInput { title: "t", command: "c", history: &history, results: &[], summary: &[] });
    assert!(page.contains("class=\"warning\""));
    assert_eq!(section(&page, "timeline").matches("<rect class=\"op info\"").count(), 1);
}
