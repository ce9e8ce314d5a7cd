//! Lock and Unlock: a mutex per name, held by the oldest key under `NAME/`.
//!
//! Invariant: `lock` returns only after [`Coordinator::wait_for_turn`] granted the caller's key;
//! `unlock` deletes only a lock key (`NAME/<lease hex>` attached to that lease) and only the
//! version it read, so it never removes an ordinary key or a newer holder's key.

use super::{Coordinator, Held, is_lease_key, prefix_of};
use crate::error::StoreError;
use crate::mvcc::RangeRequest;

impl Coordinator {
    /// Acquires lock `name` for `lease`, waiting behind older holders. Locking again with the same
    /// lease returns the same key (one acquisition per lease, as in etcd).
    pub async fn lock(&self, caller: Option<&str>, name: &[u8], lease: i64) -> Result<Held, StoreError> {
        let held = self.acquire(caller, &prefix_of(name)?, lease, b"", false).await?;
        tracing::debug!(key = %String::from_utf8_lossy(&held.key), token = held.create_revision, granted_at = held.granted_at, "lock granted");
        Ok(held)
    }

    /// Releases the lock held (or waited for) through `key`; the revision that deleted it.
    /// Fails with [`StoreError::LockNotHeld`] when no such key exists and with
    /// [`StoreError::NotLockKey`] when `key` is not a lock key; nothing changes then.
    pub async fn unlock(&self, caller: Option<&str>, key: &[u8]) -> Result<i64, StoreError> {
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        let not_held = || StoreError::LockNotHeld(String::from_utf8_lossy(key).into_owned());
        let resp = self.read(caller, RangeRequest { key: key.to_vec(), keys_only: true, ..Default::default() }).await?;
        let kv = resp.kvs.into_iter().next().ok_or_else(not_held)?;
        if !is_lease_key(&kv) {
            return Err(StoreError::NotLockKey(String::from_utf8_lossy(key).into_owned()));
        }
        self.delete_if_current(caller, key, kv.create_revision).await?.ok_or_else(not_held)
    }
}
