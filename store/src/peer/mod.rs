//! The peer protocol: how members talk to each other over their peer URLs (`keelpeer` gRPC).
//!
//! - `client`: openraft's network (append entries, votes, snapshots in bounded chunks, leadership
//!   transfer) and the calls a member makes to forward work to the leader.
//! - `server`: the service answering those calls, feeding Raft and the local member.
//!
//! API boundary: like `api`, this module is allowed to know protobuf and gRPC; payloads are
//! bincode-encoded domain and openraft types. Every request carries the protocol version and the
//! cluster id; a request from another cluster or protocol is refused.

mod client;
mod server;

use serde::{Deserialize, Serialize};

pub use client::{ForwardError, PeerNetwork, Peers};
pub use server::serve;

use crate::error::StoreError;
use crate::lease::LeaseInfo;
use crate::server::MemberInfo;

/// Version of the peer payload encoding.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest piece of a snapshot file sent in one message.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest peer message accepted: a batch of append entries may carry many large entries.
pub const MAX_PEER_MESSAGE_BYTES: usize = 256 << 20;
/// Most commands one `ProposeMany` call may carry.
pub const MAX_PROPOSALS_PER_CALL: usize = 4096;

/// A lease operation only the leader can answer (remaining TTLs are leader-local).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseRequest {
    /// Keep-alive.
    Renew {
        /// Lease id.
        id: i64,
    },
    /// Time-to-live lookup.
    TimeToLive {
        /// Lease id.
        id: i64,
        /// Include attached keys.
        keys: bool,
    },
    // Variants are only ever appended: their index is their encoding.
    /// Keep-alives a follower collected, renewed under one leadership confirmation.
    RenewMany {
        /// Lease ids.
        ids: Vec<i64>,
    },
}

/// The leader's answer to a [`LeaseRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseReply {
    /// The renewed TTL.
    Renewed {
        /// Seconds.
        ttl: i64,
    },
    /// The lease, if it exists, and its keys when asked.
    TimeToLive {
        /// The lease.
        info: Option<LeaseInfo>,
        /// Attached keys.
        keys: Vec<Vec<u8>>,
    },
    /// Per lease of a `RenewMany`, in its order: the renewed TTL or why it was not renewed.
    RenewedMany {
        /// Seconds, or the refusal (an unknown lease).
        ttls: Vec<Result<i64, StoreError>>,
    },
}

/// A membership change, decided by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member (voter, or learner).
    Add {
        /// Its peer URLs.
        peer_urls: Vec<String>,
        /// Add as a non-voting learner.
        is_learner: bool,
    },
    /// Remove a member.
    Remove {
        /// Member id.
        id: u64,
    },
    /// Change a member's peer URLs.
    Update {
        /// Member id.
        id: u64,
        /// New peer URLs.
        peer_urls: Vec<String>,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// Member id.
        id: u64,
    },
}

/// The outcome of a membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReply {
    /// The member added, for `Add`.
    pub added: Option<MemberInfo>,
    /// The members after the change.
    pub members: Vec<MemberInfo>,
}

/// What a member joining an existing cluster learns from a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster id.
    pub cluster_id: u64,
    /// The members, as the peer knows them.
    pub members: Vec<MemberInfo>,
}
