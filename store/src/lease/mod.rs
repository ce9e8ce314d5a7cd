//! Leases: time-bounded grants that keys attach to, revoked (deleting their keys) by the log.
//!
//! The replicated part — which leases exist, their granted TTL, which keys are attached — changes
//! only through applied log entries (grant, revoke, expire). Expiry deadlines are leader-local and not
//! replicated, as in etcd: only the member that leads (the "primary") tracks and renews them, and when
//! a member becomes primary it extends every lease by its full TTL, so no lease expires early because
//! leadership moved. Expired leases are revoked by proposing an `Expire` entry; nothing here deletes
//! anything on its own.
//!
//! Concurrency: `state` is a mutex held for short, non-blocking sections (map updates and lookups),
//! never across I/O or `.await`. The apply path is the only writer of the lease set; keep-alive
//! handlers and the expiry loop only touch deadlines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, BackendError, Cf, WriteBatch};
use crate::mvcc::{LeaseCheck, MvccError, WriteTxn, lease_attachment_prefix};

/// The largest TTL a lease may have, in seconds (etcd's limit).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

const LEASE_RECORD_TAG: u8 = 0x01;

/// Lease errors. `Display` texts are etcd's, without the `etcdserver: ` prefix.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// No such lease.
    #[error("requested lease not found")]
    NotFound,
    /// A grant named an existing lease id.
    #[error("lease already exists")]
    Exists,
    /// A grant asked for more than [`MAX_LEASE_TTL`].
    #[error("too large lease TTL")]
    TtlTooLarge,
    /// This member does not lead, so it does not track expiry.
    #[error("not leader")]
    NotPrimary,
    /// Reading attached keys failed.
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    /// Granted TTL in seconds (after raising to the minimum).
    ttl: i64,
    /// When the lease expires (or, once `revoking`, when to propose its revocation again);
    /// meaningful only while primary.
    deadline: Instant,
    /// Expired and handed to the expiry loop: renewals fail from then on, even before the revoke
    /// entry is applied.
    revoking: bool,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<i64, Lease>,
    /// Min-heap of (deadline, id). Entries go stale when a lease is renewed or revoked; a stale entry
    /// is recognised by comparing with the map and dropped. Bounded by one live entry per lease plus
    /// stale ones, which `compact_heap` discards when they outnumber the leases.
    expiry: BinaryHeap<Reverse<(Instant, i64)>>,
    primary: bool,
}

/// A lease as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseInfo {
    /// Lease id.
    pub id: i64,
    /// Granted TTL in seconds.
    pub granted_ttl: i64,
    /// Remaining seconds (granted TTL when this member is not primary).
    pub remaining_ttl: i64,
}

/// The lease table of one member.
pub struct Lessor {
    backend: Arc<dyn Backend>,
    min_ttl: i64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Lessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lessor").field("min_ttl", &self.min_ttl).finish_non_exhaustive()
    }
}

fn record_key(id: i64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LEASE_RECORD_TAG;
    key[1..].copy_from_slice(&(id as u64).to_be_bytes());
    key
}

impl Lessor {
    /// Loads the lease set from the backend. `min_ttl` is the smallest TTL granted (seconds).
    pub fn open(backend: Arc<dyn Backend>, min_ttl: i64) -> Result<Self, LeaseError> {
        let lessor = Self { backend, min_ttl: min_ttl.max(1), state: Mutex::new(State::default()) };
        lessor.reload()?;
        Ok(lessor)
    }

    /// Re-reads the lease set after the backend's contents were replaced (snapshot install).
    pub fn reload(&self) -> Result<(), LeaseError> {
        let mut leases = HashMap::new();
        let mut cursor = self.backend.cursor(Cf::Leases);
        cursor.seek(&[LEASE_RECORD_TAG]);
        let now = Instant::now();
        while let Some((key, value)) = cursor.entry() {
            if key.first() != Some(&LEASE_RECORD_TAG) {
                break;
            }
            let (Ok(id), Ok(ttl)) = (<[u8; 8]>::try_from(&key[1..]), <[u8; 8]>::try_from(value)) else {
                return Err(LeaseError::Mvcc(MvccError::Corrupt("malformed lease record".into())));
            };
            let ttl = i64::from_be_bytes(ttl);
            leases.insert(u64::from_be_bytes(id) as i64, Lease { ttl, deadline: now + secs(ttl), revoking: false });
            cursor.next();
        }
        cursor.status()?;
        let mut state = self.lock();
        let primary = state.primary;
        *state = State { expiry: leases.iter().map(|(&id, l)| Reverse((l.deadline, id))).collect(), leases, primary };
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The smallest TTL this lessor grants.
    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// Validates a grant and returns the granted TTL plus the batch that records it. Apply path only;
    /// call [`Lessor::granted`] after the batch is written.
    pub fn prepare_grant(&self, id: i64, ttl: i64) -> Result<(i64, WriteBatch), LeaseError> {
        if id == 0 {
            return Err(LeaseError::NotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(LeaseError::TtlTooLarge);
        }
        if self.lock().leases.contains_key(&id) {
            return Err(LeaseError::Exists);
        }
        let ttl = ttl.max(self.min_ttl);
        let mut batch = WriteBatch::new();
        batch.put(Cf::Leases, record_key(id), ttl.to_be_bytes());
        Ok((ttl, batch))
    }

    /// Records a written grant in memory.
    pub fn granted(&self, id: i64, ttl: i64) {
        let deadline = Instant::now() + secs(ttl);
        let mut state = self.lock();
        state.leases.insert(id, Lease { ttl, deadline, revoking: false });
        state.expiry.push(Reverse((deadline, id)));
    }

    /// Adds the revocation of lease `id` to `txn`: its attached keys are deleted (one revision), and
    /// the returned batch removes the lease record and attachments. Apply path only; call
    /// [`Lessor::revoked`] once committed.
    pub fn prepare_revoke(&self, txn: &mut WriteTxn<'_>, id: i64) -> Result<WriteBatch, LeaseError> {
        if !self.lock().leases.contains_key(&id) {
            return Err(LeaseError::NotFound);
        }
        for key in self.attached_keys(id)? {
            txn.delete_range(&key, &[], false)?;
        }
        let prefix = lease_attachment_prefix(id);
        let mut batch = WriteBatch::new();
        batch.delete(Cf::Leases, record_key(id));
        let end = crate::backend::prefix_end(&prefix).unwrap_or_else(|| vec![0xff; prefix.len() + 1]);
        batch.delete_range(Cf::Leases, prefix, end);
        Ok(batch)
    }

    /// Forgets a revoked lease.
    pub fn revoked(&self, id: i64) {
        self.lock().leases.remove(&id);
    }

    /// Keys attached to lease `id`, in key order.
    pub fn attached_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, LeaseError> {
        let prefix = lease_attachment_prefix(id);
        let mut keys = Vec::new();
        let mut cursor = self.backend.cursor(Cf::Leases);
        cursor.seek(&prefix);
        while let Some((key, _)) = cursor.entry() {
            let Some(user_key) = key.strip_prefix(prefix.as_slice()) else { break };
            keys.push(user_key.to_vec());
            cursor.next();
        }
        cursor.status()?;
        Ok(keys)
    }

    /// Information about one lease.
    pub fn lookup(&self, id: i64) -> Option<LeaseInfo> {
        let state = self.lock();
        let lease = state.leases.get(&id)?;
        let remaining = if lease.revoking {
            0
        } else if state.primary {
            lease.deadline.saturating_duration_since(Instant::now()).as_secs() as i64
        } else {
            lease.ttl
        };
        Some(LeaseInfo { id, granted_ttl: lease.ttl, remaining_ttl: remaining })
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    /// True when no lease exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Extends a lease by its TTL; only the primary renews. An expired lease awaiting revocation
    /// counts as gone.
    pub fn renew(&self, id: i64) -> Result<i64, LeaseError> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.primary {
            return Err(LeaseError::NotPrimary);
        }
        let lease = state.leases.get_mut(&id).ok_or(LeaseError::NotFound)?;
        if lease.revoking || lease.deadline <= now {
            return Err(LeaseError::NotFound);
        }
        lease.deadline = now + secs(lease.ttl);
        if crate::planted::active(crate::planted::PlantedBug::ShortKeepAlive) {
            lease.deadline = now + secs(lease.ttl) / 4;
        }
        let (ttl, deadline) = (lease.ttl, lease.deadline);
        state.expiry.push(Reverse((deadline, id)));
        compact_heap(&mut state);
        Ok(ttl)
    }

    /// Becomes primary: every lease gets a full TTL from now.
    pub fn promote(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.primary = true;
        let mut heap = BinaryHeap::with_capacity(state.leases.len());
        for (&id, lease) in state.leases.iter_mut() {
            lease.deadline = now + secs(lease.ttl);
            lease.revoking = false;
            heap.push(Reverse((lease.deadline, id)));
        }
        state.expiry = heap;
    }

    /// Stops being primary.
    pub fn demote(&self) {
        self.lock().primary = false;
    }

    /// True while this member tracks expiry.
    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// Up to `max` leases whose deadline has passed, oldest first; empty unless primary.
    pub fn expired(&self, max: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut requeue = Vec::new();
        while out.len() < max {
            let Some(&Reverse((deadline, id))) = state.expiry.peek() else { break };
            if deadline > now {
                break;
            }
            state.expiry.pop();
            match state.leases.get(&id) {
                // Only the entry matching the lease's current deadline is live.
                Some(lease) if lease.deadline == deadline => {
                    out.push(id);
                    // Keep it queued a little later in case the revoke proposal is lost.
                    requeue.push(Reverse((now + Duration::from_secs(1), id)));
                }
                _ => {}
            }
        }
        for entry in requeue {
            if let Some(lease) = state.leases.get_mut(&entry.0.1) {
                lease.deadline = entry.0.0;
                lease.revoking = true;
            }
            state.expiry.push(entry);
        }
        out
    }
}

impl LeaseCheck for Lessor {
    fn lease_exists(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(0, MAX_LEASE_TTL) as u64)
}

fn compact_heap(state: &mut State) {
    if state.expiry.len() > 2 * state.leases.len() + 64 {
        let live: BinaryHeap<_> = state.leases.iter().map(|(&id, lease)| Reverse((lease.deadline, id))).collect();
        state.expiry = live;
    }
}

#[cfg(test)]
mod tests;
