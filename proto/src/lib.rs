//! Keel's protobuf wire types and gRPC service stubs.
//!
//! `etcdserverpb`, `mvccpb`, `authpb`, `v3lockpb` and `v3electionpb` are etcd's v3 client API,
//! written by Keel in `proto/etcd/` so that unmodified etcd clients (etcdctl, the `etcd-client`
//! crate, Kubernetes) talk to Keel.
//! `keelpeer` is Keel's own member-to-member API (`proto/keel/peer.proto`); `keeljournal` streams
//! the committed log to `keel ctl backup --follow` (`proto/keel/journal.proto`).
//!
//! Invariant: only API-layer code (gRPC servers and clients) depends on this crate; the store's
//! engine, Raft log and state machine use their own domain types.

/// etcd's key-value record and watch event (`mvccpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's users, roles and permissions (`authpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth (`etcdserverpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service (`v3lockpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service (`v3electionpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Keel's journal API (`keeljournal`): the committed log for point-in-time backups.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod keeljournal {
    tonic::include_proto!("keeljournal");
}

/// Keel's member-to-member API (`keelpeer`): Raft traffic and requests forwarded to the leader.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod keelpeer {
    tonic::include_proto!("keelpeer");
}
