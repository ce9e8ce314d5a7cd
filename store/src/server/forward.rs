//! Proposals and read barriers, from any member.
//!
//! A follower forwards proposals to the leader over the peer API (what etcd does internally, and
//! what etcd clients expect: they never follow redirects), batched with the other proposals
//! queued meanwhile (`batch.rs`) into one `ProposeMany` call. Retries stay within the request
//! timeout and happen only when the request provably was not proposed — no leader yet, the peer
//! answered "not leader", or the connection never opened — so a write is never applied twice by a
//! retry. Reads are idempotent and retry on any failure.
//!
//! A follower's linearizable read asks the leader for a read index (the leader confirms its
//! leadership with a quorum first, so a deposed leader cannot answer) and waits until it has
//! applied that far.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use openraft::type_config::async_runtime::WatchReceiver;
use tokio::time::Instant;

use super::Member;
use super::batch::ReadIndexBatcher;
use crate::error::StoreError;
use crate::peer::ForwardError;
use crate::raft::{Command, CommandResponse, CommandResult, LogId};

/// First and largest pause between attempts while waiting for a leader.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// A retry schedule bounded by a deadline.
pub(super) struct Retry {
    deadline: Instant,
    backoff: Duration,
}

impl Retry {
    pub(super) fn new(timeout: Duration) -> Self {
        Self { deadline: Instant::now() + timeout, backoff: FIRST_BACKOFF }
    }

    pub(super) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits before the next attempt; false when the deadline has passed.
    pub(super) async fn wait(&mut self) -> bool {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return false;
        }
        tokio::time::sleep(self.backoff.min(remaining)).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        true
    }
}

/// What a local attempt concluded.
enum Local<T> {
    Done(Result<T, StoreError>),
    /// Not the leader; the leader is unknown or elsewhere.
    NotLeader,
}

impl Member {
    /// Proposes a command and waits until it is applied, forwarding to the leader if needed.
    /// Commands that would grow the store are first checked against the quota (`quota.rs`).
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, StoreError> {
        self.check_quota(&command).await?;
        self.forward_proposal(command).await
    }

    /// [`Member::propose`] without the quota check. When another member is known to lead, the
    /// command goes straight to it (asking this member's Raft first would only cost a round trip
    /// through its core to learn the same); when the leader is this member or unknown, or the
    /// known leader turns out not to lead, it is proposed here.
    pub(super) async fn forward_proposal(&self, command: Command) -> Result<CommandResponse, StoreError> {
        let mut retry = Retry::new(self.request_timeout);
        loop {
            let remote = self.remote_leader();
            if remote.is_none()
                && let Local::Done(result) = self.try_propose_local(command.clone(), retry.remaining()).await
            {
                return result;
            }
            if remote.is_some() || self.remote_leader().is_some() {
                match self.forward_to_leader(command.clone(), retry.remaining()).await {
                    Ok(Ok(response)) => return Ok(response),
                    // The peer did not propose: it is not (or no longer) the leader. This member
                    // may be, before its metrics say so.
                    Ok(Err(StoreError::NotLeader | StoreError::NoLeader)) | Err(ForwardError::NotSent(_)) => {
                        if let Local::Done(result) = self.try_propose_local(command.clone(), retry.remaining()).await {
                            return result;
                        }
                    }
                    Ok(Err(err)) => return Err(err),
                    Err(ForwardError::Uncertain(why)) => {
                        tracing::debug!(%why, "forwarded proposal has an unknown outcome");
                        return Err(StoreError::Timeout);
                    }
                }
            }
            if !retry.wait().await {
                return Err(if self.leader_id().is_none() { StoreError::NoLeader } else { StoreError::Timeout });
            }
        }
    }

    /// Sends `command` to the leader in the next forwarded proposal round (`batch.rs`), shared
    /// with every proposal queued meanwhile.
    async fn forward_to_leader(&self, command: Command, timeout: Duration) -> Result<CommandResult, ForwardError> {
        match tokio::time::timeout(timeout, self.forwarded_proposals.call(command)).await {
            Err(_) => Err(ForwardError::Uncertain(format!("no answer from the leader within {timeout:?}"))),
            // The round task is gone (the member is stopping); the command may have been sent.
            Ok(Err(err)) => Err(ForwardError::Uncertain(err.to_string())),
            Ok(Ok(answer)) => answer,
        }
    }

    /// The leader's side of a follower's `ProposeMany`: the commands go to Raft as one batch, and
    /// each gets its own answer, in order; `NotLeader` for every command when this member does
    /// not lead (none of them was proposed). Commands still unanswered when the request timeout
    /// passes get `Timeout` (they may yet be applied).
    pub async fn propose_local_many(&self, commands: Vec<Command>) -> Vec<CommandResult> {
        let count = commands.len();
        let deadline = Instant::now() + self.request_timeout;
        let mut answers = Vec::with_capacity(count);
        match tokio::time::timeout_at(deadline, self.raft.client_write_many(commands)).await {
            Err(_) => {}
            Ok(Err(fatal)) => {
                tracing::error!(%fatal, "raft stopped");
                return vec![Err(StoreError::Stopped); count];
            }
            Ok(Ok(mut results)) => {
                while answers.len() < count {
                    let Ok(next) = tokio::time::timeout_at(deadline, results.next()).await else { break };
                    answers.push(match next {
                        None | Some(Err(_)) => Err(StoreError::Stopped),
                        Some(Ok(Ok(written))) => written.response,
                        Some(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => Err(StoreError::NotLeader),
                        Some(Ok(Err(ClientWriteError::LogEntryDiscarded(_)))) => Err(StoreError::LeaderChanged),
                        Some(Ok(Err(other))) => Err(StoreError::Internal(other.to_string())),
                    });
                }
            }
        }
        answers.resize(count, Err(StoreError::Timeout));
        answers
    }

    /// Proposes on this member only; `NotLeader` when it does not lead. Used for requests forwarded
    /// by followers (never forwarded again, so forwarding cannot loop) and by leader-only duties.
    pub async fn propose_local(&self, command: Command) -> Result<CommandResponse, StoreError> {
        match self.try_propose_local(command, self.request_timeout).await {
            Local::Done(result) => result,
            Local::NotLeader => Err(StoreError::NotLeader),
        }
    }

    async fn try_propose_local(&self, command: Command, timeout: Duration) -> Local<CommandResponse> {
        // openraft's write future is about 2 KiB; boxed, it is not copied again into every future
        // that awaits this one (the request handler's among them).
        match tokio::time::timeout(timeout, Box::pin(self.raft.client_write(command))).await {
            Err(_) => Local::Done(Err(StoreError::Timeout)),
            Ok(Ok(resp)) => Local::Done(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Local::NotLeader,
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Local::Done(Err(StoreError::LeaderChanged))
            }
            Ok(Err(RaftError::APIError(other))) => Local::Done(Err(StoreError::Internal(other.to_string()))),
            Ok(Err(RaftError::Fatal(fatal))) => {
                tracing::error!(%fatal, "raft stopped");
                Local::Done(Err(StoreError::Stopped))
            }
        }
    }

    /// The answer of `batcher`'s next read-index round (shared with every concurrent read;
    /// `batch.rs`).
    async fn next_read_index(&self, batcher: &ReadIndexBatcher, timeout: Duration) -> Result<LogId, StoreError> {
        match tokio::time::timeout(timeout, batcher.call(())).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(answer) => answer.and_then(|read| read),
        }
    }

    /// Waits until this member may serve a linearizable read: a read index confirmed by a quorum
    /// (through the leader, from a follower) has been applied here.
    pub async fn linearize(&self) -> Result<(), StoreError> {
        if crate::planted::active(crate::planted::PlantedBug::StaleRead) {
            return Ok(());
        }
        let mut retry = Retry::new(self.request_timeout);
        loop {
            let read = match self.next_read_index(&self.leader_reads, retry.remaining()).await {
                Err(StoreError::NotLeader) => self.next_read_index(&self.forwarded_reads, retry.remaining()).await,
                read => read,
            };
            match read {
                Ok(read_log_id) => return self.await_applied(read_log_id, retry.remaining()).await,
                Err(err @ (StoreError::Timeout | StoreError::Stopped)) => return Err(err),
                // No leader, or no quorum yet: retry while the deadline allows.
                Err(_) => {}
            }
            if !retry.wait().await {
                return Err(StoreError::Timeout);
            }
        }
    }

    /// Confirms with a quorum that this member still leads; `NotLeader` when it does not, and a
    /// timeout when no quorum answers within the request timeout.
    pub async fn confirm_leadership(&self) -> Result<(), StoreError> {
        let mut retry = Retry::new(self.request_timeout);
        loop {
            match self.next_read_index(&self.leader_reads, retry.remaining()).await {
                Ok(_) => return Ok(()),
                Err(err @ (StoreError::NotLeader | StoreError::Timeout | StoreError::Stopped)) => return Err(err),
                // No quorum answered: retry while the deadline allows.
                Err(_) => {}
            }
            if !retry.wait().await {
                return Err(StoreError::Timeout);
            }
        }
    }

    async fn await_applied(&self, read_log_id: LogId, timeout: Duration) -> Result<(), StoreError> {
        if self.core.applied_log_id().is_some_and(|applied| applied.index() >= read_log_id.index()) {
            return Ok(());
        }
        let linearizer = Linearizer::new(self.member_id, ReadLogId::from_log_id(read_log_id), None);
        match linearizer.try_await_ready(&self.raft, Some(timeout)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Timeout),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// The leader's side of a follower's linearizable read: confirm leadership (in a round shared
    /// with this member's own reads), return the index.
    pub async fn local_read_index(&self) -> Result<LogId, StoreError> {
        self.next_read_index(&self.leader_reads, self.request_timeout).await
    }

    /// Waits until this member has applied every entry it knows to be committed (etcd's
    /// `waitAppliedIndex`).
    pub async fn wait_applied(&self) -> Result<(), StoreError> {
        let committed = self.raft.metrics().borrow_watched().local_committed.as_ref().map(|id| id.index());
        if committed.is_none() {
            return Ok(());
        }
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(committed, "applied catches up with committed")
            .await
            .map(|_| ())
            .map_err(|_| StoreError::Timeout)
    }

    /// A fresh, positive, non-zero lease id.
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = (self.next_lease.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}
