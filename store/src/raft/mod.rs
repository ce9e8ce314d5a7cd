//! Raft: the replicated log every state change goes through, built on openraft.
//!
//! - [`Command`] is what a log entry carries; its [`CommandResult`] is what applying it returned.
//! - `log_store`: the Raft log and vote, fsynced before openraft is told they are durable; the
//!   entries in `segments` files of their own (RocksDB members) or in the backend.
//! - `state_machine`: deterministic apply into MVCC, leases and watches, with the applied log id written
//!   in the same batch as the data; snapshots for log compaction and lagging members.
//!
//! Invariant: applying the same log to the same snapshot yields the same state on every member; nothing
//! in apply reads the clock, randomness or member-local configuration.

mod log_store;
mod segments;
pub mod snapshot;
mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use snapshot::{PARTIAL_SUFFIX as PARTIAL_SNAPSHOT_SUFFIX, SnapshotFile, name as snapshot_name};
pub use state_machine::{MemberAttributes, RevisionLimitReached, StateMachine, StoreCore};

use crate::alarm::{AlarmAction, AlarmMember};
use crate::auth::AuthOp;
use crate::error::StoreError;
use crate::mvcc::{DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse};

/// A member as recorded in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Human-readable name (`--name`).
    pub name: String,
    /// URLs peers use to reach this member.
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// A state change, as recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A put.
    Put(PutRequest),
    /// A range delete.
    DeleteRange(DeleteRangeRequest),
    /// A transaction with at least one write.
    Txn(TxnRequest),
    /// Discard history below a revision.
    Compact {
        /// The compaction revision.
        revision: i64,
    },
    /// Create a lease (the id is chosen before proposing, so apply is deterministic).
    LeaseGrant {
        /// Lease id.
        id: i64,
        /// Requested TTL in seconds.
        ttl: i64,
    },
    /// Revoke a lease at a client's request.
    LeaseRevoke {
        /// Lease id.
        id: i64,
    },
    /// Revoke leases the leader found expired; ids no longer present are skipped.
    LeaseExpire {
        /// Lease ids.
        ids: Vec<i64>,
    },
    /// Record a member's client URLs (published by the member when it starts).
    PublishMember {
        /// Member id.
        id: u64,
        /// Member name.
        name: String,
        /// Client URLs.
        client_urls: Vec<String>,
    },
    // Variants are only ever appended: their index is their encoding in existing logs.
    /// Change users, roles or the auth switch.
    Auth(AuthOp),
    /// `command`, on behalf of an authenticated user: apply checks the user's permissions against
    /// the auth state at this log position. Commands without it act as no user, which auth (when
    /// on) refuses wherever a user is needed.
    AsUser {
        /// The user the proposing member authenticated.
        user: String,
        /// The command (never itself `AsUser`).
        command: Box<Command>,
    },
    /// Raise or clear an alarm (`NOSPACE` raised by a member over its quota, cleared by an
    /// operator's disarm). While NOSPACE is raised, commands that grow the store are refused.
    Alarm {
        /// Raise or clear.
        action: AlarmAction,
        /// The alarm and the member it is for.
        alarm: AlarmMember,
    },
}

impl Command {
    /// `command` on behalf of `caller` (unchanged when there is no caller: auth off, or no
    /// credentials).
    pub fn as_user(caller: Option<&str>, command: Command) -> Command {
        match caller {
            Some(user) => Command::AsUser { user: user.to_string(), command: Box::new(command) },
            None => command,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(p) => write!(f, "put {:?}", String::from_utf8_lossy(&p.key)),
            Command::DeleteRange(d) => write!(f, "delete {:?}", String::from_utf8_lossy(&d.key)),
            Command::Txn(t) => write!(f, "txn ({} compares)", t.compare.len()),
            Command::Compact { revision } => write!(f, "compact {revision}"),
            Command::LeaseGrant { id, ttl } => write!(f, "lease grant {id:x} ttl {ttl}"),
            Command::LeaseRevoke { id } => write!(f, "lease revoke {id:x}"),
            Command::LeaseExpire { ids } => write!(f, "lease expire ({} leases)", ids.len()),
            Command::PublishMember { id, .. } => write!(f, "publish member {id:x}"),
            Command::Auth(op) => write!(f, "{}", op.describe()),
            Command::AsUser { user, command } => write!(f, "{command} as {user:?}"),
            Command::Alarm { action, alarm } => write!(f, "alarm {action:?} {alarm}"),
        }
    }
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// A blank or membership entry.
    None,
    /// Result of a put.
    Put(PutResponse),
    /// Result of a range delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a transaction.
    Txn(TxnResponse),
    /// A compaction was recorded.
    Compact {
        /// Store revision.
        revision: i64,
    },
    /// A lease was granted.
    LeaseGrant {
        /// Lease id.
        id: i64,
        /// Granted TTL.
        ttl: i64,
        /// Store revision.
        revision: i64,
    },
    /// A lease was revoked, or expired leases were.
    LeaseRevoke {
        /// Store revision.
        revision: i64,
    },
    /// A member's attributes were recorded.
    MemberPublished,
    /// An auth change was applied (or was a no-op, like a repeated enable).
    Auth {
        /// Store revision.
        revision: i64,
    },
    /// An alarm change was applied.
    Alarm {
        /// The alarm raised or cleared; empty when the change was a no-op.
        changed: Vec<AlarmMember>,
    },
}

/// The outcome of applying one command: a response, or the deterministic refusal of the entry
/// (which changed nothing).
pub type CommandResult = Result<CommandResponse, StoreError>;

openraft::declare_raft_types!(
    /// Keel's Raft type configuration: member ids are `u64`, members carry a name and peer URLs.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        Node = MemberNode,
);

/// A Raft log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A Raft vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership with the log id that set it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// The Raft handle of a member.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Encodes a value for the backend with bincode's standard configuration.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}

/// Decodes a value written by [`encode`], rejecting trailing bytes.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
    if read != bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} trailing bytes after an encoded value", bytes.len() - read),
        ));
    }
    Ok(value)
}

/// A small deterministic generator for the randomized tests of the log stores; a failing check
/// prints the seed it started from.
#[cfg(test)]
pub(crate) struct Lcg(pub(crate) u64);

#[cfg(test)]
impl Lcg {
    /// The next number below `bound` (0 when `bound` is 0).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound.max(1)
    }
}
