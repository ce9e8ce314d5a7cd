//! Distributed locks and leader elections over leases and revisions: the semantics behind etcd's
//! v3lock (`Lock`, `Unlock`) and v3election (`Campaign`, `Proclaim`, `Leader`, `Observe`,
//! `Resign`) services, served by every member.
//!
//! A lock or a candidacy for `NAME` is the key `NAME/<lease id in hex>`, attached to the caller's
//! lease. Among the keys under `NAME/`, the one with the lowest create revision holds the lock (or
//! leads the election); the others wait in create-revision order. That create revision is the
//! holder's fencing token: successive holders' tokens strictly increase, and a protected write
//! stays safe by comparing `create_revision(key) == token` in the same transaction.
//!
//! This module sits beside the API layer, above proposals: it knows no protobuf, writes only by
//! proposing ordinary transactions through the member (so every change goes through the log and
//! apply checks the caller's permissions), and learns of deletions from the local watch hub.
//!
//! Invariants:
//! - a wait ends in a grant only after a linearizable read shows the waiter's own key (same create
//!   revision) present and no older key under the prefix. A waiter whose lease expired or was
//!   revoked while it waited has lost its key, so it is never granted; it gets
//!   [`StoreError::SessionExpired`] instead;
//! - a holder's release is the deletion of its key (unlock, resign, lease revoke or expiry), so the
//!   lock is free in exactly the revision that deletes the key;
//! - a wait that ends without a grant (client gone, deadline, error) deletes the waiter's key if
//!   it still has the create revision this wait saw, so an abandoned waiter never holds the lock
//!   later; if that cleanup cannot reach the leader, the key goes when its lease does;
//! - waiting is bounded: at most `--max-lock-waiters` Lock/Campaign calls and as many Observe
//!   streams per member, each holding one watch-hub stream; beyond that, calls are refused with
//!   [`StoreError::TooManyWaiters`].
//!
//! Leader changes: waits use the local watch hub and local reads behind a read barrier, so a wait
//! on any member survives a change of Raft leader; transient failures (no leader, timeouts) are
//! retried with backoff for at most [`RETRY_WINDOW`] before the call fails.

mod election;
mod lock;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Access;
use crate::error::StoreError;
use crate::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, RangeRequest, RangeResponse, RequestOp,
    SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use crate::raft::{Command, CommandResponse};
use crate::server::Member;
use crate::watch::{WatchHub, WatchMessage, WatchSpec};

pub use election::{LeaderKey, Leadership};

/// How long a wait keeps retrying transient failures (no leader, timeouts) before it fails.
pub const RETRY_WINDOW: Duration = Duration::from_secs(60);
/// Attempts to delete an abandoned waiter's key.
const CLEANUP_ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A key that holds a lock or leads an election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The key, `NAME/<lease hex>`.
    pub key: Vec<u8>,
    /// Its create revision: the fencing token.
    pub create_revision: i64,
    /// The revision of the linearizable read that granted it (at or after `create_revision`).
    pub granted_at: i64,
}

/// Locks and elections, served by one member.
///
/// Concurrency: the two semaphores only count permits; every wait runs in its caller's task (a
/// gRPC handler, dropped when the client goes away) and owns its hub stream. Only a waiter's
/// enqueue put runs in a task of its own, so a dropped caller cannot leave its key behind.
#[derive(Clone, Debug)]
pub struct Coordinator {
    member: Arc<Member>,
    /// Bounds Lock and Campaign calls in progress on this member.
    waiters: Arc<Semaphore>,
    /// Bounds Observe streams on this member.
    observers: Arc<Semaphore>,
}

impl Coordinator {
    /// Locks and elections served by `member`, bounded by its `max_lock_waiters`.
    pub fn new(member: Arc<Member>) -> Self {
        let limit = member.config().max_lock_waiters.max(1);
        Self { member, waiters: Arc::new(Semaphore::new(limit)), observers: Arc::new(Semaphore::new(limit)) }
    }

    fn waiter_permit(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        self.waiters.clone().try_acquire_owned().map_err(|_| StoreError::TooManyWaiters)
    }

    fn observer_permit(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        self.observers.clone().try_acquire_owned().map_err(|_| StoreError::TooManyWaiters)
    }

    /// Proposes `txn` as `caller` (apply checks permissions).
    async fn propose_txn(&self, caller: Option<&str>, txn: TxnRequest) -> Result<TxnResponse, StoreError> {
        propose_txn(&self.member, caller, txn).await
    }

    /// Like [`Coordinator::propose_txn`], retrying transient failures within [`RETRY_WINDOW`].
    /// Only for transactions that are idempotent when applied twice.
    async fn propose_idempotent(&self, caller: Option<&str>, txn: TxnRequest) -> Result<TxnResponse, StoreError> {
        let mut backoff = Backoff::new();
        loop {
            match self.propose_txn(caller, txn.clone()).await {
                Err(err) if is_transient(&err) && backoff.wait().await => {
                    tracing::debug!(%err, "retrying an idempotent lock/election proposal");
                }
                other => return other,
            }
        }
    }

    /// A linearizable range read, after checking that `caller` may read it; transient failures are
    /// retried within [`RETRY_WINDOW`].
    async fn read(&self, caller: Option<&str>, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        let mut backoff = Backoff::new();
        loop {
            match self.member.linearize().await {
                Ok(()) => break,
                Err(err) if is_transient(&err) && backoff.wait().await => {}
                Err(err) => return Err(err),
            }
        }
        self.member.core().auth().state().check(caller, &req.key, &req.range_end, Access::Read)?;
        let core = self.member.core().clone();
        tokio::task::spawn_blocking(move || core.mvcc().range(&req))
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(StoreError::from)
    }

    /// Makes sure `key` exists on `lease` under `prefix` with `value` (creating it if absent) and
    /// returns its create revision. Idempotent, as etcd's recipe is: the key of a lease is reused
    /// when it already exists, so a retried or repeated call joins the queue only once.
    async fn enqueue(
        &self,
        caller: Option<&str>,
        key: &[u8],
        lease: i64,
        value: &[u8],
        update_value: bool,
    ) -> Result<KeyValue, StoreError> {
        let txn = TxnRequest {
            compare: vec![compare_create(key, 0)],
            success: vec![RequestOp::Put(crate::mvcc::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..Default::default()
            })],
            failure: vec![RequestOp::Range(RangeRequest { key: key.to_vec(), ..Default::default() })],
        };
        let resp = self.propose_idempotent(caller, txn).await?;
        if resp.succeeded {
            return Ok(KeyValue {
                key: key.to_vec(),
                create_revision: resp.revision,
                mod_revision: resp.revision,
                version: 1,
                value: value.to_vec(),
                lease,
            });
        }
        let existing = match resp.responses.into_iter().next() {
            Some(crate::mvcc::ResponseOp::Range(range)) => range.kvs.into_iter().next(),
            _ => None,
        };
        // The failure branch ran because the key exists, and its range reads the same revision.
        let mut existing =
            existing.ok_or_else(|| StoreError::Internal("lock key vanished inside one transaction".into()))?;
        if existing.lease != lease {
            return Err(StoreError::NotLockKey(String::from_utf8_lossy(key).into_owned()));
        }
        if update_value && existing.value != value {
            let revision = self.proclaim_key(caller, key, existing.create_revision, value).await?;
            existing.value = value.to_vec();
            existing.mod_revision = revision;
        }
        Ok(existing)
    }

    /// Overwrites the value of `key` if it still has `create_revision`; its revision, or
    /// [`StoreError::ElectionNotLeader`].
    async fn proclaim_key(
        &self,
        caller: Option<&str>,
        key: &[u8],
        create_revision: i64,
        value: &[u8],
    ) -> Result<i64, StoreError> {
        let txn = TxnRequest {
            compare: vec![compare_create(key, create_revision)],
            success: vec![RequestOp::Put(crate::mvcc::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ignore_lease: true,
                ..Default::default()
            })],
            failure: vec![],
        };
        let resp = self.propose_txn(caller, txn).await?;
        if !resp.succeeded {
            return Err(StoreError::ElectionNotLeader);
        }
        Ok(resp.revision)
    }

    /// Queues `lease`'s key under `prefix` (with `value`) and waits for its turn: the shared body
    /// of Lock and Campaign. Holds a waiter permit meanwhile; an abandoned wait removes the key.
    async fn acquire(
        &self,
        caller: Option<&str>,
        prefix: &[u8],
        lease: i64,
        value: &[u8],
        update_value: bool,
    ) -> Result<Held, StoreError> {
        if lease == 0 {
            return Err(StoreError::LeaseNotProvided);
        }
        let _permit = self.waiter_permit()?;
        let key = key_for(prefix, lease);
        // The enqueue runs in its own task and hands its key back together with the guard that
        // removes it: a caller dropped while the put is in flight (client gone, grpc-timeout) would
        // otherwise leave its key queued, blocking every waiter behind it, until its lease expires.
        // Once the caller has gone, handing back fails and the returned guard, dropped, removes it.
        let (handed, taken) = tokio::sync::oneshot::channel();
        let (this, value) = (self.clone(), value.to_vec());
        let owner = caller.map(str::to_string);
        tokio::spawn(async move {
            let enqueued = this.enqueue(owner.as_deref(), &key, lease, &value, update_value).await;
            let enqueued = enqueued.map(|own| {
                let guard = AbandonGuard {
                    member: this.member.clone(),
                    caller: owner,
                    key: own.key.clone(),
                    create_revision: own.create_revision,
                    armed: true,
                };
                (own, guard)
            });
            // A failed hand-back returns the value, whose guard is dropped here: the key is removed.
            let _ = handed.send(enqueued);
        });
        let (own, guard) = taken.await.map_err(|_| StoreError::Stopped)??;
        match self.wait_for_turn(caller, prefix, &own).await {
            Ok(granted_at) => {
                guard.disarm();
                Ok(Held { key: own.key, create_revision: own.create_revision, granted_at })
            }
            Err(StoreError::SessionExpired) => {
                // The key is gone already; nothing to clean up.
                guard.disarm();
                Err(StoreError::SessionExpired)
            }
            Err(err) => Err(err),
        }
    }

    /// Waits until `own` is the oldest key under `prefix`; returns the revision that showed it.
    /// Fails with [`StoreError::SessionExpired`] as soon as `own` is gone (lease revoked or
    /// expired, or the key deleted).
    async fn wait_for_turn(&self, caller: Option<&str>, prefix: &[u8], own: &KeyValue) -> Result<i64, StoreError> {
        let range_end = prefix_range_end(prefix);
        loop {
            // The newest two keys created at or before ours: ours, then the one we wait behind.
            let resp = self
                .read(
                    caller,
                    RangeRequest {
                        key: prefix.to_vec(),
                        range_end: range_end.clone(),
                        limit: 2,
                        sort_order: SortOrder::Descend,
                        sort_target: SortTarget::Create,
                        keys_only: true,
                        max_create_revision: own.create_revision,
                        ..Default::default()
                    },
                )
                .await?;
            match resp.kvs.first() {
                Some(first) if first.key == own.key && first.create_revision == own.create_revision => {}
                _ => return Err(StoreError::SessionExpired),
            }
            let Some(ahead) = resp.kvs.get(1) else {
                return Ok(resp.revision);
            };
            // Wake when the key ahead or our own key is deleted after the revision just read.
            let mut deletions = HubStream::open(self.member.core().hub().clone());
            deletions.watch_deletion(&ahead.key, resp.revision + 1).await?;
            deletions.watch_deletion(&own.key, resp.revision + 1).await?;
            deletions.first_event().await;
        }
    }

    /// Deletes `key` if it still has `create_revision`; the deleting revision, or `None` when the
    /// key was already gone or recreated.
    async fn delete_if_current(
        &self,
        caller: Option<&str>,
        key: &[u8],
        create_revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let resp = self.propose_txn(caller, delete_if_current_txn(key, create_revision)).await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }
}

/// Proposes `txn` as `caller`.
async fn propose_txn(member: &Member, caller: Option<&str>, txn: TxnRequest) -> Result<TxnResponse, StoreError> {
    match member.propose(Command::as_user(caller, Command::Txn(txn))).await? {
        CommandResponse::Txn(resp) => Ok(resp),
        other => Err(StoreError::Internal(format!("unexpected apply result {other:?}"))),
    }
}

fn delete_if_current_txn(key: &[u8], create_revision: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![compare_create(key, create_revision)],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest { key: key.to_vec(), ..Default::default() })],
        failure: vec![],
    }
}

fn compare_create(key: &[u8], create_revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(create_revision),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

/// The prefix that holds the keys of lock or election `name`: `name/`.
fn prefix_of(name: &[u8]) -> Result<Vec<u8>, StoreError> {
    if name.is_empty() {
        return Err(StoreError::EmptyName);
    }
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Ok(prefix)
}

/// The key a lease holds under `prefix`: the lease id in lowercase hex, as etcd's recipe names it.
fn key_for(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// True when `kv` is a lock or candidacy key: `<something>/<its own lease in hex>`.
fn is_lease_key(kv: &KeyValue) -> bool {
    kv.lease != 0 && kv.key.ends_with(format!("/{:x}", kv.lease).as_bytes())
}

fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    // A prefix ending in '/' always has an end; "\0" (every key) is the etcd fallback.
    crate::backend::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

/// Failures worth retrying: the cluster is between leaders or slow, and the request either was
/// not applied or is idempotent.
fn is_transient(err: &StoreError) -> bool {
    matches!(err, StoreError::NoLeader | StoreError::NotLeader | StoreError::LeaderChanged | StoreError::Timeout)
}

/// Exponential backoff that gives up after [`RETRY_WINDOW`].
struct Backoff {
    deadline: tokio::time::Instant,
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { deadline: tokio::time::Instant::now() + RETRY_WINDOW, next: FIRST_BACKOFF }
    }

    /// Sleeps before the next attempt; false once the window is spent.
    async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.next.min(self.deadline - now)).await;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        true
    }
}

/// One watch-hub stream owned by a wait or an observer.
///
/// Who closes the channel: the hub owns the sender; dropping this closes the hub stream, which
/// removes its watchers.
struct HubStream {
    hub: Arc<WatchHub>,
    stream: crate::watch::StreamId,
    messages: tokio::sync::mpsc::Receiver<WatchMessage>,
}

impl HubStream {
    fn open(hub: Arc<WatchHub>) -> Self {
        let (stream, messages) = hub.open_stream();
        Self { hub, stream, messages }
    }

    async fn watch(&mut self, spec: WatchSpec) -> Result<(), StoreError> {
        self.hub.create(self.stream, spec).await.map(|_| ()).map_err(|err| StoreError::Internal(err.to_string()))
    }

    /// Watches `key` for its deletion at `from_revision` or later.
    async fn watch_deletion(&mut self, key: &[u8], from_revision: i64) -> Result<(), StoreError> {
        self.watch(WatchSpec { key: key.to_vec(), start_revision: from_revision, no_put: true, ..Default::default() })
            .await
    }

    /// The next message; `None` when the hub closed the stream.
    async fn recv(&mut self) -> Option<WatchMessage> {
        self.messages.recv().await
    }

    /// Completes at the first event, or when a watch ends for another reason (history compacted,
    /// hub closed); callers re-read the store either way.
    async fn first_event(&mut self) {
        while let Some(message) = self.recv().await {
            match message {
                WatchMessage::Events { .. } | WatchMessage::Canceled { .. } | WatchMessage::CreateFailed { .. } => {
                    return;
                }
                WatchMessage::Created { .. } | WatchMessage::Progress { .. } => {}
            }
        }
    }
}

impl Drop for HubStream {
    fn drop(&mut self) {
        self.hub.close_stream(self.stream);
    }
}

/// Deletes a waiter's key unless disarmed: the wait was abandoned (client gone, deadline, error).
///
/// Dropping cannot await, so the delete runs in a spawned task with [`CLEANUP_ATTEMPTS`] tries; it
/// only deletes the key version this wait saw, never a newer one.
struct AbandonGuard {
    member: Arc<Member>,
    caller: Option<String>,
    key: Vec<u8>,
    create_revision: i64,
    armed: bool,
}

impl AbandonGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let member = self.member.clone();
        let caller = self.caller.take();
        let key = std::mem::take(&mut self.key);
        let create_revision = self.create_revision;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            for attempt in 1..=CLEANUP_ATTEMPTS {
                match propose_txn(&member, caller.as_deref(), delete_if_current_txn(&key, create_revision)).await {
                    Ok(_) => {
                        tracing::debug!(key = %String::from_utf8_lossy(&key), "abandoned waiter's key removed");
                        return;
                    }
                    Err(err) => {
                        tracing::debug!(%err, attempt, "removing an abandoned waiter's key failed");
                        tokio::time::sleep(FIRST_BACKOFF * attempt).await;
                    }
                }
            }
            tracing::warn!(
                key = %String::from_utf8_lossy(&key),
                "could not remove an abandoned waiter's key; it goes when its lease expires"
            );
        });
    }
}
