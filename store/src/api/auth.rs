//! etcd's Auth service: enabling auth, authenticating, users and roles, so `etcdctl user/role/auth`
//! and etcd client libraries work unchanged.
//!
//! Changes are proposed through Raft on the caller's behalf (apply checks that the caller may make
//! them); queries are answered from the local auth state after a read barrier. Passwords are hashed
//! with bcrypt here, before proposing (apply must not draw random salts), at `--bcrypt-cost`; the
//! plain password never reaches the log. At most `MAX_CONCURRENT_HASHES` hashes or verifications
//! run at once, so a burst of logins cannot occupy every blocking thread.

use std::sync::Arc;

use keel_proto::{authpb, etcdserverpb as pb};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::{Api, now_ms, observe};
use crate::auth::{AuthOp, AuthState, PermType, Permission, ROOT_ROLE};
use crate::error::StoreError;
use crate::raft::{Command, CommandResponse};

const MAX_CONCURRENT_HASHES: usize = 4;

/// The Auth service.
#[derive(Debug)]
pub struct AuthService {
    api: Arc<Api>,
    /// Bounds concurrent bcrypt work; see the module documentation.
    hashing: Arc<Semaphore>,
}

impl AuthService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api, hashing: Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)) }
    }

    /// Proposes an auth change on behalf of the request's caller; returns the response header.
    async fn change<T>(&self, request: &Request<T>, op: AuthOp) -> Result<Option<pb::ResponseHeader>, StoreError> {
        let caller = self.api.caller(request)?;
        match self.api.propose_as(caller, Command::Auth(op)).await? {
            CommandResponse::Auth { revision } => Ok(self.api.header(revision)),
            other => Err(StoreError::Internal(format!("unexpected apply result {other:?}"))),
        }
    }

    /// The local auth state after a read barrier, and the caller.
    async fn read<T>(&self, request: &Request<T>) -> Result<(Arc<AuthState>, Option<String>), StoreError> {
        let caller = self.api.caller(request)?;
        self.api.member.linearize().await?;
        Ok((self.api.auth(), caller))
    }

    /// Runs bcrypt work off the async threads, within the concurrency bound.
    async fn bcrypt<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, StoreError> {
        let _permit = self.hashing.acquire().await.map_err(|_| StoreError::Stopped)?;
        tokio::task::spawn_blocking(work).await.map_err(|e| StoreError::Internal(e.to_string()))
    }

    async fn hash(&self, password: String) -> Result<String, StoreError> {
        let cost = self.api.member.config().bcrypt_cost;
        self.bcrypt(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|e| StoreError::Internal(format!("hashing the password: {e}")))
    }
}

fn perm_type(value: i32) -> Result<PermType, StoreError> {
    match authpb::permission::Type::try_from(value) {
        Ok(authpb::permission::Type::Read) => Ok(PermType::Read),
        Ok(authpb::permission::Type::Write) => Ok(PermType::Write),
        Ok(authpb::permission::Type::Readwrite) => Ok(PermType::ReadWrite),
        Err(_) => Err(StoreError::InvalidAuthMgmt),
    }
}

fn perm_to_proto(perm: &Permission) -> authpb::Permission {
    let perm_type = match perm.perm_type {
        PermType::Read => authpb::permission::Type::Read,
        PermType::Write => authpb::permission::Type::Write,
        PermType::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission { perm_type: perm_type as i32, key: perm.key.clone(), range_end: perm.range_end.clone() }
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        observe("AuthEnable", async {
            let mut token_key = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token_key)
                .map_err(|_| StoreError::Internal("no randomness for the token key".into()))?;
            let header = self.change(&request, AuthOp::Enable { token_key }).await?;
            Ok(Response::new(pb::AuthEnableResponse { header }))
        })
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        observe("AuthDisable", async {
            let header = self.change(&request, AuthOp::Disable).await?;
            Ok(Response::new(pb::AuthDisableResponse { header }))
        })
        .await
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        observe("AuthStatus", async {
            let (auth, _) = self.read(&request).await?;
            Ok(Response::new(pb::AuthStatusResponse {
                header: self.api.current_header(),
                enabled: auth.enabled,
                auth_revision: auth.revision,
            }))
        })
        .await
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        observe("Authenticate", async {
            self.api.member.linearize().await?;
            let req = request.into_inner();
            let auth = self.api.auth();
            if !auth.enabled {
                return Err(StoreError::AuthNotEnabled.into());
            }
            let Some(user) = auth.users.get(&req.name) else {
                return Err(StoreError::AuthFailed.into());
            };
            let Some(hash) = user.password_hash.clone() else {
                // A certificate-only user has no password to check.
                return Err(StoreError::AuthFailed.into());
            };
            let generation = user.generation;
            let password = req.password;
            if !self.bcrypt(move || bcrypt::verify(password, &hash).unwrap_or(false)).await? {
                return Err(StoreError::AuthFailed.into());
            }
            let ttl = self.api.member.config().auth_token_ttl;
            let expires = now_ms() + ttl.as_millis() as u64;
            let token = crate::auth::token::issue(&auth.token_key, &req.name, generation, expires);
            Ok(Response::new(pb::AuthenticateResponse { header: self.api.current_header(), token }))
        })
        .await
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        observe("UserAdd", async {
            let req = request.get_ref();
            if req.name.is_empty() {
                return Err(StoreError::UserEmpty.into());
            }
            let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
            // Like etcd, the server hashes the password it was sent (a client-side hash is ignored).
            let password_hash = if no_password { None } else { Some(self.hash(req.password.clone()).await?) };
            let op = AuthOp::UserAdd { name: req.name.clone(), password_hash };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthUserAddResponse { header }))
        })
        .await
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        observe("UserGet", async {
            let (auth, caller) = self.read(&request).await?;
            let name = &request.get_ref().name;
            // Users may look themselves up; anything else is administration.
            if caller.as_deref() != Some(name.as_str()) {
                auth.check_admin(caller.as_deref())?;
            }
            let user = auth.users.get(name).ok_or(StoreError::UserNotFound)?;
            Ok(Response::new(pb::AuthUserGetResponse {
                header: self.api.current_header(),
                roles: user.roles.iter().cloned().collect(),
            }))
        })
        .await
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        observe("UserList", async {
            let (auth, caller) = self.read(&request).await?;
            auth.check_admin(caller.as_deref())?;
            Ok(Response::new(pb::AuthUserListResponse {
                header: self.api.current_header(),
                users: auth.users.keys().cloned().collect(),
            }))
        })
        .await
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        observe("UserDelete", async {
            let op = AuthOp::UserDelete { name: request.get_ref().name.clone() };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthUserDeleteResponse { header }))
        })
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        observe("UserChangePassword", async {
            let req = request.get_ref();
            let password_hash = self.hash(req.password.clone()).await?;
            let op = AuthOp::UserChangePassword { name: req.name.clone(), password_hash };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
        })
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        observe("UserGrantRole", async {
            let req = request.get_ref();
            let op = AuthOp::UserGrantRole { user: req.user.clone(), role: req.role.clone() };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        observe("UserRevokeRole", async {
            let req = request.get_ref();
            let op = AuthOp::UserRevokeRole { user: req.name.clone(), role: req.role.clone() };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
        })
        .await
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        observe("RoleAdd", async {
            let op = AuthOp::RoleAdd { name: request.get_ref().name.clone() };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthRoleAddResponse { header }))
        })
        .await
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        observe("RoleGet", async {
            let (auth, caller) = self.read(&request).await?;
            let name = &request.get_ref().role;
            // Users may look up roles they hold; anything else is administration.
            let holds = caller.as_deref().and_then(|c| auth.users.get(c)).is_some_and(|u| u.roles.contains(name));
            if !holds {
                auth.check_admin(caller.as_deref())?;
            }
            let role = auth.roles.get(name).ok_or(StoreError::RoleNotFound)?;
            let perm = if name == ROOT_ROLE {
                // etcd shows the root role as read-write on every key.
                vec![authpb::Permission {
                    perm_type: authpb::permission::Type::Readwrite as i32,
                    key: Vec::new(),
                    range_end: vec![0],
                }]
            } else {
                role.permissions.iter().map(perm_to_proto).collect()
            };
            Ok(Response::new(pb::AuthRoleGetResponse { header: self.api.current_header(), perm }))
        })
        .await
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        observe("RoleList", async {
            let (auth, caller) = self.read(&request).await?;
            auth.check_admin(caller.as_deref())?;
            Ok(Response::new(pb::AuthRoleListResponse {
                header: self.api.current_header(),
                roles: auth.roles.keys().cloned().collect(),
            }))
        })
        .await
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        observe("RoleDelete", async {
            let op = AuthOp::RoleDelete { name: request.get_ref().role.clone() };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        observe("RoleGrantPermission", async {
            let req = request.get_ref();
            let perm = req.perm.as_ref().ok_or(StoreError::PermissionNotGiven)?;
            let permission = Permission {
                perm_type: perm_type(perm.perm_type)?,
                key: perm.key.clone(),
                range_end: perm.range_end.clone(),
            };
            let op = AuthOp::RoleGrantPermission { role: req.name.clone(), permission };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header }))
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        observe("RoleRevokePermission", async {
            let req = request.get_ref();
            let op = AuthOp::RoleRevokePermission {
                role: req.role.clone(),
                key: req.key.clone(),
                range_end: req.range_end.clone(),
            };
            let header = self.change(&request, op).await?;
            Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header }))
        })
        .await
    }
}
