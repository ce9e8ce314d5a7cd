//! Alarms: conditions a member raised that change what the whole cluster accepts (etcd's
//! `AlarmRequest`). `NOSPACE` — a member's data would outgrow `--quota-backend-bytes` — makes
//! every member refuse writes that grow the store until an operator frees space and disarms it.
//!
//! Invariants: alarms are state-machine state, changed only by applying [`crate::raft::Command::Alarm`]
//! entries, so every member refuses the same entries; which commands an alarm refuses depends only on
//! the command ([`grows_store`]), never on a member's local size.

use serde::{Deserialize, Serialize};

use crate::mvcc::{RequestOp, TxnRequest};
use crate::raft::Command;

/// An alarm type, numbered as etcd's `AlarmType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// A member's data would outgrow its quota: writes that grow the store are refused.
    NoSpace,
    /// A member found its data differs from the others'.
    Corrupt,
}

impl AlarmKind {
    /// etcd's `AlarmType` number (`NONE` = 0).
    pub fn number(self) -> i32 {
        match self {
            AlarmKind::NoSpace => 1,
            AlarmKind::Corrupt => 2,
        }
    }

    /// The alarm with etcd's `AlarmType` number, if any (`NONE`, 0, is no alarm).
    pub fn from_number(number: i32) -> Option<AlarmKind> {
        match number {
            1 => Some(AlarmKind::NoSpace),
            2 => Some(AlarmKind::Corrupt),
            _ => None,
        }
    }

    /// etcd's name (`NOSPACE`, `CORRUPT`).
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// One raised alarm: which member raised which alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member that raised it.
    pub member: u64,
    /// The alarm.
    pub kind: AlarmKind,
}

impl std::fmt::Display for AlarmMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // etcd's Status `errors` and etcdctl's `alarm list` print alarms this way.
        write!(f, "memberID:{} alarm:{}", self.member, self.kind.name())
    }
}

/// Raise or clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    /// Raise the alarm (a no-op when it is raised already).
    Activate,
    /// Clear the alarm (a no-op when it is not raised).
    Deactivate,
}

/// True when applying `command` may add data: a put, a transaction with a put in any branch at any
/// depth, or a lease grant — what etcd refuses while NOSPACE is raised. Deletes, compactions, lease
/// revokes and auth changes are still accepted, so an operator can free space.
pub fn grows_store(command: &Command) -> bool {
    fn ops_put(ops: &[RequestOp]) -> bool {
        ops.iter().any(|op| match op {
            RequestOp::Put(_) => true,
            RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
            RequestOp::Txn(txn) => txn_puts(txn),
        })
    }
    fn txn_puts(txn: &TxnRequest) -> bool {
        ops_put(&txn.success) || ops_put(&txn.failure)
    }
    match command {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => txn_puts(txn),
        Command::AsUser { command, .. } => grows_store(command),
        _ => false,
    }
}

/// What a command adds at most, in bytes, for the quota check before proposing (etcd's cost:
/// keys and values written, plus a small per-entry overhead).
pub fn cost(command: &Command) -> u64 {
    /// Index and revision records per written key.
    const PER_KEY_OVERHEAD: u64 = 64;
    fn ops_cost(ops: &[RequestOp]) -> u64 {
        ops.iter()
            .map(|op| match op {
                RequestOp::Put(put) => (put.key.len() + put.value.len()) as u64 + PER_KEY_OVERHEAD,
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => 0,
                RequestOp::Txn(txn) => txn_cost(txn),
            })
            .sum()
    }
    fn txn_cost(txn: &TxnRequest) -> u64 {
        // Only one branch runs.
        ops_cost(&txn.success).max(ops_cost(&txn.failure))
    }
    match command {
        Command::Put(put) => (put.key.len() + put.value.len()) as u64 + PER_KEY_OVERHEAD,
        Command::LeaseGrant { .. } => PER_KEY_OVERHEAD,
        Command::Txn(txn) => txn_cost(txn),
        Command::AsUser { command, .. } => cost(command),
        _ => 0,
    }
}
