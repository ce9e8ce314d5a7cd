//! The nemesis: injects real faults on a schedule drawn from the test's seed, records each in
//! the history as a start/stop pair, and heals everything when the test ends.
//!
//! Faults are OS-level, never flags inside the server: SIGKILL and restart, SIGSTOP and SIGCONT,
//! iptables drops between member addresses, wall-clock skew through libfaketime (a bump to a fixed
//! offset, or a strobe flipping between offsets every second), and membership changes (a member is
//! removed through the Cluster API, loses its data, and is added back empty). Targets are drawn from the seed; leader-targeted
//! variants ask the members who leads at that moment (falling back to a random member when they
//! do not agree).
//!
//! Invariants: at most two faults are in place at a time, and then of different kinds (one step
//! in three overlaps a second kind when several are enabled); every started fault is stopped
//! (healed) before `run` returns, even when the test is cut short; every wait is bounded.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::JepsenError;
use crate::cluster::Cluster;
use crate::history::{EventType, Fault, Op, Process, Recorder};
use crate::net::Firewall;
use crate::rng::Rng;

/// A kind of fault the nemesis may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NemesisKind {
    /// SIGKILL members (one, a minority, a majority or all), restart them when healing.
    Kill,
    /// SIGKILL the leader.
    KillLeader,
    /// SIGSTOP members, SIGCONT when healing.
    Pause,
    /// SIGSTOP the leader.
    PauseLeader,
    /// Drop traffic between members: isolate one, majority/minority halves, bridge, ring.
    Partition,
    /// Isolate the leader from every other member.
    PartitionLeader,
    /// Skew members' wall clocks: bump them to an offset, or strobe between two.
    Clock,
    /// Remove a member (sometimes the leader) from the membership, wipe it, add it back.
    Member,
}

impl NemesisKind {
    /// Every kind, in the order `all` enables them.
    pub const ALL: [NemesisKind; 8] = [
        NemesisKind::Kill,
        NemesisKind::KillLeader,
        NemesisKind::Pause,
        NemesisKind::PauseLeader,
        NemesisKind::Partition,
        NemesisKind::PartitionLeader,
        NemesisKind::Clock,
        NemesisKind::Member,
    ];

    fn name(self) -> &'static str {
        match self {
            NemesisKind::Kill => "kill",
            NemesisKind::KillLeader => "kill-leader",
            NemesisKind::Pause => "pause",
            NemesisKind::PauseLeader => "pause-leader",
            NemesisKind::Partition => "partition",
            NemesisKind::PartitionLeader => "partition-leader",
            NemesisKind::Clock => "clock",
            NemesisKind::Member => "member",
        }
    }

    /// The fault this kind injects, whatever its targets: `kill`, `pause`, `partition`, `clock`
    /// or `member`. Two faults overlap only when their bases differ.
    fn base(self) -> &'static str {
        match self {
            NemesisKind::Kill | NemesisKind::KillLeader => "kill",
            NemesisKind::Pause | NemesisKind::PauseLeader => "pause",
            NemesisKind::Partition | NemesisKind::PartitionLeader => "partition",
            NemesisKind::Clock => "clock",
            NemesisKind::Member => "member",
        }
    }

    /// True when this kind needs the firewall (iptables).
    pub fn needs_firewall(self) -> bool {
        matches!(self, NemesisKind::Partition | NemesisKind::PartitionLeader)
    }
}

impl fmt::Display for NemesisKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NemesisKind {
    type Err = JepsenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        NemesisKind::ALL.into_iter().find(|k| k.name() == text).ok_or_else(|| {
            let names: Vec<&str> = NemesisKind::ALL.iter().map(|k| k.name()).collect();
            JepsenError::Usage(format!("unknown nemesis {text:?}; known: {}, all, none", names.join(", ")))
        })
    }
}

/// Parses `--nemesis`: a comma-separated list of kinds, `all`, or `none`.
pub fn parse_nemeses(text: &str) -> Result<Vec<NemesisKind>, JepsenError> {
    let mut kinds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "none" => {}
            "all" => kinds.extend(NemesisKind::ALL),
            other => kinds.push(other.parse()?),
        }
    }
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

/// How faults are applied; what healing must undo.
#[derive(Debug)]
enum Applied {
    Killed(Vec<usize>),
    Paused(Vec<usize>),
    Partitioned,
    Clock { targets: Vec<usize>, strobe: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> },
    Removed(usize),
}

/// Largest wall-clock offset the clock nemesis sets, in seconds. Certificates are valid from an
/// hour before they were made, so a member this far behind still accepts its peers'.
const MAX_CLOCK_OFFSET_S: u64 = 600;
/// How long a membership change may take (it needs a leader with a quorum).
const MEMBERSHIP_BOUND: Duration = Duration::from_secs(30);

/// The schedule: how long faults last and how long the cluster is left alone between them.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Mean time between the end of one fault and the start of the next, and mean duration of a
    /// fault (each drawn uniformly from half to one and a half times this).
    pub interval: Duration,
}

/// Runs the nemesis until `stop` turns true, then heals whatever is in place. Returns the number
/// of faults injected.
pub async fn run(
    cluster: &mut Cluster,
    firewall: Option<&Firewall>,
    kinds: &[NemesisKind],
    schedule: Schedule,
    mut rng: Rng,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) -> Result<usize, JepsenError> {
    let mut injected = 0;
    if kinds.is_empty() {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(0);
    }
    loop {
        if sleep_or_stop(&mut stop, jitter(&mut rng, schedule.interval)).await {
            return Ok(injected);
        }
        let mut chosen = vec![*rng.pick(kinds)];
        // One time in three, when faults of another kind are enabled, a second one overlaps the
        // first: a partition while a member is down, a skewed clock on a paused leader, ...
        let others: Vec<NemesisKind> = kinds.iter().copied().filter(|k| k.base() != chosen[0].base()).collect();
        if !others.is_empty() && rng.chance(1.0 / 3.0) {
            chosen.push(*rng.pick(&others));
        }
        // A membership change goes first, while the cluster still has its quorum.
        chosen.sort_by_key(|k| k.base() != "member");
        let mut active = Vec::new();
        for kind in chosen {
            match start(cluster, firewall, kind, &mut rng, &recorder).await {
                Ok(started) => {
                    injected += 1;
                    active.push(started);
                }
                Err(err) => tracing::warn!(%err, %kind, "could not inject a fault"),
            }
        }
        if active.is_empty() {
            continue;
        }
        sleep_or_stop(&mut stop, jitter(&mut rng, schedule.interval)).await;
        // Heal in the order that lets each step succeed: the network first, then processes, and
        // a removed member last, when a quorum is there to add it back.
        active.sort_by_key(|(fault, _)| heal_order(&fault.kind));
        let mut healed = Ok(());
        for (fault, applied) in active {
            healed = healed.and(stop_fault(cluster, firewall, fault, applied, &recorder).await);
        }
        healed?;
        if *stop.borrow() {
            return Ok(injected);
        }
    }
}

/// Where a fault of this kind comes in the healing order.
fn heal_order(kind: &str) -> u8 {
    match kind {
        "partition" => 0,
        "pause" => 1,
        "kill" => 2,
        "clock" => 3,
        _ => 4,
    }
}

/// Sleeps for `duration` unless `stop` turns true first; returns true when stopped.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    *stop.borrow()
}

fn jitter(rng: &mut Rng, mean: Duration) -> Duration {
    let millis = mean.as_millis().max(2) as u64;
    Duration::from_millis(millis / 2 + rng.below(millis))
}

/// A random subset of `0..n` of size `k`.
fn subset(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut all);
    all.truncate(k);
    all.sort();
    all
}

/// The leader, or a random member when the members do not agree on one right now.
async fn leader_or_random(cluster: &Cluster, rng: &mut Rng) -> (usize, bool) {
    match cluster.agreed_leader().await {
        Some(leader) => (leader, true),
        None => (rng.below(cluster.members.len() as u64) as usize, false),
    }
}

/// Which members a kill or pause hits: one, a minority, a majority or all of them.
fn process_targets(rng: &mut Rng, n: usize) -> (Vec<usize>, &'static str) {
    let majority = n / 2 + 1;
    match rng.below(4) {
        0 => (subset(rng, n, 1), "one"),
        1 => (subset(rng, n, (n - 1) / 2).into_iter().collect::<Vec<_>>(), "minority"),
        2 => (subset(rng, n, majority), "majority"),
        _ => ((0..n).collect(), "all"),
    }
}

/// A partition as pairs of member indexes that cannot talk, and its description.
fn partition_grudge(rng: &mut Rng, n: usize, leader: Option<usize>) -> (Vec<(usize, usize)>, String) {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let isolate = |one: usize| -> (Vec<(usize, usize)>, String) {
        ((0..n).filter(|&o| o != one).map(|o| (one, o)).collect(), format!("isolated n{}", one + 1))
    };
    if let Some(leader) = leader {
        return isolate(leader);
    }
    let names = |set: &[usize]| set.iter().map(|i| format!("n{}", i + 1)).collect::<Vec<_>>().join(" ");
    let choice = if n >= 5 { rng.below(4) } else { rng.below(2) };
    match choice {
        0 => isolate(order[0]),
        1 => {
            let (minority, majority) = order.split_at(n.saturating_sub(n / 2 + 1));
            let cut = minority.iter().flat_map(|&a| majority.iter().map(move |&b| (a, b))).collect();
            (cut, format!("halves [{}] | [{}]", names(minority), names(majority)))
        }
        2 => {
            // A bridge: two halves that cannot talk, joined by one member that talks to both.
            let bridge = order[0];
            let (left, right) = order[1..].split_at((n - 1) / 2);
            let cut = left.iter().flat_map(|&a| right.iter().map(move |&b| (a, b))).collect();
            (cut, format!("bridge n{} between [{}] and [{}]", bridge + 1, names(left), names(right)))
        }
        _ => {
            // A ring: each member talks only to the members within `reach` of it, just enough for
            // each to see a majority (itself included), but no two see the same one.
            let reach = (n / 2).div_ceil(2).max(1);
            let mut cut = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    let distance = (j - i).min(n - (j - i));
                    if distance > reach {
                        cut.push((order[i], order[j]));
                    }
                }
            }
            (cut, format!("ring {}", names(&order)))
        }
    }
}

async fn start(
    cluster: &mut Cluster,
    firewall: Option<&Firewall>,
    kind: NemesisKind,
    rng: &mut Rng,
    recorder: &Recorder,
) -> Result<(Fault, Applied), JepsenError> {
    let n = cluster.members.len();
    let name = |i: &usize| format!("n{}", i + 1);
    let (targets, detail) = match kind {
        NemesisKind::Kill | NemesisKind::Pause => {
            let (targets, how) = process_targets(rng, n);
            (targets, how.to_string())
        }
        NemesisKind::KillLeader | NemesisKind::PauseLeader | NemesisKind::PartitionLeader => {
            let (leader, known) = leader_or_random(cluster, rng).await;
            (vec![leader], if known { "the leader".to_string() } else { "no agreed leader; a random member".into() })
        }
        NemesisKind::Partition => (Vec::new(), String::new()),
        NemesisKind::Clock => {
            // One member or a minority: a majority with skewed clocks is the same fault, seen
            // from the other side.
            let count = 1 + rng.below(((n - 1) / 2).max(1) as u64) as usize;
            (subset(rng, n, count), String::new())
        }
        NemesisKind::Member => {
            // One time in three the leader, whose removal forces an election.
            if rng.chance(1.0 / 3.0) {
                let (leader, known) = leader_or_random(cluster, rng).await;
                (
                    vec![leader],
                    if known { "the leader".to_string() } else { "no agreed leader; a random member".into() },
                )
            } else {
                (subset(rng, n, 1), String::new())
            }
        }
    };
    let base = kind.base();
    let mut fault = Fault { kind: base.to_string(), targets: targets.iter().map(name).collect(), detail };
    let applied = match base {
        "kill" => Applied::Killed(targets),
        "pause" => Applied::Paused(targets),
        "member" => Applied::Removed(targets[0]),
        "clock" => {
            let delta = (1 + rng.below(MAX_CLOCK_OFFSET_S)) as i64 * if rng.chance(0.5) { 1 } else { -1 };
            recorder.record(Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()), None, None);
            if rng.chance(0.5) {
                fault.detail = format!("bump {delta:+}s");
                let result = targets.iter().try_for_each(|&i| cluster.set_clock_offset(i, delta));
                return finish_start(recorder, fault, Applied::Clock { targets, strobe: None }, result);
            }
            fault.detail = format!("strobe between 0s and {delta:+}s every second");
            let files: Vec<usize> = targets.clone();
            let (stop_tx, mut stop_rx) = watch::channel(false);
            let setter = cluster.clock_setter();
            let task = tokio::spawn(async move {
                let mut skewed = false;
                loop {
                    skewed = !skewed;
                    for &i in &files {
                        if let Err(err) = setter(i, if skewed { delta } else { 0 }) {
                            tracing::warn!(%err, "setting a member's clock");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop_rx.wait_for(|s| *s) => return,
                    }
                }
            });
            let applied = Applied::Clock { targets, strobe: Some((stop_tx, task)) };
            return finish_start(recorder, fault, applied, Ok(()));
        }
        _ => {
            let leader = (kind == NemesisKind::PartitionLeader).then(|| targets[0]);
            let (cut, detail) = partition_grudge(rng, n, leader);
            let mut involved: Vec<usize> = cut.iter().flat_map(|(a, b)| [*a, *b]).collect();
            involved.sort();
            involved.dedup();
            fault.targets = involved.iter().map(name).collect();
            fault.detail = if fault.detail.is_empty() { detail } else { format!("{}: {detail}", fault.detail) };
            let firewall = firewall.ok_or_else(|| JepsenError::Fault("partitions need the firewall".into()))?;
            recorder.record(Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()), None, None);
            let ips: Vec<(IpAddr, IpAddr)> =
                cut.iter().map(|(a, b)| (cluster.members[*a].ip, cluster.members[*b].ip)).collect();
            return finish_start(recorder, fault, Applied::Partitioned, firewall.partition(&ips));
        }
    };
    recorder.record(Process::Nemesis, EventType::Invoke, Op::Start(fault.clone()), None, None);
    let result = match &applied {
        Applied::Killed(targets) => {
            let mut result = Ok(());
            for &i in targets {
                result = result.and(cluster.kill(i).await);
            }
            result
        }
        Applied::Paused(targets) => {
            let mut result = Ok(());
            for &i in targets {
                result = result.and(cluster.pause(i).await);
            }
            result
        }
        Applied::Removed(target) => cluster.remove_member(*target, MEMBERSHIP_BOUND).await,
        Applied::Partitioned | Applied::Clock { .. } => Ok(()),
    };
    finish_start(recorder, fault, applied, result)
}

fn finish_start(
    recorder: &Recorder,
    fault: Fault,
    applied: Applied,
    result: Result<(), JepsenError>,
) -> Result<(Fault, Applied), JepsenError> {
    match result {
        Ok(()) => {
            tracing::info!(kind = %fault.kind, targets = ?fault.targets, detail = %fault.detail, "fault started");
            recorder.record(Process::Nemesis, EventType::Ok, Op::Start(fault.clone()), None, None);
            Ok((fault, applied))
        }
        Err(err) => {
            // Recorded as unknown: part of the fault may be in place; healing undoes it anyway.
            recorder.record(Process::Nemesis, EventType::Info, Op::Start(fault.clone()), None, Some(err.to_string()));
            Ok((fault, applied))
        }
    }
}

async fn stop_fault(
    cluster: &mut Cluster,
    firewall: Option<&Firewall>,
    fault: Fault,
    applied: Applied,
    recorder: &Recorder,
) -> Result<(), JepsenError> {
    recorder.record(Process::Nemesis, EventType::Invoke, Op::Stop(fault.clone()), None, None);
    let result = match applied {
        Applied::Killed(targets) => targets.into_iter().try_for_each(|i| cluster.restart(i)),
        Applied::Paused(targets) => {
            let mut result = Ok(());
            for i in targets {
                result = result.and(cluster.resume(i).await);
            }
            result
        }
        Applied::Partitioned => firewall.map_or(Ok(()), Firewall::heal),
        Applied::Clock { targets, strobe } => {
            if let Some((stop, task)) = strobe {
                stop.send_replace(true);
                // The strobe's loop ends at the next select; it never blocks.
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            targets.into_iter().try_for_each(|i| cluster.set_clock_offset(i, 0))
        }
        Applied::Removed(target) => cluster.add_member(target, MEMBERSHIP_BOUND).await,
    };
    match result {
        Ok(()) => {
            tracing::info!(kind = %fault.kind, "fault healed");
            recorder.record(Process::Nemesis, EventType::Ok, Op::Stop(fault), None, None);
            Ok(())
        }
        Err(err) => {
            recorder.record(Process::Nemesis, EventType::Info, Op::Stop(fault), None, Some(err.to_string()));
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_lists_parse_with_all_and_none_and_reject_unknown_names() {
        assert_eq!(parse_nemeses("kill,partition").unwrap(), vec![NemesisKind::Kill, NemesisKind::Partition]);
        assert_eq!(parse_nemeses("none").unwrap(), vec![]);
        assert_eq!(parse_nemeses("all").unwrap().len(), NemesisKind::ALL.len());
        let err = parse_nemeses("kill,flood").unwrap_err().to_string();
        assert!(err.contains("\"flood\"") && err.contains("partition-leader"), "{err}");
    }

    #[test]
    fn every_partition_cuts_someone_off_and_leaves_a_majority_for_someone() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            for n in [3usize, 5, 7] {
                let (cut, detail) = partition_grudge(&mut rng, n, None);
                assert!(!cut.is_empty(), "seed {seed}, n {n}: {detail}");
                let reachable = |i: usize| {
                    1 + (0..n).filter(|&j| j != i && !cut.contains(&(i, j)) && !cut.contains(&(j, i))).count()
                };
                assert!((0..n).any(|i| reachable(i) > n / 2), "seed {seed}, n {n}: {detail} leaves no majority");
            }
        }
    }
}
