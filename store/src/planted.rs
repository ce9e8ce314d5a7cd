//! Planted bugs: known ways to be wrong, compiled in only with the test-only `planted-bugs`
//! feature and switched on per process by `KEEL_PLANTED_BUGS` (comma-separated names), so that
//! the chaos suite can show it finds each of them.
//!
//! Invariants: without the feature `active` is a constant `false` and every planted branch is
//! dead code the compiler removes; the feature cannot be built with optimisations on (release
//! builds), so a released binary can never carry a planted bug.

#[cfg(all(feature = "planted-bugs", not(debug_assertions)))]
compile_error!("the planted-bugs feature is for test builds only and cannot be built with optimisations");

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Linearizable reads are served from local state without confirming leadership through a
    /// quorum (the bug etcd 0.4 had): a partitioned member answers with stale data.
    StaleRead,
    /// Log appends are acknowledged as durable without being made so: the log's segment files
    /// get the records only once a megabyte waits and never sync them, and buffered RocksDB
    /// writes (the log of the in-memory layout, applied entries) skip RocksDB's write-ahead log,
    /// so a killed member forgets entries it acknowledged.
    AckBeforeFsync,
    /// Live watch delivery silently skips every revision divisible by 13 (watchers catching up
    /// from storage still get it), as a hub that loses an event under load would.
    SkipWatchEvent,
    /// A keep-alive renews a lease for only a quarter of its TTL while answering the full TTL, as
    /// a leader whose timer ran four times too fast would: leases kept alive expire.
    ShortKeepAlive,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [PlantedBug; 4] =
        [PlantedBug::StaleRead, PlantedBug::AckBeforeFsync, PlantedBug::SkipWatchEvent, PlantedBug::ShortKeepAlive];

    /// The bug named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|bug| bug.name() == name)
    }

    /// The bug's name in `KEEL_PLANTED_BUGS`.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::StaleRead => "stale-read",
            PlantedBug::AckBeforeFsync => "ack-before-fsync",
            PlantedBug::SkipWatchEvent => "skip-watch-event",
            PlantedBug::ShortKeepAlive => "short-keep-alive",
        }
    }
}

/// True when `bug` is compiled in and switched on for this process.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: PlantedBug) -> bool {
    static ACTIVE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let active = ACTIVE.get_or_init(|| {
        let names: Vec<String> = std::env::var("KEEL_PLANTED_BUGS")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !names.is_empty() {
            tracing::warn!(?names, "PLANTED BUGS ARE ON: this member is deliberately wrong");
        }
        names
    });
    active.iter().any(|name| name == bug.name())
}

/// True when `bug` is compiled in and switched on for this process: never, in this build.
#[cfg(not(feature = "planted-bugs"))]
pub const fn active(_bug: PlantedBug) -> bool {
    false
}
