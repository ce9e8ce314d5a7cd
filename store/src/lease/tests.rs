//! Lease table behaviour under paused time: only the primary expires leases, promotion grants a full
//! TTL, renewals extend, and an expired lease cannot be renewed back to life.

use std::sync::Arc;
use std::time::Duration;

use super::{LeaseError, Lessor};
use crate::backend::{Backend, Durability, MemBackend};
use crate::mvcc::LeaseCheck;

fn lessor() -> Lessor {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    crate::format::check_or_init(&*backend).unwrap();
    Lessor::open(backend, 2).unwrap()
}

fn grant(lessor: &Lessor, id: i64, ttl: i64) -> i64 {
    let (ttl, batch) = lessor.prepare_grant(id, ttl).unwrap();
    lessor.backend.write(batch, Durability::Buffered).unwrap();
    lessor.granted(id, ttl);
    ttl
}

#[tokio::test(start_paused = true)]
async fn only_the_primary_expires_and_promotion_grants_a_full_ttl() {
    let lessor = lessor();
    assert_eq!(grant(&lessor, 1, 5), 5);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(lessor.expired(10).is_empty(), "a follower never expires leases");
    assert!(matches!(lessor.renew(1), Err(LeaseError::NotPrimary)));

    lessor.promote();
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(lessor.expired(10).is_empty(), "promotion restarted the TTL");
    assert_eq!(lessor.renew(1).unwrap(), 5);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(lessor.expired(10).is_empty(), "the renewal extended the lease");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(lessor.expired(10), vec![1]);
    assert!(matches!(lessor.renew(1), Err(LeaseError::NotFound)), "an expiring lease cannot be renewed");
    assert_eq!(lessor.lookup(1).unwrap().remaining_ttl, 0);
    assert!(lessor.lease_exists(1), "it exists until the revoke entry is applied");
}

#[tokio::test(start_paused = true)]
async fn grants_are_validated_and_raised_to_the_minimum_ttl() {
    let lessor = lessor();
    assert_eq!(grant(&lessor, 7, 1), 2);
    assert!(matches!(lessor.prepare_grant(7, 10), Err(LeaseError::Exists)));
    assert!(matches!(lessor.prepare_grant(8, super::MAX_LEASE_TTL + 1), Err(LeaseError::TtlTooLarge)));
    assert!(matches!(lessor.prepare_grant(0, 10), Err(LeaseError::NotFound)));
    assert_eq!(lessor.ids(), vec![7]);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_bounded_per_call_and_oldest_first() {
    let lessor = lessor();
    for id in 1..=10 {
        grant(&lessor, id, 2 + id);
    }
    lessor.promote();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(lessor.expired(4), vec![1, 2, 3, 4]);
    assert_eq!(lessor.expired(100), vec![5, 6, 7, 8, 9, 10]);
    assert!(lessor.expired(100).is_empty(), "handed-out leases are retried only after a delay");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(lessor.expired(100).len(), 10, "unrevoked leases are proposed again");
}

#[tokio::test(start_paused = true)]
async fn the_lease_set_survives_a_restart() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    crate::format::check_or_init(&*backend).unwrap();
    let first = Lessor::open(backend.clone(), 2).unwrap();
    grant(&first, 3, 30);
    let reopened = Lessor::open(backend, 2).unwrap();
    assert_eq!(reopened.lookup(3).unwrap().granted_ttl, 30);
}
