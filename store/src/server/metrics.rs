//! Member gauges for the Prometheus endpoint, refreshed once a second from Raft metrics and the
//! store. Request counters and latencies are recorded by the API layer.

use std::sync::Weak;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;

use super::Member;

const REFRESH: Duration = Duration::from_secs(1);

/// Refreshes gauges until the member is dropped.
pub(super) async fn refresh(member: Weak<Member>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(m) = member.upgrade() else { return };
        let raft = m.raft.metrics().borrow_watched().clone();
        let last_index = raft.last_log_index.unwrap_or(0);
        let applied = raft.last_applied.as_ref().map_or(0, |id| id.index());
        let committed = raft.local_committed.as_ref().map_or(0, |id| id.index());
        metrics::gauge!("keel_raft_term").set(raft.current_term as f64);
        metrics::gauge!("keel_raft_last_log_index").set(last_index as f64);
        metrics::gauge!("keel_raft_committed_index").set(committed as f64);
        metrics::gauge!("keel_raft_applied_index").set(applied as f64);
        metrics::gauge!("keel_raft_apply_lag_entries").set(committed.saturating_sub(applied) as f64);
        metrics::gauge!("keel_raft_is_leader").set(if m.is_leader() { 1.0 } else { 0.0 });
        let core = m.core();
        metrics::gauge!("keel_db_size_bytes").set(core.backend().size_bytes() as f64);
        metrics::gauge!("keel_db_size_in_use_bytes").set(core.backend().size_in_use_bytes() as f64);
        metrics::gauge!("keel_mvcc_revision").set(core.mvcc().current_revision() as f64);
        metrics::gauge!("keel_mvcc_compact_revision").set(core.mvcc().compacted_revision() as f64);
        metrics::gauge!("keel_watchers").set(core.hub().watcher_count() as f64);
        metrics::gauge!("keel_leases").set(core.lessor().len() as f64);
    }
}
