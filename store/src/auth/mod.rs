//! Authentication and role-based access control with etcd's semantics: users with bcrypt-hashed
//! passwords, roles granting read, write or readwrite on keys and key ranges, the special `root`
//! user and role, and an on/off switch.
//!
//! The auth state is part of the replicated state machine: every change is a log entry
//! ([`AuthOp`]) applied deterministically on every member, persisted in the `auth` column family in
//! the same batch as the applied log id, and carried by snapshots. Passwords are hashed and token
//! keys drawn at random *before* proposing, so apply never uses randomness.
//!
//! Where checks happen:
//! - writes (put, delete, txn, lease revoke, compaction, auth changes) are checked in apply against
//!   the state at that log position, with the user the API layer authenticated; a refused entry
//!   changes nothing, and every member refuses it alike;
//! - reads and watches are checked by the API layer against the local state after the read barrier.
//!
//! Concurrency: `state` is replaced (never mutated in place) by the apply path after its batch is
//! written; readers clone the `Arc` and never hold the lock across anything else.

pub mod perms;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, Cf, WriteBatch};
use crate::error::StoreError;
use crate::mvcc::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use crate::raft::{decode, encode};
use perms::Interval;

/// Looks up the keys attached to a lease (none for a lease that does not exist).
pub type LeaseKeys<'a> = dyn Fn(i64) -> Result<Vec<Vec<u8>>, StoreError> + 'a;

/// The user that may enable authentication, and that cannot be deleted while it is on.
pub const ROOT_USER: &str = "root";
/// The role that grants everything, including administration.
pub const ROOT_ROLE: &str = "root";

const ENABLED_KEY: &[u8] = b"enabled";
const REVISION_KEY: &[u8] = b"revision";
const TOKEN_KEY_KEY: &[u8] = b"token_key";
const USER_PREFIX: &[u8] = b"user/";
const ROLE_PREFIX: &[u8] = b"role/";

/// What a permission grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermType {
    /// Range reads and watches.
    Read,
    /// Puts and deletes.
    Write,
    /// Both.
    ReadWrite,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading.
    Read,
    /// Writing.
    Write,
}

impl PermType {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermType::ReadWrite, _) | (PermType::Read, Access::Read) | (PermType::Write, Access::Write)
        )
    }
}

/// A grant on a key or key range (etcd's `range_end` conventions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it grants.
    pub perm_type: PermType,
    /// Key or range start.
    #[serde(with = "crate::serde_bytes")]
    pub key: Vec<u8>,
    /// Range end: empty for the key alone, `"\0"` for every key from `key` on.
    #[serde(with = "crate::serde_bytes")]
    pub range_end: Vec<u8>,
}

/// A user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Name.
    pub name: String,
    /// bcrypt hash; `None` for a user that can only authenticate with a client certificate.
    pub password_hash: Option<String>,
    /// Granted roles.
    pub roles: BTreeSet<String>,
    /// The auth revision that set the password (or created the user); tokens carry it, so a new
    /// password or a re-created user invalidates older tokens.
    pub generation: u64,
}

/// A role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Name.
    pub name: String,
    /// Grants, sorted by key.
    pub permissions: Vec<Permission>,
}

/// A change to the auth state, as recorded in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// Turn authentication on, with a fresh token-signing key.
    Enable {
        /// Random key drawn by the proposing member.
        token_key: Vec<u8>,
    },
    /// Turn authentication off.
    Disable,
    /// Create a user.
    UserAdd {
        /// Name.
        name: String,
        /// bcrypt hash, `None` for a certificate-only user.
        password_hash: Option<String>,
    },
    /// Delete a user.
    UserDelete {
        /// Name.
        name: String,
    },
    /// Replace a user's password.
    UserChangePassword {
        /// Name.
        name: String,
        /// New bcrypt hash.
        password_hash: String,
    },
    /// Grant a role to a user.
    UserGrantRole {
        /// User.
        user: String,
        /// Role.
        role: String,
    },
    /// Revoke a role from a user.
    UserRevokeRole {
        /// User.
        user: String,
        /// Role.
        role: String,
    },
    /// Create a role.
    RoleAdd {
        /// Name.
        name: String,
    },
    /// Delete a role (and revoke it from every user).
    RoleDelete {
        /// Name.
        name: String,
    },
    /// Add or update a grant of a role.
    RoleGrantPermission {
        /// Role.
        role: String,
        /// The grant.
        permission: Permission,
    },
    /// Remove a grant (matched by key and range end) from a role.
    RoleRevokePermission {
        /// Role.
        role: String,
        /// Key.
        #[serde(with = "crate::serde_bytes")]
        key: Vec<u8>,
        /// Range end.
        #[serde(with = "crate::serde_bytes")]
        range_end: Vec<u8>,
    },
}

impl AuthOp {
    /// A short description for logs (no secrets).
    pub fn describe(&self) -> String {
        match self {
            AuthOp::Enable { .. } => "auth enable".into(),
            AuthOp::Disable => "auth disable".into(),
            AuthOp::UserAdd { name, .. } => format!("user add {name}"),
            AuthOp::UserDelete { name } => format!("user delete {name}"),
            AuthOp::UserChangePassword { name, .. } => format!("user passwd {name}"),
            AuthOp::UserGrantRole { user, role } => format!("user grant-role {user} {role}"),
            AuthOp::UserRevokeRole { user, role } => format!("user revoke-role {user} {role}"),
            AuthOp::RoleAdd { name } => format!("role add {name}"),
            AuthOp::RoleDelete { name } => format!("role delete {name}"),
            AuthOp::RoleGrantPermission { role, .. } => format!("role grant-permission {role}"),
            AuthOp::RoleRevokePermission { role, .. } => format!("role revoke-permission {role}"),
        }
    }
}

/// The auth state at one log position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthState {
    /// Whether requests are checked.
    pub enabled: bool,
    /// Incremented by every change.
    pub revision: u64,
    /// Token-signing key (set by the last enable).
    pub token_key: Vec<u8>,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name (`root` is an ordinary entry once created).
    pub roles: BTreeMap<String, Role>,
}

impl AuthState {
    fn is_root(&self, user: &User) -> bool {
        user.roles.contains(ROOT_ROLE)
    }

    /// etcd's admin check: passes when auth is off, else needs a user with the root role.
    pub fn check_admin(&self, caller: Option<&str>) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let name = caller.filter(|c| !c.is_empty()).ok_or(StoreError::UserEmpty)?;
        let user = self.users.get(name).ok_or(StoreError::UserNotFound)?;
        if !self.is_root(user) {
            return Err(StoreError::PermissionDenied);
        }
        Ok(())
    }

    /// True when auth is off or `caller` has the root role.
    pub fn is_admin(&self, caller: Option<&str>) -> bool {
        self.check_admin(caller).is_ok()
    }

    /// Checks `access` to `[key, range_end)` (etcd conventions) for `caller`.
    pub fn check(&self, caller: Option<&str>, key: &[u8], range_end: &[u8], access: Access) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let name = caller.filter(|c| !c.is_empty()).ok_or(StoreError::UserEmpty)?;
        let user = self.users.get(name).ok_or(StoreError::PermissionDenied)?;
        if self.is_root(user) {
            return Ok(());
        }
        let granted: Vec<Interval> = user
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flat_map(|role| &role.permissions)
            .filter(|perm| perm.perm_type.allows(access))
            .map(|perm| Interval::from_etcd(&perm.key, &perm.range_end))
            .collect();
        if perms::covers(granted, &Interval::from_etcd(key, range_end)) {
            Ok(())
        } else {
            Err(StoreError::PermissionDenied)
        }
    }

    /// Requires an authenticated user when auth is on (etcd's `requireAuthInfo`).
    pub fn check_authenticated(&self, caller: Option<&str>) -> Result<(), StoreError> {
        if self.enabled && caller.is_none_or(str::is_empty) {
            return Err(StoreError::UserEmpty);
        }
        Ok(())
    }

    /// etcd's checks for a put: write on the key; write on every key already attached to the lease
    /// it attaches (else the user could not revoke that lease); read when it asks for the previous
    /// value.
    pub fn check_put(
        &self,
        caller: Option<&str>,
        req: &PutRequest,
        lease_keys: &LeaseKeys<'_>,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        self.check(caller, &req.key, &[], Access::Write)?;
        if req.lease != 0 {
            self.check_lease_keys(caller, req.lease, lease_keys)?;
        }
        if req.prev_kv {
            self.check(caller, &req.key, &[], Access::Read)?;
        }
        Ok(())
    }

    /// Write on every key attached to a lease, unless the caller is an administrator.
    pub fn check_lease_keys(
        &self,
        caller: Option<&str>,
        lease: i64,
        lease_keys: &LeaseKeys<'_>,
    ) -> Result<(), StoreError> {
        if self.is_admin(caller) {
            return Ok(());
        }
        for key in lease_keys(lease)? {
            self.check(caller, &key, &[], Access::Write)?;
        }
        Ok(())
    }

    /// etcd's checks for a range delete: write on the range, and read when it returns what it
    /// deleted.
    pub fn check_delete(&self, caller: Option<&str>, req: &DeleteRangeRequest) -> Result<(), StoreError> {
        if req.prev_kv {
            self.check(caller, &req.key, &req.range_end, Access::Read)?;
        }
        self.check(caller, &req.key, &req.range_end, Access::Write)
    }

    /// etcd's checks for a transaction: read on every compared key, and the checks of every
    /// operation in *both* branches, nested transactions included — so a transaction touching any
    /// key the caller may not use is refused whichever branch would run.
    pub fn check_txn(
        &self,
        caller: Option<&str>,
        txn: &TxnRequest,
        lease_keys: &LeaseKeys<'_>,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        for compare in &txn.compare {
            self.check(caller, &compare.key, &compare.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(range) => self.check(caller, &range.key, &range.range_end, Access::Read)?,
                RequestOp::Put(put) => self.check_put(caller, put, lease_keys)?,
                RequestOp::DeleteRange(delete) => self.check_delete(caller, delete)?,
                RequestOp::Txn(nested) => self.check_txn(caller, nested, lease_keys)?,
            }
        }
        Ok(())
    }

    /// The user a token names, if the token is valid now and the user still has the password it
    /// was issued for.
    pub fn user_for_token(&self, token: &str, now_ms: u64) -> Option<String> {
        let (name, generation) = token::verify(&self.token_key, token, now_ms)?;
        let user = self.users.get(&name)?;
        (user.generation == generation).then_some(name)
    }

    /// Applies `op` by `caller` to a copy of this state; returns the new state and the backend
    /// writes that persist the change. Refusals are etcd's errors and change nothing.
    pub fn apply(&self, caller: Option<&str>, op: &AuthOp) -> Result<(AuthState, WriteBatch), StoreError> {
        self.check_admin(caller)?;
        let mut next = self.clone();
        let mut batch = WriteBatch::new();
        let revision = self.revision + 1;
        let put_user = |batch: &mut WriteBatch, user: &User| -> Result<(), StoreError> {
            batch.put(Cf::Auth, key(USER_PREFIX, &user.name), encode(user).map_err(internal)?);
            Ok(())
        };
        match op {
            AuthOp::Enable { token_key } => {
                if self.enabled {
                    // etcd ignores a repeated enable.
                    return Ok((next, batch));
                }
                let root = self.users.get(ROOT_USER).ok_or(StoreError::RootUserNotExist)?;
                if !self.is_root(root) {
                    return Err(StoreError::RootRoleNotExist);
                }
                next.enabled = true;
                next.token_key = token_key.clone();
                batch.put(Cf::Auth, ENABLED_KEY, vec![1]);
                batch.put(Cf::Auth, TOKEN_KEY_KEY, token_key.clone());
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok((next, batch));
                }
                next.enabled = false;
                batch.put(Cf::Auth, ENABLED_KEY, vec![0]);
            }
            AuthOp::UserAdd { name, password_hash } => {
                if name.is_empty() {
                    return Err(StoreError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(StoreError::UserAlreadyExist);
                }
                let user = User {
                    name: name.clone(),
                    password_hash: password_hash.clone(),
                    roles: BTreeSet::new(),
                    generation: revision,
                };
                put_user(&mut batch, &user)?;
                next.users.insert(name.clone(), user);
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                next.users.remove(name).ok_or(StoreError::UserNotFound)?;
                batch.delete(Cf::Auth, key(USER_PREFIX, name));
            }
            AuthOp::UserChangePassword { name, password_hash } => {
                let user = next.users.get_mut(name).ok_or(StoreError::UserNotFound)?;
                if user.password_hash.is_some() {
                    user.password_hash = Some(password_hash.clone());
                }
                user.generation = revision;
                put_user(&mut batch, user)?;
            }
            AuthOp::UserGrantRole { user, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(StoreError::RoleNotFound);
                }
                let entry = next.users.get_mut(user).ok_or(StoreError::UserNotFound)?;
                if !entry.roles.insert(role.clone()) {
                    // etcd ignores a duplicate grant.
                    return Ok((self.clone(), WriteBatch::new()));
                }
                put_user(&mut batch, entry)?;
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                let entry = next.users.get_mut(user).ok_or(StoreError::UserNotFound)?;
                if !entry.roles.remove(role) {
                    return Err(StoreError::RoleNotGranted);
                }
                put_user(&mut batch, entry)?;
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(StoreError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(StoreError::RoleAlreadyExist);
                }
                let role = Role { name: name.clone(), permissions: Vec::new() };
                batch.put(Cf::Auth, key(ROLE_PREFIX, name), encode(&role).map_err(internal)?);
                next.roles.insert(name.clone(), role);
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                next.roles.remove(name).ok_or(StoreError::RoleNotFound)?;
                batch.delete(Cf::Auth, key(ROLE_PREFIX, name));
                for user in next.users.values_mut() {
                    if user.roles.remove(name) {
                        put_user(&mut batch, user)?;
                    }
                }
            }
            AuthOp::RoleGrantPermission { role, permission } => {
                if !valid_permission_range(&permission.key, &permission.range_end) {
                    return Err(StoreError::InvalidAuthMgmt);
                }
                let entry = next.roles.get_mut(role).ok_or(StoreError::RoleNotFound)?;
                match entry
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end)
                {
                    Some(existing) => existing.perm_type = permission.perm_type,
                    None => {
                        entry.permissions.push(permission.clone());
                        entry.permissions.sort_by(|a, b| a.key.cmp(&b.key).then(a.range_end.cmp(&b.range_end)));
                    }
                }
                batch.put(Cf::Auth, key(ROLE_PREFIX, role), encode(&*entry).map_err(internal)?);
            }
            AuthOp::RoleRevokePermission { role, key: perm_key, range_end } => {
                let entry = next.roles.get_mut(role).ok_or(StoreError::RoleNotFound)?;
                let before = entry.permissions.len();
                entry.permissions.retain(|p| !(p.key == *perm_key && p.range_end == *range_end));
                if entry.permissions.len() == before {
                    return Err(StoreError::PermissionNotGranted);
                }
                batch.put(Cf::Auth, key(ROLE_PREFIX, role), encode(&*entry).map_err(internal)?);
            }
        }
        next.revision = revision;
        batch.put(Cf::Auth, REVISION_KEY, revision.to_be_bytes().to_vec());
        Ok((next, batch))
    }
}

/// etcd's rule: a grant needs a key, and a range end after it (or `"\0"`, or none).
fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == [0] || key < range_end)
}

fn key(prefix: &[u8], name: &str) -> Vec<u8> {
    [prefix, name.as_bytes()].concat()
}

fn internal(err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(err.to_string())
}

/// The applied auth state of this member.
pub struct AuthStore {
    backend: Arc<dyn Backend>,
    /// Replaced by the apply path after its batch is written; see the module's concurrency note.
    state: RwLock<Arc<AuthState>>,
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("AuthStore").field("enabled", &state.enabled).field("revision", &state.revision).finish()
    }
}

impl AuthStore {
    /// Loads the auth state from the backend.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self, BackendError> {
        let state = load(&*backend)?;
        Ok(Self { backend, state: RwLock::new(Arc::new(state)) })
    }

    /// The current state (a cheap snapshot).
    pub fn state(&self) -> Arc<AuthState> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Installs a state whose writes are in the backend (apply path only).
    pub fn committed(&self, state: AuthState) {
        *self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(state);
    }

    /// Re-reads the state after the backend's contents were replaced (snapshot install).
    pub fn reload(&self) -> Result<(), BackendError> {
        self.committed(load(&*self.backend)?);
        Ok(())
    }
}

fn load(backend: &dyn Backend) -> Result<AuthState, BackendError> {
    let corrupt = |what: &str, err: std::io::Error| BackendError::Engine(format!("corrupt auth {what}: {err}"));
    let mut state = AuthState::default();
    let mut cursor = backend.cursor(Cf::Auth);
    cursor.seek_to_first();
    while let Some((k, v)) = cursor.entry() {
        if k == ENABLED_KEY {
            state.enabled = v == [1];
        } else if k == REVISION_KEY {
            state.revision = v.try_into().map(u64::from_be_bytes).unwrap_or(0);
        } else if k == TOKEN_KEY_KEY {
            state.token_key = v.to_vec();
        } else if let Some(name) = k.strip_prefix(USER_PREFIX) {
            let user = decode::<User>(v).map_err(|err| corrupt("user", err))?;
            state.users.insert(String::from_utf8_lossy(name).into_owned(), user);
        } else if let Some(name) = k.strip_prefix(ROLE_PREFIX) {
            let role = decode::<Role>(v).map_err(|err| corrupt("role", err))?;
            state.roles.insert(String::from_utf8_lossy(name).into_owned(), role);
        }
        cursor.next();
    }
    cursor.status()?;
    Ok(state)
}
#[cfg(test)]
mod tests;
