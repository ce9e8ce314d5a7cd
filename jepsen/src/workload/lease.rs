//! The lease/lock workload: holders take a few locks (etcd's Lock service) with leases kept
//! alive, act on the lock's resource only through transactions fenced by their lock key's create
//! revision, and then release the lock or abandon the lease to let it expire.
//!
//! Each worker repeats: `Grant` a lease of [`TTL_S`] seconds; start a keep-alive process for it
//! (its own process number, one `KeepAlive` every third of the TTL); `Acquire` one of [`LOCKS`]
//! locks with the lease, learning the lock key and its create revision (the fence); make one to
//! four `Fenced` writes (a Txn that puts to the lock's resource only if the lock key still has
//! that create revision); then either `Release` (Unlock) and `Revoke`, or `Abandon` the lease (stop
//! the keep-alives; the lease must expire on its own). After the cluster recovers and every lease
//! went unrefreshed for longer than its TTL plus [`EXPIRY_BOUND`], one last process lists the
//! leases that still exist (`Leases`): none of ours should.
//!
//! Invariants: a worker and each of its keep-alive processes have one operation outstanding at a
//! time; a keep-alive process ends before its worker moves on to the next lease (the worker waits
//! for it, and every keep-alive is bounded by the operation timeout); a worker whose operation
//! ended `info` continues as a new process; a holder that saw its guard fail (its lock key is
//! gone) stops acting on the resource at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_proto::etcdserverpb as pb;
use keel_proto::v3lockpb;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{Outcome, WorkerContext, WorkerSpec};
use crate::history::{EventType, Op, Process, Recorder};
use crate::rng::Rng;

/// Number of locks the holders contend for.
pub const LOCKS: u64 = 3;
/// The TTL of every lease, in seconds: short, so that expiries happen during the test.
pub const TTL_S: i64 = 3;
/// How long after its TTL ran out, once no fault is active, a lease may still exist: an
/// election after the last heal renews every lease for a full TTL (as etcd's new leaders do),
/// and the leader's expiry sweep and the revoke's round through the log take a moment more.
pub const EXPIRY_BOUND: Duration = Duration::from_secs(8);
/// Keep-alive processes are numbered from here, far from the workers' numbers.
const KEEPALIVE_PROCESS_BASE: u64 = 2_000_000_000;
/// The chance that a holder abandons its lease instead of releasing the lock.
const ABANDON_CHANCE: f64 = 0.25;

/// Shared by every worker: the keep-alive process counter.
#[derive(Debug)]
pub struct LeaseLock {
    keepalive_processes: AtomicU64,
}

impl LeaseLock {
    /// A fresh workload.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { keepalive_processes: AtomicU64::new(KEEPALIVE_PROCESS_BASE) })
    }

    /// The name of lock `lock` (the prefix of its holders' keys).
    pub fn lock_name(lock: u64) -> Vec<u8> {
        format!("jepsen/lock/{lock:02}").into_bytes()
    }

    /// The key the holders of lock `lock` write to.
    pub fn resource_key(lock: u64) -> Vec<u8> {
        format!("jepsen/lock-resource/{lock:02}").into_bytes()
    }

    fn next_keepalive_process(&self) -> u64 {
        self.keepalive_processes.fetch_add(1, Ordering::Relaxed)
    }
}

/// One worker's state between operations: its current process number.
struct Holder<'a> {
    spec: &'a WorkerSpec,
    recorder: &'a Recorder,
    process: u64,
    invoked: u64,
}

impl Holder<'_> {
    /// Records `op`'s invocation, runs `call`, records its completion; an `info` outcome moves
    /// the worker to a new process. Returns the completed operation when it was `ok`.
    async fn step(&mut self, op: Op, call: impl Future<Output = Outcome>) -> Option<Op> {
        let node = Some(self.spec.node.clone());
        self.recorder.record(Process::Client(self.process), EventType::Invoke, op.clone(), node.clone(), None);
        self.invoked += 1;
        match call.await {
            Outcome::Ok(done) => {
                self.recorder.record(Process::Client(self.process), EventType::Ok, done.clone(), node, None);
                Some(done)
            }
            Outcome::Fail(error) => {
                self.recorder.record(Process::Client(self.process), EventType::Fail, op, node, Some(error));
                None
            }
            Outcome::Info(error) => {
                self.recorder.record(Process::Client(self.process), EventType::Info, op, node, Some(error));
                self.process += self.spec.concurrency;
                None
            }
        }
    }
}

/// Runs one holder until `stop` turns true. Returns the number of operations it invoked.
pub async fn run_holder(
    spec: WorkerSpec,
    workload: Arc<LeaseLock>,
    ctx: Arc<WorkerContext>,
    recorder: Arc<Recorder>,
    mut rng: Rng,
    stop: watch::Receiver<bool>,
) -> u64 {
    let mut holder = Holder { spec: &spec, recorder: &recorder, process: spec.worker, invoked: 0 };
    let channel = spec.channel.clone();
    loop {
        pause(&mut rng, spec.mean_delay).await;
        if *stop.borrow() {
            return holder.invoked;
        }
        let grant = holder.step(Op::Grant { ttl_s: TTL_S, lease: None }, grant(&ctx, channel.clone())).await;
        let Some(Op::Grant { lease: Some(lease), .. }) = grant else {
            continue;
        };
        let (stop_keepalive, keepalive_stopped) = watch::channel(false);
        let keepalive = tokio::spawn(keep_alive(
            ctx.clone(),
            channel.clone(),
            spec.node.clone(),
            lease,
            workload.next_keepalive_process(),
            recorder.clone(),
            keepalive_stopped,
        ));

        let lock = rng.below(LOCKS);
        let acquire = Op::Acquire { lock, lease, key: None, fence: None, revision: None };
        let held = holder.step(acquire, acquire_lock(&ctx, channel.clone(), lock, lease)).await;
        let mut released_by_guard = false;
        if let Some(Op::Acquire { key: Some(key), fence: Some(fence), .. }) = &held {
            let writes = 1 + rng.below(4);
            for _ in 0..writes {
                if *stop.borrow() {
                    break;
                }
                let fenced = Op::Fenced { lock, lease, key: key.clone(), fence: *fence, applied: None, revision: None };
                let before = holder.process;
                match holder.step(fenced, fenced_write(&ctx, channel.clone(), (lock, lease), key, *fence, before)).await
                {
                    Some(Op::Fenced { applied: Some(true), .. }) => {}
                    // The guard failed: the lock key is gone, and a careful holder no longer acts
                    // as one (there is nothing left to release).
                    Some(_) => {
                        released_by_guard = true;
                        break;
                    }
                    // The write failed or its fate is unknown: stop writing, then let go.
                    None => break,
                }
                pause(&mut rng, spec.mean_delay).await;
            }
            if !released_by_guard && !rng.chance(ABANDON_CHANCE) {
                let release = Op::Release { lock, key: key.clone(), fence: *fence, revision: None };
                holder.step(release, release_lock(&ctx, channel.clone(), lock, key, *fence)).await;
                stop_keepalive.send_replace(true);
                join_keepalive(keepalive, &ctx).await;
                holder.step(Op::Revoke { lease }, revoke(&ctx, channel.clone(), lease)).await;
                continue;
            }
        }
        // Abandoned: the keep-alives stop and the lease must expire by itself.
        stop_keepalive.send_replace(true);
        join_keepalive(keepalive, &ctx).await;
        holder.step(Op::Abandon { lease }, std::future::ready(Outcome::Ok(Op::Abandon { lease }))).await;
    }
}

/// A random pause of mean `mean`.
async fn pause(rng: &mut Rng, mean: Duration) {
    let mean_ms = mean.as_millis() as u64;
    if mean_ms > 0 {
        tokio::time::sleep(Duration::from_millis(rng.below(2 * mean_ms + 1))).await;
    }
}

/// Waits for a keep-alive process told to stop; it finishes within one operation timeout.
async fn join_keepalive(task: tokio::task::JoinHandle<()>, ctx: &WorkerContext) {
    if tokio::time::timeout(ctx.op_timeout * 2, task).await.is_err() {
        tracing::warn!("a keep-alive process did not stop in time");
    }
}

/// Keeps `lease` alive every third of its TTL until told to stop or the lease is gone.
async fn keep_alive(
    ctx: Arc<WorkerContext>,
    channel: Channel,
    node: String,
    lease: i64,
    mut process: u64,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(TTL_S as u64 * 1000 / 3);
    let mut client = pb::lease_client::LeaseClient::new(channel);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if *stop.borrow() {
            return;
        }
        let op = Op::KeepAlive { lease, ttl: None };
        recorder.record(Process::Client(process), EventType::Invoke, op.clone(), Some(node.clone()), None);
        let request = pb::LeaseKeepAliveRequest { id: lease };
        let answer = ctx
            .timed(async {
                let mut responses = client.lease_keep_alive(tokio_stream::once(request)).await?.into_inner();
                match responses.message().await? {
                    Some(resp) => Ok(tonic::Response::new(resp)),
                    None => Err(tonic::Status::unavailable("the keep-alive stream ended without an answer")),
                }
            })
            .await;
        match answer {
            Ok(resp) => {
                let ttl = resp.get_ref().ttl;
                let done = Op::KeepAlive { lease, ttl: Some(ttl) };
                recorder.record(Process::Client(process), EventType::Ok, done, Some(node.clone()), None);
                if ttl <= 0 {
                    return;
                }
            }
            // A keep-alive changes nothing the checker relies on when it fails, but it may still
            // have refreshed the lease, so it is `info` and the next one comes from a new process.
            Err(err) => {
                recorder.record(
                    Process::Client(process),
                    EventType::Info,
                    op,
                    Some(node.clone()),
                    Some(err.to_string()),
                );
                process += 1_000_000_000;
            }
        }
    }
}

async fn grant(ctx: &WorkerContext, channel: Channel) -> Outcome {
    let mut client = pb::lease_client::LeaseClient::new(channel);
    match ctx.timed(client.lease_grant(pb::LeaseGrantRequest { ttl: TTL_S, id: 0 })).await {
        Ok(resp) if resp.get_ref().error.is_empty() => {
            Outcome::Ok(Op::Grant { ttl_s: TTL_S, lease: Some(resp.get_ref().id) })
        }
        Ok(resp) => Outcome::Fail(resp.get_ref().error.clone()),
        Err(err) => err.outcome(),
    }
}

/// Locks `lock` with `lease`, then reads the lock key for its create revision.
async fn acquire_lock(ctx: &WorkerContext, channel: Channel, lock: u64, lease: i64) -> Outcome {
    let mut locks = v3lockpb::lock_client::LockClient::new(channel.clone());
    let request = v3lockpb::LockRequest { name: LeaseLock::lock_name(lock), lease };
    let resp = match ctx.timed(locks.lock(request)).await {
        Ok(resp) => resp.into_inner(),
        Err(err) => return err.outcome(),
    };
    // The Lock response's header carries the lock key's create revision, not the moment the lock
    // was granted; the read below happens after the grant, so its revision is a sound upper bound
    // on it (the checker may then miss an overlap, never invent one).
    let key = resp.key;
    let mut kv = pb::kv_client::KvClient::new(channel);
    let read = pb::RangeRequest { key: key.clone(), ..Default::default() };
    let key_text = String::from_utf8_lossy(&key).into_owned();
    match ctx.timed(kv.range(read)).await {
        Ok(found) => match found.get_ref().kvs.first() {
            Some(kv) => Outcome::Ok(Op::Acquire {
                lock,
                lease,
                key: Some(key_text),
                fence: Some(kv.create_revision),
                revision: found.get_ref().header.as_ref().map(|h| h.revision),
            }),
            // Granted, and already gone again (the lease expired): the lock was held, but its
            // fence is unknown, so the acquisition's outcome is too.
            None => Outcome::Info(format!("lock key {key_text} vanished right after it was granted")),
        },
        Err(err) => Outcome::Info(format!("lock granted, reading its key failed: {err}")),
    }
}

/// Puts to the lock's resource if the lock key still has create revision `fence`.
async fn fenced_write(
    ctx: &WorkerContext,
    channel: Channel,
    (lock, lease): (u64, i64),
    key: &str,
    fence: i64,
    process: u64,
) -> Outcome {
    let mut kv = pb::kv_client::KvClient::new(channel);
    let request = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(fence)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: LeaseLock::resource_key(lock),
                value: format!("fence {fence} process {process}").into_bytes(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    match ctx.timed(kv.txn(request)).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            Outcome::Ok(Op::Fenced {
                lock,
                lease,
                key: key.to_string(),
                fence,
                applied: Some(resp.succeeded),
                revision: resp.header.map(|h| h.revision),
            })
        }
        Err(err) => err.outcome(),
    }
}

async fn release_lock(ctx: &WorkerContext, channel: Channel, lock: u64, key: &str, fence: i64) -> Outcome {
    let mut locks = v3lockpb::lock_client::LockClient::new(channel);
    match ctx.timed(locks.unlock(v3lockpb::UnlockRequest { key: key.as_bytes().to_vec() })).await {
        Ok(resp) => Outcome::Ok(Op::Release {
            lock,
            key: key.to_string(),
            fence,
            revision: resp.into_inner().header.map(|h| h.revision),
        }),
        Err(err) => err.outcome(),
    }
}

async fn revoke(ctx: &WorkerContext, channel: Channel, lease: i64) -> Outcome {
    let mut client = pb::lease_client::LeaseClient::new(channel);
    match ctx.timed(client.lease_revoke(pb::LeaseRevokeRequest { id: lease })).await {
        Ok(_) => Outcome::Ok(Op::Revoke { lease }),
        Err(err) => err.outcome(),
    }
}

/// After recovery: waits until every lease went unrefreshed for longer than its TTL plus
/// [`EXPIRY_BOUND`], then lists the leases that still exist, as process `process`.
pub async fn final_listing(ctx: &WorkerContext, channel: Channel, node: &str, recorder: &Recorder, process: u64) {
    tokio::time::sleep(Duration::from_secs(TTL_S as u64) + EXPIRY_BOUND + Duration::from_secs(1)).await;
    let op = Op::Leases { ids: None };
    recorder.record(Process::Client(process), EventType::Invoke, op.clone(), Some(node.to_string()), None);
    let mut client = pb::lease_client::LeaseClient::new(channel);
    match ctx.timed(client.lease_leases(pb::LeaseLeasesRequest {})).await {
        Ok(resp) => {
            let ids = resp.into_inner().leases.iter().map(|l| l.id).collect();
            recorder.record(
                Process::Client(process),
                EventType::Ok,
                Op::Leases { ids: Some(ids) },
                Some(node.into()),
                None,
            );
        }
        Err(err) => {
            recorder.record(Process::Client(process), EventType::Fail, op, Some(node.into()), Some(err.to_string()));
        }
    }
}
