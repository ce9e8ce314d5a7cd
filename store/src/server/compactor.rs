//! Auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`): the leader discards
//! history older than a retention, as etcd 3.4/3.5's `v3compactor` does.
//!
//! - `periodic` keeps a duration of history. Every `min(retention, 1h) / 10` the member samples its
//!   current revision into a ring; at most every `min(retention, 1h)` (and never before `retention`
//!   has passed since start) it compacts to the newest sample at least `retention` old. (etcd's
//!   ring hands it a sample one interval older after the first compaction; Keel keeps exactly the
//!   retention.)
//! - `revision` keeps a number of revisions: every 5 minutes it compacts to `current - retention`
//!   when that is above the last compaction.
//!
//! Invariants:
//! - **Never more than asked.** A periodic target was the store's revision `retention` ago (or
//!   earlier), so every revision current at any time within the retention stays readable; a
//!   revision target is `retention` revisions below one the member has applied. Samples come from
//!   this member's applied revision, which never runs ahead of the leader's, so a member that becomes
//!   leader inherits samples that are, if anything, conservative.
//! - **Through the log only.** A compaction is a `Command::Compact` proposed like a client's
//!   (`Member::propose`), never written locally, so every member compacts at the same log position.
//!   It is proposed as `root`: it is the cluster's own duty (etcd's compactor sits beneath auth), and
//!   while auth is on `root` exists and holds the root role (deleting it or revoking that role is
//!   refused), so the entry is never refused for permissions.
//! - **Leader only.** Followers keep sampling (as etcd's paused compactor does) but propose nothing;
//!   a "compacted" or "future revision" refusal means someone got there first and counts as done;
//!   any other failure is logged and retried at the next tick.
//! - **Bounded.** One proposal per tick, bounded by the request timeout; the sample ring holds at
//!   most `retention / interval + 1` samples (11 for retentions up to an hour, 10 more per further
//!   hour). The task holds only a `Weak<Member>` between ticks and ends when the member is gone.
//!
//! The decision ([`Schedule`]) is pure — fed `(now, revision)` samples, it says which revision to
//! compact, if any — so it is tested without a server; the loop around it uses Tokio time, so tests
//! pause and advance the clock.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::Member;
use super::config::ConfigError;
use crate::auth::ROOT_USER;
use crate::error::StoreError;
use crate::raft::Command;

/// etcd caps the periodic compactor's window at an hour: longer retentions still compact hourly.
const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Samples (and retries) per window, as in etcd.
const SAMPLES_PER_WINDOW: u32 = 10;
/// Floor of the sampling interval, so a tiny retention ("5ns") cannot spin the loop.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How often revision mode checks, as in etcd.
const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

const MODE_FLAG: &str = "--auto-compaction-mode";
const RETENTION_FLAG: &str = "--auto-compaction-retention";

/// `--auto-compaction-mode`: what the retention measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AutoCompactionMode {
    /// Keep a duration of history (etcd's default).
    #[default]
    Periodic,
    /// Keep a number of revisions.
    Revision,
}

impl FromStr for AutoCompactionMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "periodic" => Ok(Self::Periodic),
            "revision" => Ok(Self::Revision),
            _ => Err(ConfigError::AutoCompaction {
                flag: MODE_FLAG,
                value: text.to_string(),
                reason: "expected periodic or revision".into(),
            }),
        }
    }
}

/// `--auto-compaction-retention` as written; its unit depends on the mode (see [`policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompactionRetention {
    /// A bare integer: hours in periodic mode, revisions in revision mode. 0 (or "") disables.
    Count(u64),
    /// A Go-style duration ("30m", "1h30m", "1.5h", "10s"): periodic mode only. Zero disables.
    Duration(Duration),
}

impl Default for AutoCompactionRetention {
    /// Disabled, as in etcd.
    fn default() -> Self {
        Self::Count(0)
    }
}

impl FromStr for AutoCompactionRetention {
    type Err = ConfigError;

    /// etcd's rule: a non-negative integer is a count, anything else must parse as a Go duration.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            |reason: String| ConfigError::AutoCompaction { flag: RETENTION_FLAG, value: text.to_string(), reason };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(Self::Count(0));
        }
        if trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return trimmed.parse().map(Self::Count).map_err(|_| bad("the number is too large".into()));
        }
        parse_go_duration(trimmed).map(Self::Duration).map_err(bad)
    }
}

/// What the compactor keeps, resolved from the mode and the retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// The auto-compaction policy for `mode` and `retention`; `None` when disabled (retention 0).
pub fn policy(mode: AutoCompactionMode, retention: AutoCompactionRetention) -> Result<Option<Policy>, ConfigError> {
    let bad = |value: String, reason: &str| ConfigError::AutoCompaction {
        flag: RETENTION_FLAG,
        value,
        reason: reason.to_string(),
    };
    match (mode, retention) {
        (_, AutoCompactionRetention::Count(0)) => Ok(None),
        (_, AutoCompactionRetention::Duration(d)) if d.is_zero() => Ok(None),
        (AutoCompactionMode::Periodic, AutoCompactionRetention::Count(hours)) => hours
            .checked_mul(3600)
            .map(|secs| Some(Policy::Periodic(Duration::from_secs(secs))))
            .ok_or_else(|| bad(hours.to_string(), "too many hours")),
        (AutoCompactionMode::Periodic, AutoCompactionRetention::Duration(d)) => Ok(Some(Policy::Periodic(d))),
        (AutoCompactionMode::Revision, AutoCompactionRetention::Count(count)) => i64::try_from(count)
            .map(|count| Some(Policy::Revision(count)))
            .map_err(|_| bad(count.to_string(), "too many revisions")),
        (AutoCompactionMode::Revision, AutoCompactionRetention::Duration(d)) => {
            Err(bad(format!("{d:?}"), "--auto-compaction-mode revision takes a revision count, not a duration"))
        }
    }
}

/// Parses Go's `time.ParseDuration` syntax without a sign: a sequence of decimal numbers (with an
/// optional fraction), each with a unit among `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`; "0" alone.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.starts_with('-') {
        return Err("a retention cannot be negative".into());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("missing unit: use h, m, s, ms, us or ns (a bare integer means hours)".into()),
            other => return Err(format!("unknown unit {other:?}: use h, m, s, ms, us or ns")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(format!("expected a number before {unit:?}"));
        }
        let too_long = || "the duration is too long".to_string();
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_long())? };
        // Digits beyond nanosecond precision of an hour cannot matter; dropping them avoids overflow.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| format!("expected a number before {unit:?}"))?;
            digits * scale / 10u128.pow(fraction.len() as u32)
        };
        nanos = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(too_long)?;
        rest = next;
    }
    // Go's durations are i64 nanoseconds (about 292 years).
    let nanos = u64::try_from(nanos).ok().filter(|n| *n <= i64::MAX as u64).ok_or("the duration is too long")?;
    Ok(Duration::from_nanos(nanos))
}

/// One observation of the store's revision.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    revision: i64,
}

/// Periodic mode's decision: a bounded ring of samples and the last compaction.
#[derive(Debug)]
pub struct Periodic {
    retention: Duration,
    /// Sampling and retry interval.
    interval: Duration,
    /// Least time between two compactions.
    compact_every: Duration,
    /// Most samples kept.
    capacity: usize,
    /// Oldest first; only the newest sample at least `retention` old, and the ones after it.
    samples: VecDeque<Sample>,
    /// When and where the last compaction completed.
    last: Option<(Instant, i64)>,
}

impl Periodic {
    /// A schedule keeping `retention` of history (positive).
    pub fn new(retention: Duration) -> Self {
        let window = retention.min(MAX_WINDOW);
        let interval = (window / SAMPLES_PER_WINDOW).max(MIN_INTERVAL);
        let capacity =
            usize::try_from(retention.as_nanos() / interval.as_nanos()).unwrap_or(usize::MAX).saturating_add(1);
        Self { retention, interval, compact_every: window, capacity, samples: VecDeque::new(), last: None }
    }

    /// Records the store's revision at `now`.
    pub fn observe(&mut self, now: Instant, revision: i64) {
        self.samples.push_back(Sample { at: now, revision });
        // A sample older than one that is already `retention` old can never be a target again.
        while self.samples.len() > 1 && now.saturating_duration_since(self.samples[1].at) >= self.retention {
            self.samples.pop_front();
        }
        // Only reached when fed faster than the interval: dropping the oldest only delays compaction.
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
    }

    /// The revision to compact to at `now`, if one is due; `compacted` is the store's compaction
    /// revision (a target at or below it has nothing left to discard).
    pub fn due(&self, now: Instant, compacted: i64) -> Option<i64> {
        if let Some((at, _)) = self.last
            && now.saturating_duration_since(at) < self.compact_every
        {
            return None;
        }
        let target =
            self.samples.iter().rev().find(|s| now.saturating_duration_since(s.at) >= self.retention)?.revision;
        let floor = compacted.max(self.last.map_or(0, |(_, revision)| revision));
        (target > floor).then_some(target)
    }

    /// Records that compaction to `revision` completed (or was already done) at `now`.
    pub fn done(&mut self, now: Instant, revision: i64) {
        let revision = revision.max(self.last.map_or(0, |(_, r)| r));
        self.last = Some((now, revision));
    }
}

/// Revision mode's decision: the latest revision seen and the last compaction.
#[derive(Debug)]
pub struct Revisions {
    retention: i64,
    current: i64,
    last: i64,
}

impl Revisions {
    /// A schedule keeping `retention` revisions (positive).
    pub fn new(retention: i64) -> Self {
        Self { retention, current: 0, last: 0 }
    }

    /// Records the store's current revision.
    pub fn observe(&mut self, revision: i64) {
        self.current = revision;
    }

    /// `current - retention`, when that is above the last compaction and the store's (`compacted`).
    pub fn due(&self, compacted: i64) -> Option<i64> {
        let target = self.current.saturating_sub(self.retention);
        (target > 0 && target > self.last.max(compacted)).then_some(target)
    }

    /// Records that compaction to `revision` completed (or was already done).
    pub fn done(&mut self, revision: i64) {
        self.last = self.last.max(revision);
    }
}

/// The compaction decision for either mode: fed `(now, current revision)` samples, it says which
/// revision to compact to, if any.
#[derive(Debug)]
pub enum Schedule {
    /// `periodic`.
    Periodic(Periodic),
    /// `revision`.
    Revision(Revisions),
}

impl Schedule {
    /// The schedule for a policy.
    pub fn new(policy: Policy) -> Self {
        match policy {
            Policy::Periodic(retention) => Self::Periodic(Periodic::new(retention)),
            Policy::Revision(retention) => Self::Revision(Revisions::new(retention)),
        }
    }

    /// Time between ticks.
    pub fn interval(&self) -> Duration {
        match self {
            Self::Periodic(p) => p.interval,
            Self::Revision(_) => REVISION_INTERVAL,
        }
    }

    /// Time from start to the first tick: periodic samples at once (its first compaction waits for a
    /// sample `retention` old anyway); revision mode first checks one interval in, as etcd does.
    pub fn first_tick(&self) -> Duration {
        match self {
            Self::Periodic(_) => Duration::ZERO,
            Self::Revision(_) => REVISION_INTERVAL,
        }
    }

    /// Records the store's revision at `now` (every tick, leading or not).
    pub fn observe(&mut self, now: Instant, revision: i64) {
        match self {
            Self::Periodic(p) => p.observe(now, revision),
            Self::Revision(r) => r.observe(revision),
        }
    }

    /// The revision to compact to at `now`, if any; `compacted` is the store's compaction revision.
    pub fn due(&self, now: Instant, compacted: i64) -> Option<i64> {
        match self {
            Self::Periodic(p) => p.due(now, compacted),
            Self::Revision(r) => r.due(compacted),
        }
    }

    /// Records that compaction to `revision` completed at `now`, or was refused as already done.
    pub fn done(&mut self, now: Instant, revision: i64) {
        match self {
            Self::Periodic(p) => p.done(now, revision),
            Self::Revision(r) => r.done(revision),
        }
    }
}

/// Samples the revision every tick and, while this member leads, proposes the compactions the
/// schedule asks for. Ends when the member is dropped.
pub(super) async fn run(member: Weak<Member>, policy: Policy) {
    let mut schedule = Schedule::new(policy);
    tracing::info!(?policy, "auto compaction enabled");
    let mut tick = tokio::time::interval_at(Instant::now() + schedule.first_tick(), schedule.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = member.upgrade() else { return };
        let now = Instant::now();
        let mvcc = m.core.mvcc();
        schedule.observe(now, mvcc.current_revision());
        // etcd pauses its compactor while not leading.
        if !m.is_leader() {
            continue;
        }
        let Some(revision) = schedule.due(now, mvcc.compacted_revision()) else { continue };
        tracing::info!(revision, ?policy, "starting auto compaction");
        match m.propose(Command::as_user(Some(ROOT_USER), Command::Compact { revision })).await {
            Ok(_) => {
                tracing::info!(revision, "completed auto compaction");
                schedule.done(now, revision);
            }
            // Already compacted that far (by an operator, or a proposal whose answer was lost).
            Err(StoreError::Compacted { .. } | StoreError::FutureRevision) => schedule.done(now, revision),
            Err(err) => {
                tracing::warn!(revision, %err, retry_in = ?schedule.interval(), "auto compaction failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mvcc::{PutRequest, RangeRequest};
    use crate::server::{BackendKind, StoreConfig};

    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);

    fn retention(text: &str) -> Result<AutoCompactionRetention, String> {
        text.parse().map_err(|e: ConfigError| e.to_string())
    }

    fn periodic(text: &str) -> Policy {
        policy(AutoCompactionMode::Periodic, retention(text).unwrap()).unwrap().unwrap()
    }

    #[test]
    fn retention_flag_is_hours_when_bare_and_a_go_duration_otherwise() {
        assert_eq!(periodic("1"), Policy::Periodic(HOUR));
        assert_eq!(periodic("24"), Policy::Periodic(24 * HOUR));
        assert_eq!(periodic("30m"), Policy::Periodic(30 * MINUTE));
        assert_eq!(periodic("1h30m"), Policy::Periodic(90 * MINUTE));
        assert_eq!(periodic("1.5h"), Policy::Periodic(90 * MINUTE));
        assert_eq!(periodic("10s"), Policy::Periodic(Duration::from_secs(10)));
        assert_eq!(periodic("250ms"), Policy::Periodic(Duration::from_millis(250)));
        assert_eq!(periodic("+2m"), Policy::Periodic(2 * MINUTE));
        let revisions = |text: &str| policy(AutoCompactionMode::Revision, retention(text).unwrap());
        assert_eq!(revisions("1000").unwrap(), Some(Policy::Revision(1000)));
        assert_eq!("revision".parse::<AutoCompactionMode>().unwrap(), AutoCompactionMode::Revision);
        assert_eq!("periodic".parse::<AutoCompactionMode>().unwrap(), AutoCompactionMode::Periodic);
        assert_eq!(AutoCompactionMode::default(), AutoCompactionMode::Periodic);
    }

    #[test]
    fn zero_or_empty_retention_disables_auto_compaction() {
        for text in ["0", "", "0s", "0h0m"] {
            for mode in [AutoCompactionMode::Periodic, AutoCompactionMode::Revision] {
                assert_eq!(policy(mode, retention(text).unwrap()).unwrap(), None, "{text:?} in {mode:?} mode");
            }
        }
        assert_eq!(
            policy(AutoCompactionMode::default(), AutoCompactionRetention::default()).unwrap(),
            None,
            "disabled by default"
        );
    }

    #[test]
    fn bad_flag_values_are_refused_naming_the_value() {
        for (text, why) in [
            ("5x", "unknown unit \"x\""),
            ("1.5", "missing unit"),
            ("-1h", "negative"),
            ("h", "expected a number"),
            ("1..5h", "expected a number"),
            ("99999999999999999999", "too large"),
            ("3000000h", "too long"),
        ] {
            let err = retention(text).unwrap_err();
            assert!(err.starts_with(&format!("invalid --auto-compaction-retention {text:?}: ")), "{err}");
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let err = "hourly".parse::<AutoCompactionMode>().unwrap_err().to_string();
        assert_eq!(err, "invalid --auto-compaction-mode \"hourly\": expected periodic or revision");
        let err = policy(AutoCompactionMode::Revision, retention("30m").unwrap()).unwrap_err().to_string();
        assert!(err.contains("revision count, not a duration"), "{err}");
    }

    #[test]
    fn periodic_samples_a_tenth_of_the_retention_and_compacts_at_least_hourly() {
        let Schedule::Periodic(short) = Schedule::new(periodic("10m")) else { unreachable!() };
        assert_eq!((short.interval, short.compact_every, short.capacity), (MINUTE, 10 * MINUTE, 11));
        let Schedule::Periodic(long) = Schedule::new(periodic("24")) else { unreachable!() };
        assert_eq!((long.interval, long.compact_every, long.capacity), (6 * MINUTE, HOUR, 241));
        let tiny = Schedule::new(periodic("1ms"));
        assert_eq!(tiny.interval(), MIN_INTERVAL, "a tiny retention cannot spin the loop");
        assert_eq!(Schedule::new(Policy::Revision(5)).interval(), 5 * MINUTE);
    }

    /// Feeds one sample per interval with the revision growing 10 per minute from 100.
    fn feed(schedule: &mut Schedule, start: Instant, from: Duration, to: Duration, step: Duration) -> Vec<Option<i64>> {
        let mut decisions = Vec::new();
        let mut at = from;
        while at <= to {
            let revision = 100 + 10 * (at.as_secs() / 60) as i64;
            schedule.observe(start + at, revision);
            decisions.push(schedule.due(start + at, 0));
            at += step;
        }
        decisions
    }

    #[test]
    fn periodic_compacts_to_the_revision_seen_retention_ago() {
        let start = Instant::now();
        let mut schedule = Schedule::new(periodic("10m"));
        let before = feed(&mut schedule, start, Duration::ZERO, 9 * MINUTE, MINUTE);
        assert!(before.iter().all(Option::is_none), "nothing before a full retention: {before:?}");
        let at_10m = feed(&mut schedule, start, 10 * MINUTE, 10 * MINUTE, MINUTE);
        assert_eq!(at_10m, vec![Some(100)], "the revision observed at start, 10 minutes ago");
        schedule.done(start + 10 * MINUTE, 100);

        let between = feed(&mut schedule, start, 11 * MINUTE, 19 * MINUTE, MINUTE);
        assert!(between.iter().all(Option::is_none), "one compaction per retention window: {between:?}");
        let at_20m = feed(&mut schedule, start, 20 * MINUTE, 20 * MINUTE, MINUTE);
        assert_eq!(at_20m, vec![Some(200)], "the revision observed at 10m");
    }

    #[test]
    fn periodic_with_a_long_retention_compacts_hourly_to_the_revision_seen_retention_ago() {
        let start = Instant::now();
        let mut schedule = Schedule::new(periodic("2h"));
        let step = 6 * MINUTE;
        assert!(feed(&mut schedule, start, Duration::ZERO, 2 * HOUR - step, step).iter().all(Option::is_none));
        assert_eq!(feed(&mut schedule, start, 2 * HOUR, 2 * HOUR, step), vec![Some(100)]);
        schedule.done(start + 2 * HOUR, 100);
        assert!(feed(&mut schedule, start, 2 * HOUR + step, 3 * HOUR - step, step).iter().all(Option::is_none));
        assert_eq!(feed(&mut schedule, start, 3 * HOUR, 3 * HOUR, step), vec![Some(100 + 60 * 10)], "seen at 1h");
    }

    #[test]
    fn periodic_retries_a_failed_compaction_at_the_next_tick() {
        let start = Instant::now();
        let mut schedule = Schedule::new(periodic("10m"));
        feed(&mut schedule, start, Duration::ZERO, 9 * MINUTE, MINUTE);
        assert_eq!(feed(&mut schedule, start, 10 * MINUTE, 10 * MINUTE, MINUTE), vec![Some(100)]);
        // No `done`: the proposal failed. The next tick tries again, with the newer old-enough sample.
        assert_eq!(feed(&mut schedule, start, 11 * MINUTE, 11 * MINUTE, MINUTE), vec![Some(110)]);
    }

    #[test]
    fn periodic_skips_revisions_already_compacted() {
        let start = Instant::now();
        let mut schedule = Schedule::new(periodic("10m"));
        feed(&mut schedule, start, Duration::ZERO, 9 * MINUTE, MINUTE);
        schedule.observe(start + 10 * MINUTE, 200);
        assert_eq!(schedule.due(start + 10 * MINUTE, 100), None, "an operator already compacted to 100");
        assert_eq!(schedule.due(start + 10 * MINUTE, 99), Some(100));
    }

    #[test]
    fn periodic_sample_ring_stays_bounded() {
        let start = Instant::now();
        let mut schedule = Schedule::new(periodic("10m"));
        feed(&mut schedule, start, Duration::ZERO, 24 * HOUR, MINUTE);
        let Schedule::Periodic(p) = &schedule else { unreachable!() };
        assert_eq!(p.samples.len(), 11);
        // Fed far faster than its interval, it still keeps at most its capacity.
        feed(&mut schedule, start, 24 * HOUR, 25 * HOUR, Duration::from_secs(1));
        let Schedule::Periodic(p) = &schedule else { unreachable!() };
        assert!(p.samples.len() <= 11, "{}", p.samples.len());
    }

    #[test]
    fn revision_compacts_to_current_minus_retention_above_the_last_compaction() {
        let now = Instant::now();
        let mut schedule = Schedule::new(Policy::Revision(10));
        assert_eq!(schedule.first_tick(), 5 * MINUTE, "etcd's first check is one interval in");
        schedule.observe(now, 10);
        assert_eq!(schedule.due(now, 0), None, "nothing below revision 1 to discard");
        schedule.observe(now, 25);
        assert_eq!(schedule.due(now, 0), Some(15));
        schedule.done(now, 15);
        assert_eq!(schedule.due(now, 0), None, "no new revisions, no new compaction");
        schedule.observe(now, 30);
        assert_eq!(schedule.due(now, 0), Some(20));
        assert_eq!(schedule.due(now, 20), None, "the store was compacted that far already");
        assert_eq!(schedule.due(now, 19), Some(20));
    }

    /// A single in-memory member in revision mode, like `store/tests/common`'s harness but without
    /// the gRPC API (the loop is what is under test).
    #[tokio::test]
    async fn a_leader_in_revision_mode_compacts_history_older_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::with_data_dir(dir.path().join("data"));
        config.name = "compactor".into();
        config.backend = BackendKind::Memory;
        // Paused time still wakes Raft every heartbeat: slower heartbeats make 5 virtual minutes cheap.
        config.heartbeat_interval = Duration::from_millis(250);
        config.election_timeout = Duration::from_millis(1250);
        config.auto_compaction_mode = AutoCompactionMode::Revision;
        config.auto_compaction_retention = AutoCompactionRetention::Count(10);
        let member = Member::start(config).await.unwrap();
        member
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .state(openraft::ServerState::Leader, "single member elects itself")
            .await
            .unwrap();
        for i in 0..20 {
            let put = PutRequest { key: b"k".to_vec(), value: format!("v{i}").into_bytes(), ..Default::default() };
            member.propose(Command::Put(put)).await.unwrap();
        }
        let mvcc = Arc::clone(member.core().mvcc());
        let current = mvcc.current_revision();
        let read = |revision: i64| mvcc.range(&RangeRequest { key: b"k".to_vec(), revision, ..Default::default() });
        assert!(read(2).is_ok(), "history is readable before the compactor runs");

        // Writes are done in real time; from here on the clock only moves when everything is idle.
        tokio::time::pause();
        tokio::time::sleep(4 * MINUTE).await;
        assert_eq!(mvcc.compacted_revision(), 0, "revision mode first checks 5 minutes in");
        for _ in 0..12 {
            if mvcc.compacted_revision() >= current - 10 {
                break;
            }
            tokio::time::sleep(MINUTE).await;
        }
        assert_eq!(mvcc.compacted_revision(), current - 10, "compacted to current - retention");
        let err = StoreError::from(read(2).unwrap_err());
        assert!(err.to_string().contains("compacted"), "{err}");
        let kept = read(current - 10).unwrap();
        assert_eq!(kept.kvs.len(), 1, "the revision at the retention boundary stays readable");
        assert!(read(current).is_ok());
        member.shutdown().await;
    }
}
