//! Unit tests of the pure parts of locks and elections: key naming, lock-key recognition, leader
//! keys and the candidate order Observe computes. Whole-service behaviour is tested through real
//! clients in `store/tests/lock_election.rs` and `tests/cluster_locks.rs`.

use super::election::{Candidates, check_leader_key};
use super::*;
use crate::mvcc::{Event, EventKind};

fn kv(key: &str, create_revision: i64, mod_revision: i64, lease: i64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision,
        mod_revision,
        version: 1,
        value: format!("v{mod_revision}").into_bytes(),
        lease,
    }
}

#[test]
fn lock_keys_are_name_slash_lease_in_hex_like_etcds_recipe() {
    let prefix = prefix_of(b"jobs").unwrap();
    assert_eq!(prefix, b"jobs/");
    assert_eq!(key_for(&prefix, 0x694d_7a3c_11ab), b"jobs/694d7a3c11ab");
    assert_eq!(prefix_range_end(&prefix), b"jobs0");
    assert_eq!(prefix_of(b""), Err(StoreError::EmptyName));
}

#[test]
fn only_keys_named_after_their_own_lease_are_lock_keys() {
    assert!(is_lease_key(&kv("jobs/1f", 3, 3, 0x1f)));
    assert!(!is_lease_key(&kv("jobs/1f", 3, 3, 0x20)), "named after another lease");
    assert!(!is_lease_key(&kv("jobs/1f", 3, 3, 0)), "no lease");
    assert!(!is_lease_key(&kv("jobs1f", 3, 3, 0x1f)), "no separator");
    assert!(!is_lease_key(&kv("plain", 3, 3, 0x1f)));
}

#[test]
fn a_leader_key_must_name_a_live_candidacy_under_its_election() {
    let good = LeaderKey { name: b"e".to_vec(), key: b"e/1f".to_vec(), rev: 7, lease: 0x1f };
    assert_eq!(check_leader_key(&good), Ok(()));
    assert_eq!(check_leader_key(&LeaderKey { name: Vec::new(), ..good.clone() }), Err(StoreError::EmptyName));
    assert_eq!(check_leader_key(&LeaderKey { key: Vec::new(), ..good.clone() }), Err(StoreError::EmptyKey));
    // Revision 0 would match a missing key in a create-revision compare and recreate it.
    assert_eq!(check_leader_key(&LeaderKey { rev: 0, ..good.clone() }), Err(StoreError::ElectionNotLeader));
    assert_eq!(
        check_leader_key(&LeaderKey { key: b"other/1f".to_vec(), ..good.clone() }),
        Err(StoreError::ElectionNotLeader)
    );
}

#[test]
fn the_oldest_candidate_leads_and_deletes_hand_over_in_create_order() {
    let mut candidates = Candidates::default();
    assert!(candidates.leader().is_none());
    candidates.put(kv("e/b", 5, 5, 0xb));
    candidates.put(kv("e/a", 3, 3, 0xa));
    candidates.put(kv("e/c", 9, 9, 0xc));
    assert_eq!(candidates.leader().map(|kv| kv.key.as_slice()), Some(&b"e/a"[..]));

    // A proclamation changes the leader's value, not the order.
    candidates.apply(&Event { kind: EventKind::Put, kv: kv("e/a", 3, 10, 0xa), prev_kv: None });
    assert_eq!(candidates.leader().map(|kv| kv.mod_revision), Some(10));

    let delete = |key: &str, at: i64| Event {
        kind: EventKind::Delete,
        kv: KeyValue { key: key.as_bytes().to_vec(), mod_revision: at, ..Default::default() },
        prev_kv: None,
    };
    candidates.apply(&delete("e/a", 11));
    assert_eq!(candidates.leader().map(|kv| kv.key.as_slice()), Some(&b"e/b"[..]));
    // Recreated after deletion: a new create revision puts it at the back of the queue.
    candidates.apply(&Event { kind: EventKind::Put, kv: kv("e/a", 12, 12, 0xa), prev_kv: None });
    candidates.apply(&delete("e/b", 13));
    assert_eq!(candidates.leader().map(|kv| kv.key.as_slice()), Some(&b"e/c"[..]));
    candidates.apply(&delete("e/c", 14));
    assert_eq!(candidates.leader().map(|kv| (kv.key.as_slice(), kv.create_revision)), Some((&b"e/a"[..], 12)));
}
