//! The MVCC domain: key-value versions, events, and the KV requests and responses as the store
//! understands them. These types travel in the Raft log (serde), so changing them changes the log
//! format: bump `FORMAT_VERSION` in `crate::format` when an existing field changes meaning.
//!
//! They mirror etcd's `etcdserverpb` semantics but know nothing of protobuf; the gRPC layer converts.

use serde::{Deserialize, Serialize};

/// A revision: `main` increments once per mutating request, `sub` orders changes within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Revision {
    /// The store-wide revision.
    pub main: i64,
    /// The position of the change inside its request, from 0.
    pub sub: i64,
}

/// One version of one key, as clients see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the key's last creation.
    pub create_revision: i64,
    /// Revision of the key's last modification.
    pub mod_revision: i64,
    /// Modifications since creation (1 after creation).
    pub version: i64,
    /// The value.
    #[serde(with = "crate::serde_bytes")]
    pub value: Vec<u8>,
    /// Attached lease, 0 for none.
    pub lease: i64,
}

/// Whether an event wrote or deleted its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete; the event's `kv` carries only the key and the deletion's `mod_revision`.
    Delete,
}

/// One change, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new version (put) or the deleted key (delete).
    pub kv: KeyValue,
    /// The version before this event, when known and requested.
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// True for the put that created the key (its first version).
    pub fn is_create(&self) -> bool {
        self.kind == EventKind::Put && self.kv.create_revision == self.kv.mod_revision
    }
}

/// The end of a key range, decoded from etcd's `range_end` convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// Empty `range_end`: only the key itself.
    Single,
    /// `range_end == "\0"`: every key at or after the key.
    Unbounded,
    /// Every key in `[key, end)`.
    Before(Vec<u8>),
}

impl RangeEnd {
    /// Decodes etcd's `range_end` bytes.
    pub fn from_etcd(range_end: &[u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end.to_vec()),
        }
    }

    /// True when `candidate` lies in the range starting at `key`.
    pub fn contains(&self, key: &[u8], candidate: &[u8]) -> bool {
        match self {
            RangeEnd::Single => candidate == key,
            RangeEnd::Unbounded => candidate >= key,
            RangeEnd::Before(end) => candidate >= key && candidate < &end[..],
        }
    }
}

/// Sort order of a range result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (no sorting requested).
    #[default]
    None,
    /// Ascending by the sort target.
    Ascend,
    /// Descending by the sort target.
    Descend,
}

/// What a range result is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// A range read (etcd `RangeRequest`, minus the read-consistency flag, which is an API concern).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// Start key.
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
    /// etcd-style range end (see [`RangeEnd::from_etcd`]).
    #[serde(with = "crate::serde_bytes")]
    pub range_end: Vec<u8>,
    /// Maximum keys returned, 0 for no limit.
    pub limit: i64,
    /// Revision to read at; ≤ 0 for the latest.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop keys modified before this revision (0: no bound).
    pub min_mod_revision: i64,
    /// Drop keys modified after this revision (0: no bound).
    pub max_mod_revision: i64,
    /// Drop keys created before this revision (0: no bound).
    pub min_create_revision: i64,
    /// Drop keys created after this revision (0: no bound).
    pub max_create_revision: i64,
}

/// The result of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The store revision when the read was served (not the revision read at).
    pub revision: i64,
    /// The keys.
    pub kvs: Vec<KeyValue>,
    /// True when `limit` cut the result short.
    pub more: bool,
    /// Number of keys in the range at the read revision, ignoring `limit`.
    pub count: i64,
}

/// A put (etcd `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// Key.
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
    /// Value.
    #[serde(with = "crate::serde_bytes")]
    pub value: Vec<u8>,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous version.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

/// The result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Revision of the write.
    pub revision: i64,
    /// The previous version, when requested and present.
    pub prev_kv: Option<KeyValue>,
}

/// A range delete (etcd `DeleteRangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// Start key.
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
    /// etcd-style range end.
    #[serde(with = "crate::serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted versions.
    pub prev_kv: bool,
}

/// The result of a range delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Store revision after the delete (unchanged when nothing was deleted).
    pub revision: i64,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted versions, when requested.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a compare looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version.
    Version(i64),
    /// The create revision.
    Create(i64),
    /// The mod revision.
    Mod(i64),
    /// The value.
    Value(#[serde(with = "crate::serde_bytes")] Vec<u8>),
    /// The lease.
    Lease(i64),
}

/// How a compare relates the stored field to the operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// Stored field greater than the operand.
    Greater,
    /// Stored field less than the operand.
    Less,
    /// Not equal.
    NotEqual,
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// Field and operand.
    pub target: CompareTarget,
    /// Key (or range start).
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
    /// etcd-style range end: the compare must hold for every key in the range.
    #[serde(with = "crate::serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A range delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The result of one transaction operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Result of a read.
    Range(RangeResponse),
    /// Result of a put.
    Put(PutResponse),
    /// Result of a range delete.
    DeleteRange(DeleteRangeResponse),
    /// Result of a nested transaction.
    Txn(TxnResponse),
}

/// A transaction: if every compare holds, run `success`, else `failure`; all in one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Guards, ANDed.
    pub compare: Vec<Compare>,
    /// Operations when every guard holds.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

impl TxnRequest {
    /// True when no branch (at any depth) writes.
    pub fn is_read_only(&self) -> bool {
        fn ops_read_only(ops: &[RequestOp]) -> bool {
            ops.iter().all(|op| match op {
                RequestOp::Range(_) => true,
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => false,
                RequestOp::Txn(txn) => txn.is_read_only(),
            })
        }
        ops_read_only(&self.success) && ops_read_only(&self.failure)
    }
}

/// The result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Store revision after the transaction.
    pub revision: i64,
    /// True when the success branch ran.
    pub succeeded: bool,
    /// One response per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
}
