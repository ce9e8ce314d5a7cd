//! The one table mapping store errors to gRPC statuses, with etcd's codes and messages
//! (`etcdserver: ` + the error's text), so etcd clients recognise and retry them as they do etcd's.

use tonic::{Code, Status};

use crate::error::StoreError;

/// The gRPC code etcd uses for each error.
pub fn code(err: &StoreError) -> Code {
    match err {
        StoreError::EmptyKey
        | StoreError::KeyNotFound
        | StoreError::ValueProvided
        | StoreError::LeaseProvided
        | StoreError::TooManyOps
        | StoreError::DuplicateKey
        | StoreError::RequestTooLarge
        | StoreError::MemberBadUrls
        | StoreError::UserEmpty
        | StoreError::RoleEmpty
        | StoreError::AuthFailed
        | StoreError::PermissionNotGiven
        | StoreError::InvalidAuthMgmt
        | StoreError::EmptyName
        | StoreError::LeaseNotProvided
        | StoreError::NotLockKey(_) => Code::InvalidArgument,
        StoreError::Compacted { .. }
        | StoreError::FutureRevision
        | StoreError::LeaseTtlTooLarge
        | StoreError::LogPurged { .. } => Code::OutOfRange,
        StoreError::LeaseNotFound | StoreError::MemberNotFound | StoreError::ElectionNoLeader => Code::NotFound,
        StoreError::LeaseExists
        | StoreError::NotLeader
        | StoreError::PeerUrlExists
        | StoreError::MemberNotLearner
        | StoreError::LearnerNotReady
        | StoreError::BadLeaderTransferee
        | StoreError::MembershipChangeInProgress
        | StoreError::RootUserNotExist
        | StoreError::RootRoleNotExist
        | StoreError::UserAlreadyExist
        | StoreError::UserNotFound
        | StoreError::RoleAlreadyExist
        | StoreError::RoleNotFound
        | StoreError::RoleNotGranted
        | StoreError::PermissionNotGranted
        | StoreError::AuthNotEnabled
        | StoreError::LockNotHeld(_)
        | StoreError::ElectionNotLeader
        | StoreError::SessionExpired => Code::FailedPrecondition,
        StoreError::TooManyWaiters | StoreError::NoSpace => Code::ResourceExhausted,
        StoreError::PermissionDenied => Code::PermissionDenied,
        StoreError::InvalidAuthToken => Code::Unauthenticated,
        StoreError::NoLeader | StoreError::LeaderChanged | StoreError::Timeout | StoreError::Stopped => {
            Code::Unavailable
        }
        StoreError::Unsupported(_) => Code::Unimplemented,
        StoreError::Internal(_) => Code::Internal,
    }
}

/// The gRPC status for an error.
pub fn to_status(err: &StoreError) -> Status {
    Status::new(code(err), format!("etcdserver: {err}"))
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        to_status(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_etcd() {
        let cases = [
            (StoreError::EmptyKey, Code::InvalidArgument, "etcdserver: key is not provided"),
            (
                StoreError::Compacted { compact_revision: 3 },
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (StoreError::FutureRevision, Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"),
            (StoreError::LeaseNotFound, Code::NotFound, "etcdserver: requested lease not found"),
            (StoreError::DuplicateKey, Code::InvalidArgument, "etcdserver: duplicate key given in txn request"),
            (StoreError::RequestTooLarge, Code::InvalidArgument, "etcdserver: request is too large"),
            (StoreError::NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (StoreError::NoSpace, Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"),
            (StoreError::LeaseExists, Code::FailedPrecondition, "etcdserver: lease already exists"),
            (StoreError::LeaseTtlTooLarge, Code::OutOfRange, "etcdserver: too large lease TTL"),
            (StoreError::MemberNotFound, Code::NotFound, "etcdserver: member not found"),
            (StoreError::MemberBadUrls, Code::InvalidArgument, "etcdserver: given member URLs are invalid"),
            (StoreError::PeerUrlExists, Code::FailedPrecondition, "etcdserver: Peer URLs already exists"),
            (StoreError::MemberNotLearner, Code::FailedPrecondition, "etcdserver: can only promote a learner member"),
            (
                StoreError::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (StoreError::PermissionDenied, Code::PermissionDenied, "etcdserver: permission denied"),
            (StoreError::InvalidAuthToken, Code::Unauthenticated, "etcdserver: invalid auth token"),
            (StoreError::UserEmpty, Code::InvalidArgument, "etcdserver: user name is empty"),
            (
                StoreError::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (StoreError::RootUserNotExist, Code::FailedPrecondition, "etcdserver: root user does not exist"),
            (StoreError::AuthNotEnabled, Code::FailedPrecondition, "etcdserver: authentication is not enabled"),
            (StoreError::ElectionNotLeader, Code::FailedPrecondition, "etcdserver: election: not leader"),
            (StoreError::ElectionNoLeader, Code::NotFound, "etcdserver: election: no leader"),
            (
                StoreError::LockNotHeld("l/1".into()),
                Code::FailedPrecondition,
                "etcdserver: lock key \"l/1\" is not held",
            ),
        ];
        for (err, code, message) in cases {
            let status = to_status(&err);
            assert_eq!(status.code(), code, "{err:?}");
            assert_eq!(status.message(), message);
        }
    }
}
