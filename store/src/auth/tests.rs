//! etcd's auth-store semantics on [`AuthState`], and persistence through [`AuthStore`].

use super::*;
use crate::backend::{Durability, MemBackend};

fn apply(state: &AuthState, caller: Option<&str>, op: AuthOp) -> Result<AuthState, StoreError> {
    state.apply(caller, &op).map(|(next, _)| next)
}

fn grant(key: &str, range_end: &str, perm_type: PermType) -> Permission {
    Permission { perm_type, key: key.as_bytes().to_vec(), range_end: range_end.as_bytes().to_vec() }
}

/// root (root role) and alice (role `app`: readwrite on `app/` prefix, read on `shared`).
fn enabled_state() -> AuthState {
    let mut s = AuthState::default();
    for op in [
        AuthOp::UserAdd { name: "root".into(), password_hash: Some("h".into()) },
        AuthOp::UserAdd { name: "alice".into(), password_hash: Some("h".into()) },
        AuthOp::RoleAdd { name: "app".into() },
        AuthOp::RoleGrantPermission { role: "app".into(), permission: grant("app/", "app0", PermType::ReadWrite) },
        AuthOp::RoleGrantPermission { role: "app".into(), permission: grant("shared", "", PermType::Read) },
        AuthOp::UserGrantRole { user: "alice".into(), role: "app".into() },
        AuthOp::UserGrantRole { user: "root".into(), role: ROOT_ROLE.into() },
        AuthOp::Enable { token_key: b"k".to_vec() },
    ] {
        s = apply(&s, None, op).unwrap();
    }
    s
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let empty = AuthState::default();
    assert_eq!(apply(&empty, None, AuthOp::Enable { token_key: vec![] }), Err(StoreError::RootUserNotExist));
    let with_root = apply(&empty, None, AuthOp::UserAdd { name: "root".into(), password_hash: None }).unwrap();
    assert_eq!(apply(&with_root, None, AuthOp::Enable { token_key: vec![] }), Err(StoreError::RootRoleNotExist));
    let state = enabled_state();
    assert!(state.enabled);
    assert_eq!(state.revision, 8);
}

#[test]
fn only_root_may_change_auth_once_it_is_on_and_root_cannot_be_locked_out() {
    let state = enabled_state();
    let add = AuthOp::RoleAdd { name: "x".into() };
    assert_eq!(apply(&state, None, add.clone()), Err(StoreError::UserEmpty));
    assert_eq!(apply(&state, Some("alice"), add.clone()), Err(StoreError::PermissionDenied));
    assert_eq!(apply(&state, Some("ghost"), add.clone()), Err(StoreError::UserNotFound));
    assert!(apply(&state, Some("root"), add).is_ok());
    assert_eq!(
        apply(&state, Some("root"), AuthOp::UserDelete { name: "root".into() }),
        Err(StoreError::InvalidAuthMgmt)
    );
    assert_eq!(
        apply(&state, Some("root"), AuthOp::UserRevokeRole { user: "root".into(), role: ROOT_ROLE.into() }),
        Err(StoreError::InvalidAuthMgmt)
    );
    assert_eq!(
        apply(&state, Some("root"), AuthOp::RoleDelete { name: ROOT_ROLE.into() }),
        Err(StoreError::InvalidAuthMgmt)
    );
}

#[test]
fn permissions_follow_grants_and_revocations() {
    let state = enabled_state();
    let alice = Some("alice");
    assert_eq!(state.check(alice, b"app/x", b"", Access::Write), Ok(()));
    assert_eq!(state.check(alice, b"app/", b"app0", Access::Read), Ok(()), "the whole prefix");
    assert_eq!(state.check(alice, b"shared", b"", Access::Read), Ok(()));
    assert_eq!(state.check(alice, b"shared", b"", Access::Write), Err(StoreError::PermissionDenied));
    assert_eq!(state.check(alice, b"other", b"", Access::Read), Err(StoreError::PermissionDenied));
    assert_eq!(state.check(alice, b"a", b"\0", Access::Read), Err(StoreError::PermissionDenied), "everything");
    assert_eq!(state.check(None, b"app/x", b"", Access::Read), Err(StoreError::UserEmpty));
    assert_eq!(state.check(Some("root"), b"a", b"\0", Access::Write), Ok(()));

    let revoked =
        apply(&state, Some("root"), AuthOp::UserRevokeRole { user: "alice".into(), role: "app".into() }).unwrap();
    assert_eq!(revoked.check(alice, b"app/x", b"", Access::Write), Err(StoreError::PermissionDenied));
    let role_gone = apply(&state, Some("root"), AuthOp::RoleDelete { name: "app".into() }).unwrap();
    assert!(role_gone.users["alice"].roles.is_empty(), "deleting a role revokes it everywhere");
    let narrowed = apply(
        &state,
        Some("root"),
        AuthOp::RoleRevokePermission { role: "app".into(), key: b"app/".to_vec(), range_end: b"app0".to_vec() },
    )
    .unwrap();
    assert_eq!(narrowed.check(alice, b"app/x", b"", Access::Read), Err(StoreError::PermissionDenied));
    assert_eq!(
        apply(
            &narrowed,
            Some("root"),
            AuthOp::RoleRevokePermission { role: "app".into(), key: b"app/".to_vec(), range_end: b"app0".to_vec() }
        ),
        Err(StoreError::PermissionNotGranted)
    );
    let disabled = apply(&state, Some("root"), AuthOp::Disable).unwrap();
    assert_eq!(disabled.check(None, b"anything", b"", Access::Write), Ok(()), "auth off checks nothing");
}

#[test]
fn bad_auth_changes_are_refused_with_etcds_errors() {
    let state = enabled_state();
    let root = Some("root");
    let cases = [
        (AuthOp::UserAdd { name: "".into(), password_hash: None }, StoreError::UserEmpty),
        (AuthOp::UserAdd { name: "alice".into(), password_hash: None }, StoreError::UserAlreadyExist),
        (AuthOp::UserDelete { name: "bob".into() }, StoreError::UserNotFound),
        (AuthOp::UserGrantRole { user: "alice".into(), role: "nope".into() }, StoreError::RoleNotFound),
        (AuthOp::UserRevokeRole { user: "alice".into(), role: "nope".into() }, StoreError::RoleNotGranted),
        (AuthOp::RoleAdd { name: "".into() }, StoreError::RoleEmpty),
        (AuthOp::RoleAdd { name: "app".into() }, StoreError::RoleAlreadyExist),
        (
            AuthOp::RoleGrantPermission { role: "app".into(), permission: grant("z", "a", PermType::Read) },
            StoreError::InvalidAuthMgmt,
        ),
        (
            AuthOp::RoleGrantPermission { role: "ghost".into(), permission: grant("a", "", PermType::Read) },
            StoreError::RoleNotFound,
        ),
    ];
    for (op, expected) in cases {
        assert_eq!(apply(&state, root, op.clone()), Err(expected), "{op:?}");
    }
}

#[test]
fn tokens_die_with_a_password_change_and_survive_role_changes() {
    let state = enabled_state();
    let alice = &state.users["alice"];
    let token = token::issue(&state.token_key, "alice", alice.generation, 10_000);
    assert_eq!(state.user_for_token(&token, 5).as_deref(), Some("alice"));
    let regranted =
        apply(&state, Some("root"), AuthOp::UserRevokeRole { user: "alice".into(), role: "app".into() }).unwrap();
    assert_eq!(regranted.user_for_token(&token, 5).as_deref(), Some("alice"));
    let changed =
        apply(&state, Some("root"), AuthOp::UserChangePassword { name: "alice".into(), password_hash: "new".into() })
            .unwrap();
    assert_eq!(changed.user_for_token(&token, 5), None);
    let reenabled = apply(
        &apply(&state, Some("root"), AuthOp::Disable).unwrap(),
        None,
        AuthOp::Enable { token_key: b"other".to_vec() },
    )
    .unwrap();
    assert_eq!(reenabled.user_for_token(&token, 5), None, "a new key on every enable");
}

#[test]
fn the_auth_state_survives_a_reopen() {
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::new());
    let store = AuthStore::open(backend.clone()).unwrap();
    let mut state = (*store.state()).clone();
    for op in [
        AuthOp::UserAdd { name: "root".into(), password_hash: Some("h".into()) },
        AuthOp::UserGrantRole { user: "root".into(), role: ROOT_ROLE.into() },
        AuthOp::RoleAdd { name: "app".into() },
        AuthOp::RoleGrantPermission { role: "app".into(), permission: grant("a", "b", PermType::Write) },
        AuthOp::Enable { token_key: b"key".to_vec() },
        AuthOp::RoleAdd { name: "gone".into() },
    ] {
        let (next, batch) = state.apply(Some("root"), &op).unwrap();
        backend.write(batch, Durability::Synced).unwrap();
        store.committed(next.clone());
        state = next;
    }
    let (next, batch) = state.apply(Some("root"), &AuthOp::RoleDelete { name: "gone".into() }).unwrap();
    backend.write(batch, Durability::Synced).unwrap();
    let reopened = AuthStore::open(backend).unwrap();
    assert_eq!(*reopened.state(), next);
}
