//! Batched rounds: concurrent requests that need the same costly step (a quorum round, an RPC to
//! the leader) queue for it, and one round serves every request queued when it began.
//!
//! - Read index (etcd's `linearizableReadLoop`): on the leader, one quorum round answers every
//!   linearizable read, keep-alive and follower's read-index request waiting when it began; on a
//!   follower, one read-index request to the leader answers every linearizable read waiting.
//!   The two are separate batchers so that the leader's round never waits on another member
//!   (two members that each believe the other leads cannot wait on each other).
//! - Keep-alives on a follower: every keep-alive queued goes to the leader in one peer request
//!   instead of one request each.
//! - Proposals on a follower: every proposal queued goes to the leader in one `ProposeMany` call
//!   (split so no call exceeds the peer message bound), which the leader hands to Raft as one
//!   batch. Unlike the others these rounds overlap: up to `PROPOSAL_ROUNDS_IN_FLIGHT` at once, so
//!   a slow commit does not hold back proposals that arrive meanwhile; order between concurrent
//!   clients' writes is not promised by etcd either.
//!
//! Invariant (why a late request must not join a round in flight): a read-index round's index is
//! the leader's commit index when the round began, and a write acknowledged before a read arrived
//! is committed by then only if the round began after the read arrived. So each round answers only
//! the requests queued before it began; later ones wait for the next round.
//!
//! Bounds: at most `QUEUE` requests queue per batcher (callers wait for room), a round takes at
//! most `ROUND_LIMIT` of them, and every round ends within the request timeout. Each batcher's
//! task ends when the member is dropped (the queue's only sender lives in the member); a
//! proposal round already spawned holds the member until it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use std::sync::Arc;

use openraft::ReadPolicy;
use openraft::errors::{LinearizableReadError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Member;
use crate::error::StoreError;
use crate::peer::{ForwardError, LeaseReply, LeaseRequest, MAX_PEER_MESSAGE_BYTES, MAX_PROPOSALS_PER_CALL};
use crate::raft::{Command, CommandResult, LogId};

/// Requests that may queue for the next round before callers wait for room.
const QUEUE: usize = 4096;
/// Requests one round serves; the rest are served by the next round (for a read index, a later
/// round only makes the answer fresher).
const ROUND_LIMIT: usize = 4096;

/// Proposal rounds a follower has in flight to the leader at once.
pub(super) const PROPOSAL_ROUNDS_IN_FLIGHT: usize = 4;

/// A queued request and where its answer goes.
type Queued<I, O> = (I, oneshot::Sender<O>);

/// A round in progress: one output per input, in order.
type Answers<'a, O> = Pin<Box<dyn Future<Output = Vec<O>> + Send + 'a>>;

/// One round over a batch.
type Round<I, O> = for<'a> fn(&'a Member, Vec<I>) -> Answers<'a, O>;

/// The caller side of a batcher. Lives in the member; dropping it ends the round task.
#[derive(Debug)]
pub(super) struct Batcher<I, O> {
    queue: mpsc::Sender<Queued<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// The batcher and the receiver its round task ([`run`]) takes.
    pub(super) fn new() -> (Self, mpsc::Receiver<Queued<I, O>>) {
        let (queue, waiting) = mpsc::channel(QUEUE);
        (Self { queue }, waiting)
    }

    /// Queues `input` and waits for the answer of a round that begins after this call.
    pub(super) async fn call(&self, input: I) -> Result<O, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((input, tx)).await.map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }
}

/// A batcher's round task: takes every queued request, runs `round` once for them, answers each.
pub(super) async fn run<I, O>(
    member: Weak<Member>,
    mut waiting: mpsc::Receiver<Queued<I, O>>,
    metric: &'static str,
    round: Round<I, O>,
) {
    let mut batch = Vec::with_capacity(64);
    while waiting.recv_many(&mut batch, ROUND_LIMIT).await > 0 {
        let Some(member) = member.upgrade() else { return };
        metrics::histogram!(metric).record(batch.len() as f64);
        let (inputs, outputs): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.drain(..).unzip();
        let answers = round(&member, inputs).await;
        drop(member);
        for (output, answer) in outputs.into_iter().zip(answers) {
            // A caller that gave up (timed out, disconnected) is simply skipped.
            let _ = output.send(answer);
        }
    }
}

/// Like [`run`], but up to `in_flight` rounds run at once, each on its own task; a new round
/// begins as soon as a slot is free and something is queued.
pub(super) async fn run_overlapping<I: Send + 'static, O: Send + 'static>(
    member: Weak<Member>,
    mut waiting: mpsc::Receiver<Queued<I, O>>,
    metric: &'static str,
    round: Round<I, O>,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut batch = Vec::with_capacity(64);
    loop {
        // The semaphore is never closed, so acquiring fails only if that changes.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if waiting.recv_many(&mut batch, ROUND_LIMIT).await == 0 {
            return;
        }
        let Some(member) = member.upgrade() else { return };
        metrics::histogram!(metric).record(batch.len() as f64);
        let (inputs, outputs): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.drain(..).unzip();
        tokio::spawn(async move {
            let answers = round(&member, inputs).await;
            drop(member);
            drop(slot);
            for (output, answer) in outputs.into_iter().zip(answers) {
                let _ = output.send(answer);
            }
        });
    }
}

/// A read-index batcher: no input, one shared answer.
pub(super) type ReadIndexBatcher = Batcher<(), Result<LogId, StoreError>>;
/// The keep-alive batcher: a lease id in, its renewed TTL out.
pub(super) type KeepAliveBatcher = Batcher<i64, Result<i64, StoreError>>;

/// The leader's read-index round: one quorum confirmation for every waiter. `NotLeader` on a
/// member that does not lead; it never asks another member, so a member answering a follower's
/// read-index request never waits on a third member.
pub(super) fn leader_read_index_round(member: &Member, waiters: Vec<()>) -> Answers<'_, Result<LogId, StoreError>> {
    Box::pin(async move {
        let answer = member.leader_read_index().await;
        vec![answer; waiters.len()]
    })
}

/// A follower's read-index round: one request to the leader for every waiter.
pub(super) fn forwarded_read_index_round(member: &Member, waiters: Vec<()>) -> Answers<'_, Result<LogId, StoreError>> {
    Box::pin(async move {
        let answer = member.forwarded_read_index().await;
        vec![answer; waiters.len()]
    })
}

/// The follower's proposal batcher: a command in, the leader's answer (or why there is none) out.
pub(super) type ProposalBatcher = Batcher<Command, Result<CommandResult, ForwardError>>;

/// The forwarded proposal round: every queued command goes to the leader known now, in as few
/// `ProposeMany` calls as the peer message bound allows (a command is at most about a client
/// request, bounded by `--max-request-bytes`), sent concurrently. No leader known elsewhere
/// (this member may lead now) answers `NotSent`, so callers try here.
pub(super) fn forwarded_proposal_round(
    member: &Member,
    commands: Vec<Command>,
) -> Answers<'_, Result<CommandResult, ForwardError>> {
    Box::pin(async move {
        let Some((_, leader)) = member.remote_leader() else {
            let why = ForwardError::NotSent("no other member is known to lead".to_string());
            return vec![Err(why); commands.len()];
        };
        let per_call =
            (MAX_PEER_MESSAGE_BYTES / 2 / member.config.max_request_bytes.max(1)).clamp(1, MAX_PROPOSALS_PER_CALL);
        let calls = commands.chunks(per_call).map(|chunk| {
            let leader = &leader;
            async move {
                match member.peers.propose_many(leader, chunk, member.request_timeout).await {
                    Ok(answers) => answers.into_iter().map(Ok).collect(),
                    Err(why) => vec![Err(why); chunk.len()],
                }
            }
        });
        futures::future::join_all(calls).await.into_iter().flatten().collect()
    })
}

/// The keep-alive round: every queued lease renewed through one request to the leader (or here,
/// should this member have become the leader meanwhile).
pub(super) fn keep_alive_round(member: &Member, ids: Vec<i64>) -> Answers<'_, Result<i64, StoreError>> {
    Box::pin(async move {
        let count = ids.len();
        match member.lease(LeaseRequest::RenewMany { ids }).await {
            Ok(LeaseReply::RenewedMany { ttls }) if ttls.len() == count => ttls,
            Ok(other) => {
                let err = StoreError::Internal(format!("unexpected reply to {count} keep-alives: {other:?}"));
                vec![Err(err); count]
            }
            Err(err) => vec![Err(err); count],
        }
    })
}

impl Member {
    /// This member's read index, after a quorum confirmed it still leads. Retryable failures
    /// (no quorum answered in time) come back as `NoLeader`.
    async fn leader_read_index(&self) -> Result<LogId, StoreError> {
        let linearizer = self.raft.get_read_linearizer(ReadPolicy::ReadIndex);
        match tokio::time::timeout(self.request_timeout, linearizer).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Ok(linearizer)) => Ok(*linearizer.read_log_id().log_id()),
            Ok(Err(RaftError::Fatal(_))) => Err(StoreError::Stopped),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))) => Err(StoreError::NotLeader),
            // No quorum answered in time: the leadership is unconfirmed.
            Ok(Err(RaftError::APIError(_))) => Err(StoreError::NoLeader),
        }
    }

    /// The leader's read index, asked over the peer API. Whatever kept the leader from answering
    /// (it stepped down, lost its quorum, cannot be reached) comes back as `NotLeader`: a later
    /// round may succeed.
    async fn forwarded_read_index(&self) -> Result<LogId, StoreError> {
        let Some((_, leader)) = self.remote_leader() else { return Err(StoreError::NoLeader) };
        match self.peers.read_index(&leader, self.request_timeout).await {
            Ok(Ok(log_id)) => Ok(log_id),
            Ok(Err(_)) | Err(ForwardError::NotSent(_) | ForwardError::Uncertain(_)) => Err(StoreError::NotLeader),
        }
    }
}
