//! Checkers: each reads a history and says whether it is valid for its model, naming every
//! anomaly with the minimal operations that prove it.
//!
//! Invariant: a checker never reports `valid: true` for a history it did not fully analyse; when
//! it gives up (a search bound reached) it says `unknown`.

pub mod append;
pub mod lease;
pub mod register;
pub mod watch;

use serde::{Deserialize, Serialize};

use crate::history::Event;

/// A checker's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    /// No anomaly: the history is consistent with the model.
    Valid,
    /// At least one anomaly was found.
    Invalid,
    /// The analysis was cut short (a bound was reached); nothing is claimed.
    Unknown,
}

impl Validity {
    /// Combines verdicts: any invalid makes the whole invalid, else any unknown makes it unknown.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::Valid,
        }
    }
}

/// One anomaly and the operations that prove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The anomaly's name, e.g. `nonlinearizable`, `G1c`, `G-single`, `lost-update`.
    pub kind: String,
    /// What is wrong, in a sentence or two, naming the operations by history index.
    pub explanation: String,
    /// The minimal operations that prove it: completions (or invocations of unknown outcome), in
    /// history order, except for dependency cycles, which list their transactions in cycle order.
    pub ops: Vec<Event>,
}

/// What a checker concluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The checker's name.
    pub checker: String,
    /// The verdict.
    pub valid: Validity,
    /// The anomalies found (empty when valid). Bounded: at most `MAX_ANOMALIES` per kind.
    pub anomalies: Vec<Anomaly>,
    /// Counts worth showing (operations checked, keys, ...), by name.
    pub stats: serde_json::Map<String, serde_json::Value>,
}

impl CheckResult {
    /// The result of checker `checker` for a history it cannot read (its events break the pairing
    /// rules): `unknown`, with the reason in `stats.error`.
    pub fn unreadable(checker: &str, err: &crate::history::HistoryError) -> Self {
        let mut stats = serde_json::Map::new();
        stats.insert("error".into(), serde_json::Value::from(err.to_string()));
        Self { checker: checker.into(), valid: Validity::Unknown, anomalies: Vec::new(), stats }
    }
}

/// The most anomalies of one kind a checker reports; more are counted in `stats`.
pub const MAX_ANOMALIES: usize = 8;
