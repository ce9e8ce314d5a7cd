//! Workloads: what the client workers do, and how each operation's outcome is classified.
//!
//! Invariants: each worker has one operation outstanding at a time and records its invocation
//! before sending and its completion after the answer (or the timeout); a worker whose operation
//! ended `info` continues as a new process number (`process + concurrency`), since the old
//! process may still be "executing" that operation; every call carries the operation timeout, so
//! a worker stops within one timeout of the end of the test.

pub mod append;
pub mod lease;
pub mod register;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use crate::history::{EventType, Op, Process, Recorder};
use crate::rng::Rng;

/// What the workers run.
#[derive(Clone, Debug)]
pub enum Workload {
    /// Reads, writes and compare-and-sets on independent keys.
    Register(Arc<register::Register>),
    /// Transactions appending to and reading lists.
    Append(Arc<append::Append>),
    /// Puts and deletes followed by watchers.
    Watch(Arc<watch::Watch>),
    /// Lock holders with leases, fencing their writes.
    Lease(Arc<lease::LeaseLock>),
}

/// An operation's outcome.
#[derive(Debug)]
pub enum Outcome {
    /// It happened; the operation as completed (with what a read returned).
    Ok(Op),
    /// It certainly did not happen.
    Fail(String),
    /// It may or may not have happened.
    Info(String),
}

/// Why a call did not return a response.
#[derive(Debug)]
pub enum CallError {
    /// No answer within the operation timeout.
    Timeout,
    /// The server (or the connection) returned an error status.
    Status(tonic::Status),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("timed out"),
            CallError::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
        }
    }
}

impl CallError {
    /// The outcome of a *mutation* that ended with this error: unknown, unless the status is one
    /// the server gives only for requests it refused before executing them (or executed as a
    /// no-op, as the quota refusal is), or the connection was refused, so nothing was sent.
    pub fn outcome(&self) -> Outcome {
        use tonic::Code;
        match self {
            CallError::Status(status) if status.code() == Code::Unavailable && never_connected(status) => {
                Outcome::Fail(self.to_string())
            }
            CallError::Status(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::FailedPrecondition
                        | Code::OutOfRange
                        | Code::PermissionDenied
                        | Code::Unauthenticated
                        | Code::ResourceExhausted
                        | Code::Unimplemented
                ) =>
            {
                Outcome::Fail(self.to_string())
            }
            other => Outcome::Info(other.to_string()),
        }
    }
}

/// True when the status reports that no connection could be made (the member is down): the
/// request never left the client.
fn never_connected(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = err.source();
    }
    status.message().contains("Connection refused")
}

/// What every worker shares.
#[derive(Debug)]
pub struct WorkerContext {
    /// Bound on every call.
    pub op_timeout: Duration,
}

impl WorkerContext {
    /// Runs `call` with the operation timeout.
    pub async fn timed<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>, CallError> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(status)) => Err(CallError::Status(status)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// One worker's fixed parameters.
#[derive(Debug)]
pub struct WorkerSpec {
    /// The worker's number, `0..concurrency`; also its first process number.
    pub worker: u64,
    /// Number of workers.
    pub concurrency: u64,
    /// The member it talks to, by name, and a channel to it.
    pub node: String,
    /// Channel to that member's client API.
    pub channel: Channel,
    /// Every member's name and channel (watchers move between members), and the index of
    /// `node` among them.
    pub members: Vec<(String, Channel)>,
    /// Index of `node` in `members`.
    pub node_index: usize,
    /// Mean pause between this worker's operations (`concurrency / rate`).
    pub mean_delay: Duration,
}

/// Runs one worker until `stop` turns true. Returns the number of operations it invoked.
pub async fn run_worker(
    spec: WorkerSpec,
    workload: Workload,
    ctx: Arc<WorkerContext>,
    recorder: Arc<Recorder>,
    mut rng: Rng,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    if let Workload::Watch(_) = &workload
        && watch::Watch::is_watcher(spec.worker)
    {
        return watch::run_watcher(ctx, spec.members, spec.node_index, spec.worker, recorder, rng, stop).await;
    }
    if let Workload::Lease(lease) = &workload {
        return lease::run_holder(spec, lease.clone(), ctx, recorder, rng, stop).await;
    }
    let mut process = spec.worker;
    let mut invoked = 0;
    let mut last_seen = None;
    loop {
        let delay_ms = spec.mean_delay.as_millis() as u64;
        if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(2 * delay_ms + 1))).await;
        }
        if *stop.borrow() {
            return invoked;
        }
        let op = match &workload {
            Workload::Register(register) => register.next_op(&mut rng, &mut last_seen),
            Workload::Append(append) => append.next_op(&mut rng),
            Workload::Watch(watch) => watch.next_op(&mut rng),
            Workload::Lease(_) => unreachable!("holders run their own loop"),
        };
        recorder.record(Process::Client(process), EventType::Invoke, op.clone(), Some(spec.node.clone()), None);
        invoked += 1;
        let outcome = match &workload {
            Workload::Register(_) => register::invoke(&ctx, spec.channel.clone(), &op, &mut last_seen).await,
            Workload::Append(_) => append::invoke(&ctx, spec.channel.clone(), &op).await,
            Workload::Watch(_) => watch::invoke(&ctx, spec.channel.clone(), &op).await,
            Workload::Lease(_) => unreachable!("holders run their own loop"),
        };
        let node = Some(spec.node.clone());
        match outcome {
            Outcome::Ok(done) => {
                recorder.record(Process::Client(process), EventType::Ok, done, node, None);
            }
            Outcome::Fail(error) => {
                recorder.record(Process::Client(process), EventType::Fail, op, node, Some(error));
            }
            Outcome::Info(error) => {
                recorder.record(Process::Client(process), EventType::Info, op, node, Some(error));
                process += spec.concurrency;
            }
        }
    }
}
