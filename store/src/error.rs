//! The errors a client request can end with, independent of any wire protocol.
//!
//! `Display` texts are etcd's messages without the `etcdserver: ` prefix; the API layer's single
//! mapping table (`api::status`) adds the prefix and the gRPC code etcd uses for each.
//!
//! The same type is what the state machine returns for a refused log entry (inside
//! `raft::CommandResult`), so it is serializable; refusals are deterministic, so every member
//! refuses an entry with the same error.

use serde::{Deserialize, Serialize};

use crate::lease::LeaseError;
use crate::mvcc::MvccError;

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// A request without a key.
    #[error("key is not provided")]
    EmptyKey,
    /// `ignore_value`/`ignore_lease` on a missing key, or an empty transaction operation.
    #[error("key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("lease is provided")]
    LeaseProvided,
    /// More than `--max-txn-ops` operations in a transaction.
    #[error("too many operations in txn request")]
    TooManyOps,
    /// A transaction writes one key twice.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A request above `--max-request-bytes`.
    #[error("request is too large")]
    RequestTooLarge,
    /// The revision was compacted.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The compaction revision.
        compact_revision: i64,
    },
    /// The revision is in the future.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// No such lease.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// The lease id is taken.
    #[error("lease already exists")]
    LeaseExists,
    /// The TTL is above the maximum.
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// No member leads.
    #[error("no leader")]
    NoLeader,
    /// This member does not lead and cannot serve the request.
    #[error("not leader")]
    NotLeader,
    /// Leadership changed while the request was in flight; its outcome is unknown.
    #[error("leader changed")]
    LeaderChanged,
    /// The request did not complete in time; its outcome is unknown.
    #[error("request timed out")]
    Timeout,
    /// The member is shutting down.
    #[error("server stopped")]
    Stopped,
    /// No such member.
    #[error("member not found")]
    MemberNotFound,
    /// Malformed peer URLs in a membership change.
    #[error("given member URLs are invalid")]
    MemberBadUrls,
    /// A peer URL another member already uses.
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    /// Promotion of a member that is not a learner.
    #[error("can only promote a learner member")]
    MemberNotLearner,
    /// Promotion of a learner that is far behind the leader.
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// Leadership transfer to a member that cannot lead.
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// Another membership change is in progress.
    #[error("re-configuration failed: another membership change is in progress")]
    MembershipChangeInProgress,
    /// `AuthEnable` without a `root` user.
    #[error("root user does not exist")]
    RootUserNotExist,
    /// `AuthEnable` while `root` lacks the root role.
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// `UserAdd` of an existing name.
    #[error("user name already exists")]
    UserAlreadyExist,
    /// No user: an empty name, or a request without credentials while auth is on.
    #[error("user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("user name not found")]
    UserNotFound,
    /// `RoleAdd` of an existing name.
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("role name is empty")]
    RoleEmpty,
    /// Wrong user name or password.
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// `RoleGrantPermission` without a permission.
    #[error("permission not given")]
    PermissionNotGiven,
    /// The caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// `UserRevokeRole` of a role the user does not have.
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// `RoleRevokePermission` of a grant the role does not have.
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// An auth operation that needs auth on.
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is malformed, expired, forged, or for a changed user.
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock administrators out (deleting root, ...), or a bad grant range.
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// The NOSPACE alarm is raised (or this write would raise it): writes that grow the store
    /// are refused until space is freed and the alarm disarmed.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// The operation is not available in this build or configuration.
    #[error("{0}")]
    Unsupported(String),
    /// Storage or another internal failure.
    #[error("internal error: {0}")]
    Internal(String),
    /// A lock or election request without a name.
    #[error("lock or election name is not provided")]
    EmptyName,
    /// A Lock or Campaign without a lease: locks and candidacies live on a lease.
    #[error("lease is not provided: a lock or candidacy must be attached to a lease")]
    LeaseNotProvided,
    /// Unlock of a key that does not exist (never held, already released, or its lease ended).
    #[error("lock key {0:?} is not held")]
    LockNotHeld(String),
    /// A key that is not `NAME/<lease id in hex>` attached to that lease.
    #[error("{0:?} is not a lock or election key (NAME/<lease id in hex>, attached to that lease)")]
    NotLockKey(String),
    /// Proclaim or Resign with a candidacy that no longer exists (or never did).
    #[error("election: not leader")]
    ElectionNotLeader,
    /// No candidacy exists in the election.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// The waiter's key vanished while it waited: its lease expired or was revoked.
    #[error("session expired: the lease was revoked or expired while waiting")]
    SessionExpired,
    /// Too many Lock, Campaign or Observe calls are waiting on this member.
    #[error("too many lock and election waiters on this member")]
    TooManyWaiters,
    /// A journal follower asked for log entries this member no longer holds (purged behind a Raft
    /// snapshot); it needs a new base snapshot.
    #[error("journal: log entries from index {requested} are purged on this member (first held: {first_held})")]
    LogPurged {
        /// The first index asked for.
        requested: u64,
        /// The first index this member holds.
        first_held: u64,
    },
}

impl From<MvccError> for StoreError {
    fn from(err: MvccError) -> Self {
        match err {
            MvccError::Compacted { compact_revision } => StoreError::Compacted { compact_revision },
            MvccError::FutureRevision => StoreError::FutureRevision,
            MvccError::KeyNotFound => StoreError::KeyNotFound,
            MvccError::LeaseNotFound => StoreError::LeaseNotFound,
            other => StoreError::Internal(other.to_string()),
        }
    }
}

impl From<LeaseError> for StoreError {
    fn from(err: LeaseError) -> Self {
        match err {
            LeaseError::NotFound => StoreError::LeaseNotFound,
            LeaseError::Exists => StoreError::LeaseExists,
            LeaseError::TtlTooLarge => StoreError::LeaseTtlTooLarge,
            LeaseError::NotPrimary => StoreError::NotLeader,
            LeaseError::Mvcc(err) => err.into(),
            LeaseError::Backend(err) => StoreError::Internal(err.to_string()),
        }
    }
}
