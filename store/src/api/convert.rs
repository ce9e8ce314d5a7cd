//! Conversions between etcd's protobuf messages and the store's domain types. Pure functions; the
//! only place that knows both sides.

use keel_proto::etcdserverpb as pb;
use keel_proto::mvccpb;

use crate::error::StoreError;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event, EventKind, KeyValue,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};

/// A header with only the revision set, as etcd fills the responses nested in a transaction.
fn inner_header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader { revision, ..Default::default() })
}

/// Domain key-value to protobuf.
pub fn kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Domain event to protobuf.
pub fn event(event: Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv(event.kv)),
        prev_kv: event.prev_kv.map(kv),
    }
}

/// Protobuf range request to domain.
pub fn range_request(req: pb::RangeRequest) -> RangeRequest {
    RangeRequest {
        key: req.key,
        range_end: req.range_end,
        limit: req.limit,
        revision: req.revision,
        sort_order: match pb::range_request::SortOrder::try_from(req.sort_order) {
            Ok(pb::range_request::SortOrder::Ascend) => SortOrder::Ascend,
            Ok(pb::range_request::SortOrder::Descend) => SortOrder::Descend,
            _ => SortOrder::None,
        },
        sort_target: match pb::range_request::SortTarget::try_from(req.sort_target) {
            Ok(pb::range_request::SortTarget::Version) => SortTarget::Version,
            Ok(pb::range_request::SortTarget::Create) => SortTarget::Create,
            Ok(pb::range_request::SortTarget::Mod) => SortTarget::Mod,
            Ok(pb::range_request::SortTarget::Value) => SortTarget::Value,
            _ => SortTarget::Key,
        },
        keys_only: req.keys_only,
        count_only: req.count_only,
        min_mod_revision: req.min_mod_revision,
        max_mod_revision: req.max_mod_revision,
        min_create_revision: req.min_create_revision,
        max_create_revision: req.max_create_revision,
    }
}

/// Protobuf put request to domain.
pub fn put_request(req: pb::PutRequest) -> PutRequest {
    PutRequest {
        key: req.key,
        value: req.value,
        lease: req.lease,
        prev_kv: req.prev_kv,
        ignore_value: req.ignore_value,
        ignore_lease: req.ignore_lease,
    }
}

/// Protobuf delete request to domain.
pub fn delete_request(req: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest { key: req.key, range_end: req.range_end, prev_kv: req.prev_kv }
}

fn compare(c: pb::Compare) -> Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result) {
        Ok(R::Greater) => CompareResult::Greater,
        Ok(R::Less) => CompareResult::Less,
        Ok(R::NotEqual) => CompareResult::NotEqual,
        _ => CompareResult::Equal,
    };
    // etcd reads the operand matching the target and treats a missing one as zero/empty.
    let int = |u: &Option<U>| match u {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    let target = match T::try_from(c.target) {
        Ok(T::Create) => CompareTarget::Create(int(&c.target_union)),
        Ok(T::Mod) => CompareTarget::Mod(int(&c.target_union)),
        Ok(T::Value) => CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
        Ok(T::Lease) => CompareTarget::Lease(int(&c.target_union)),
        _ => CompareTarget::Version(int(&c.target_union)),
    };
    Compare { result, target, key: c.key, range_end: c.range_end }
}

fn request_op(op: pb::RequestOp) -> Result<RequestOp, StoreError> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(RequestOp::Range(range_request(r))),
        Some(Request::RequestPut(p)) => Ok(RequestOp::Put(put_request(p))),
        Some(Request::RequestDeleteRange(d)) => Ok(RequestOp::DeleteRange(delete_request(d))),
        Some(Request::RequestTxn(t)) => Ok(RequestOp::Txn(txn_request(t)?)),
        // etcd answers an empty operation with "key not found".
        None => Err(StoreError::KeyNotFound),
    }
}

/// Protobuf transaction to domain; an empty operation is refused as etcd refuses it.
pub fn txn_request(req: pb::TxnRequest) -> Result<TxnRequest, StoreError> {
    Ok(TxnRequest {
        compare: req.compare.into_iter().map(compare).collect(),
        success: req.success.into_iter().map(request_op).collect::<Result<_, _>>()?,
        failure: req.failure.into_iter().map(request_op).collect::<Result<_, _>>()?,
    })
}

/// Domain range response to protobuf.
pub fn range_response(resp: RangeResponse, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse { header, kvs: resp.kvs.into_iter().map(kv).collect(), more: resp.more, count: resp.count }
}

/// Domain put response to protobuf.
pub fn put_response(resp: PutResponse, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse { header, prev_kv: resp.prev_kv.map(kv) }
}

/// Domain delete response to protobuf.
pub fn delete_response(resp: DeleteRangeResponse, header: Option<pb::ResponseHeader>) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse { header, deleted: resp.deleted, prev_kvs: resp.prev_kvs.into_iter().map(kv).collect() }
}

/// Domain transaction response to protobuf.
pub fn txn_response(resp: TxnResponse, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    use pb::response_op::Response;
    pb::TxnResponse {
        header,
        succeeded: resp.succeeded,
        responses: resp
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    ResponseOp::Range(r) => {
                        let h = inner_header(r.revision);
                        Response::ResponseRange(range_response(r, h))
                    }
                    ResponseOp::Put(p) => {
                        let h = inner_header(p.revision);
                        Response::ResponsePut(put_response(p, h))
                    }
                    ResponseOp::DeleteRange(d) => {
                        let h = inner_header(d.revision);
                        Response::ResponseDeleteRange(delete_response(d, h))
                    }
                    ResponseOp::Txn(t) => {
                        let h = inner_header(t.revision);
                        Response::ResponseTxn(txn_response(t, h))
                    }
                }),
            })
            .collect(),
    }
}
