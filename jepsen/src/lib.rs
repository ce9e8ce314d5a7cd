//! Keel's chaos suite, Jepsen-style: start a real cluster of `keel store` processes (TLS on, each
//! member on its own loopback address), run a workload of client operations while a nemesis
//! injects real faults on a schedule drawn from a seed, heal, then check the recorded history
//! against a model and write `history.jsonl`, `results.json` and `report.html`.
//!
//! Layers: `run` orchestrates; `cluster` owns the member processes; `net` owns the firewall
//! rules; `nemesis` decides and applies faults; `workload` issues operations and classifies
//! outcomes; `history` records; `checker` judges; `report` draws. Checkers and the report read
//! only the history, so a saved history can be checked again without a cluster.
//!
//! Invariants: every process and firewall rule a run creates is removed before `run` returns,
//! whether the run succeeds, fails or is interrupted; a verdict of valid is given only when every
//! checker fully analysed the history.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod rng;
pub mod run;
pub mod workload;

pub use run::{TestOptions, TestOutcome, WorkloadKind, run};

/// Errors of the harness itself (as opposed to anomalies, which are results).
#[derive(Debug, thiserror::Error)]
pub enum JepsenError {
    /// The options cannot work.
    #[error("{0}")]
    Usage(String),
    /// The cluster or its certificates could not be set up.
    #[error("setting up the cluster: {0}")]
    Setup(String),
    /// A fault could not be injected or healed.
    #[error("nemesis: {0}")]
    Fault(String),
    /// The cluster did not recover after healing.
    #[error("recovery: {0}")]
    Recovery(String),
    /// Reading or writing the test's files.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Reading or writing a history.
    #[error(transparent)]
    History(#[from] history::HistoryError),
}
