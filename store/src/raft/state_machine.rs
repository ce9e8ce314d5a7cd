//! The Raft state machine: applies committed entries to MVCC, leases and member attributes, and
//! builds and installs snapshots.
//!
//! Invariants:
//! - every applied entry writes its log id in the same backend batch as its data, so after a crash
//!   the applied log id names exactly the entries whose effects survived, and openraft re-applies
//!   the rest: nothing is applied twice, nothing acknowledged is lost;
//! - apply is deterministic: refusals (a [`StoreError`] in the result) depend only on the state and
//!   the entry;
//!   storage failures are not refusals and stop the member (openraft treats them as fatal);
//! - watchers see a revision only after it is in storage (`publish` follows the write);
//! - a run of consecutive standalone puts in one apply call is staged and written as one backend
//!   batch (with the last one's log id); their clients hear back, and readers and watchers see their
//!   revisions, only after that write. Any other entry first commits what is staged, so it always
//!   runs on committed state;
//! - a snapshot install first records a marker (synced), then replaces the data, then clears the
//!   marker (synced); a member that crashes mid-install finishes the install when it restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::type_config::alias::SnapshotOf;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::snapshot::{self, SnapshotFile};
use super::{
    Command, CommandResponse, CommandResult, LogId, SnapshotMeta, StoredMembership, TypeConfig, decode, encode,
};
use crate::alarm::{self, AlarmAction, AlarmKind, AlarmMember};
use crate::auth::AuthStore;
use crate::backend::{Backend, Cf, Durability, WriteBatch};
use crate::error::StoreError;
use crate::format::{self, FormatError};
use crate::lease::{LeaseError, Lessor};
use crate::mvcc::{Mvcc, MvccError, StagedPuts, WriteTxn};
use crate::watch::{WatchConfig, WatchHub};

/// A member's published attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    /// Name.
    pub name: String,
    /// Client URLs.
    pub client_urls: Vec<String>,
}

#[derive(Debug, Default)]
struct Applied {
    log_id: Option<LogId>,
    membership: StoredMembership,
    members: BTreeMap<u64, MemberAttributes>,
    alarms: BTreeSet<AlarmMember>,
}

/// Why the store's state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Format marker problems.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// MVCC state problems.
    #[error(transparent)]
    Mvcc(#[from] MvccError),
    /// Lease table problems.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// File or decoding problems.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The state shared by the state machine (writer) and the API layer (readers).
pub struct StoreCore {
    backend: Arc<dyn Backend>,
    mvcc: Arc<Mvcc>,
    lessor: Arc<Lessor>,
    auth: AuthStore,
    hub: Arc<WatchHub>,
    /// Cache of what the backend's metadata says was applied. Written by the apply path after each
    /// backend write; read by status queries. Short critical sections only.
    applied: Mutex<Applied>,
    snapshot_dir: PathBuf,
    /// The highest revision apply may create: `i64::MAX` on a member; a point-in-time restore
    /// replaying a journal sets it to the target, and apply stops with [`RevisionLimitReached`]
    /// instead of committing past it.
    revision_limit: AtomicI64,
}

/// Apply stopped because the next change would pass the revision limit (point-in-time restore);
/// carried inside the `io::Error` apply returns.
#[derive(Debug, thiserror::Error)]
#[error("replay reached the target revision {0}")]
pub struct RevisionLimitReached(pub i64);

impl std::fmt::Debug for StoreCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCore").field("mvcc", &self.mvcc).finish_non_exhaustive()
    }
}

fn io_err(err: impl std::fmt::Display) -> io::Error {
    io::Error::other(err.to_string())
}

impl StoreCore {
    /// Opens the state over `backend`, finishing an interrupted snapshot install if there is one.
    pub fn open(
        backend: Arc<dyn Backend>,
        snapshot_dir: &Path,
        min_lease_ttl: i64,
        watch: WatchConfig,
    ) -> Result<Arc<Self>, OpenError> {
        format::check_or_init(&*backend)?;
        snapshot::remove_leftovers(snapshot_dir)?;
        if let Some(id) = backend.get(Cf::Meta, format::INSTALLING_SNAPSHOT_KEY).map_err(FormatError::from)? {
            let name = String::from_utf8_lossy(&id).into_owned();
            let file = snapshot::find(snapshot_dir, &name).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "an interrupted snapshot install needs snapshot {name}, which is missing from {}",
                        snapshot_dir.display()
                    ),
                )
            })?;
            tracing::warn!(snapshot = %name, "finishing a snapshot install interrupted by a crash");
            replace_data(&*backend, file.path())?;
        }
        let mvcc = Mvcc::open(backend.clone())?;
        let lessor = Arc::new(Lessor::open(backend.clone(), min_lease_ttl)?);
        let auth = AuthStore::open(backend.clone()).map_err(io_err)?;
        let hub = WatchHub::new(mvcc.clone(), watch);
        let core = Arc::new(Self {
            backend,
            mvcc,
            lessor,
            auth,
            hub,
            applied: Mutex::new(Applied::default()),
            snapshot_dir: snapshot_dir.to_path_buf(),
            revision_limit: AtomicI64::new(i64::MAX),
        });
        core.load_applied()?;
        Ok(core)
    }

    fn load_applied(&self) -> io::Result<()> {
        let get = |key: &[u8]| self.backend.get(Cf::Meta, key).map_err(io_err);
        let log_id = get(format::APPLIED_KEY)?.map(|b| decode::<LogId>(&b)).transpose()?;
        let membership = get(format::MEMBERSHIP_KEY)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        let members = get(format::MEMBER_ATTRIBUTES_KEY)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        let alarms = get(format::ALARMS_KEY)?.map(|b| decode(&b)).transpose()?.unwrap_or_default();
        *self.lock_applied() = Applied { log_id, membership, members, alarms };
        Ok(())
    }

    fn lock_applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The MVCC store.
    pub fn mvcc(&self) -> &Arc<Mvcc> {
        &self.mvcc
    }

    /// The lease table.
    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    /// The auth state.
    pub fn auth(&self) -> &AuthStore {
        &self.auth
    }

    /// The watch hub.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    /// Where snapshots are kept.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// The last applied log id.
    pub fn applied_log_id(&self) -> Option<LogId> {
        self.lock_applied().log_id
    }

    /// The last applied membership.
    pub fn membership(&self) -> StoredMembership {
        self.lock_applied().membership.clone()
    }

    /// Published member attributes by member id.
    pub fn member_attributes(&self) -> BTreeMap<u64, MemberAttributes> {
        self.lock_applied().members.clone()
    }

    /// The raised alarms, as of the last applied entry.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.lock_applied().alarms.iter().copied().collect()
    }

    /// True while NOSPACE is raised by any member.
    pub fn out_of_space(&self) -> bool {
        self.lock_applied().alarms.iter().any(|alarm| alarm.kind == AlarmKind::NoSpace)
    }

    fn applied_batch(log_id: &LogId) -> io::Result<WriteBatch> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Meta, format::APPLIED_KEY, encode(log_id)?);
        Ok(batch)
    }

    fn write_applied(&self, mut batch: WriteBatch, log_id: &LogId) -> io::Result<()> {
        batch.extend(Self::applied_batch(log_id)?);
        self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
        self.lock_applied().log_id = Some(*log_id);
        Ok(())
    }

    /// Makes apply refuse (with [`RevisionLimitReached`]) any change that would create a revision
    /// above `revision`. Only for replaying a journal into a restored store.
    pub fn set_revision_limit(&self, revision: i64) {
        self.revision_limit.store(revision, Ordering::Release);
    }

    /// Commits a transaction together with `extra` and publishes its events; returns the revision.
    fn commit(&self, txn: WriteTxn<'_>, extra: WriteBatch) -> io::Result<i64> {
        let limit = self.revision_limit.load(Ordering::Acquire);
        if txn.has_changes() && txn.revision() > limit {
            return Err(io::Error::other(RevisionLimitReached(limit)));
        }
        let committed = txn.commit(extra, Durability::Buffered).map_err(io_err)?;
        if !committed.events.is_empty() {
            self.hub.publish(committed.revision, &committed.events);
        }
        Ok(committed.revision)
    }

    /// The keys attached to a lease, for permission checks.
    fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
        match self.lessor.attached_keys(id) {
            Ok(keys) => Ok(keys),
            Err(LeaseError::NotFound) => Ok(Vec::new()),
            Err(err) => Err(err.into()),
        }
    }

    /// The permission check a command needs, against the auth state at this log position.
    fn authorize(&self, caller: Option<&str>, command: &Command) -> Result<(), StoreError> {
        let auth = self.auth.state();
        if !auth.enabled {
            return Ok(());
        }
        let lease_keys = |id| self.lease_keys(id);
        match command {
            Command::Put(req) => auth.check_put(caller, req, &lease_keys),
            Command::DeleteRange(req) => auth.check_delete(caller, req),
            Command::Txn(req) => auth.check_txn(caller, req, &lease_keys),
            Command::Compact { .. } => auth.check_admin(caller),
            Command::LeaseRevoke { id } => {
                auth.check_authenticated(caller)?;
                auth.check_lease_keys(caller, *id, &lease_keys)
            }
            Command::LeaseGrant { .. } => auth.check_authenticated(caller),
            // An operator's alarm change needs admin; a member raising its own carries no user.
            Command::Alarm { .. } => match caller {
                Some(_) => auth.check_admin(caller),
                None => Ok(()),
            },
            // Auth changes check themselves (`AuthState::apply`); the rest are the members' own.
            Command::Auth(_) | Command::LeaseExpire { .. } | Command::PublishMember { .. } => Ok(()),
            Command::AsUser { .. } => Err(StoreError::Internal("nested AsUser command".into())),
        }
    }

    /// Applies one command; storage failures are `Err`, refusals are `Ok(Err(..))`.
    pub fn apply_command(&self, command: Command, log_id: &LogId) -> io::Result<CommandResult> {
        tracing::trace!(log_index = log_id.index(), %command, "applying");
        let (caller, command) = match command {
            Command::AsUser { user, command } => (Some(user), *command),
            command => (None, command),
        };
        let allowed = self.authorize(caller.as_deref(), &command).and_then(|()| {
            if self.out_of_space() && alarm::grows_store(&command) {
                return Err(StoreError::NoSpace);
            }
            Ok(())
        });
        let result = match allowed {
            Ok(()) => self.apply_authorized(caller.as_deref(), command, log_id)?,
            Err(refused) => Err(refused),
        };
        tracing::trace!(log_index = log_id.index(), ?result, "applied");
        if result.is_err() {
            // A refusal changes nothing but is still applied.
            self.backend.write(Self::applied_batch(log_id)?, Durability::Buffered).map_err(io_err)?;
        }
        self.lock_applied().log_id = Some(*log_id);
        Ok(result)
    }

    fn apply_authorized(&self, caller: Option<&str>, command: Command, log_id: &LogId) -> io::Result<CommandResult> {
        let applied = Self::applied_batch(log_id)?;
        let result = match command {
            Command::Put(req) => {
                // Previous values are read per operation when the request asks; for every event only
                // when some watcher wants them.
                let mut txn = self.mvcc.write_txn(self.hub.wants_prev_values());
                match txn.execute_put(&req, &*self.lessor) {
                    Ok(resp) => {
                        self.commit(txn, applied)?;
                        Ok(CommandResponse::Put(resp))
                    }
                    Err(err) => Err(refusal(err)?),
                }
            }
            Command::DeleteRange(req) => {
                let mut txn = self.mvcc.write_txn(self.hub.wants_prev_values());
                match txn.execute_delete_range(&req) {
                    Ok(resp) => {
                        self.commit(txn, applied)?;
                        Ok(CommandResponse::DeleteRange(resp))
                    }
                    Err(err) => Err(refusal(err)?),
                }
            }
            Command::Txn(req) => {
                let mut txn = self.mvcc.write_txn(self.hub.wants_prev_values());
                match txn.execute_txn(&req, &*self.lessor) {
                    Ok(resp) => {
                        self.commit(txn, applied)?;
                        Ok(CommandResponse::Txn(resp))
                    }
                    Err(err) => Err(refusal(err)?),
                }
            }
            Command::Compact { revision } => match self.mvcc.prepare_compaction(revision) {
                Ok(mut batch) => {
                    batch.extend(applied);
                    self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
                    self.mvcc.compaction_committed(revision);
                    Ok(CommandResponse::Compact { revision: self.mvcc.current_revision() })
                }
                Err(err) => Err(refusal(err)?),
            },
            Command::LeaseGrant { id, ttl } => match self.lessor.prepare_grant(id, ttl) {
                Ok((ttl, mut batch)) => {
                    batch.extend(applied);
                    self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
                    self.lessor.granted(id, ttl);
                    Ok(CommandResponse::LeaseGrant { id, ttl, revision: self.mvcc.current_revision() })
                }
                Err(err) => Err(lease_refusal(err)?),
            },
            Command::LeaseRevoke { id } => {
                let mut txn = self.mvcc.write_txn(self.hub.wants_prev_values());
                match self.lessor.prepare_revoke(&mut txn, id) {
                    Ok(mut batch) => {
                        batch.extend(applied);
                        let revision = self.commit(txn, batch)?;
                        self.lessor.revoked(id);
                        Ok(CommandResponse::LeaseRevoke { revision })
                    }
                    Err(err) => Err(lease_refusal(err)?),
                }
            }
            Command::LeaseExpire { ids } => {
                // One revision per lease, as separate revokes would make. A crash between them
                // re-applies the entry, which skips the leases already gone: same final state.
                for id in ids {
                    if !crate::mvcc::LeaseCheck::lease_exists(&*self.lessor, id) {
                        continue;
                    }
                    let mut txn = self.mvcc.write_txn(self.hub.wants_prev_values());
                    let batch = self.lessor.prepare_revoke(&mut txn, id).map_err(io_err)?;
                    self.commit(txn, batch)?;
                    self.lessor.revoked(id);
                }
                self.backend.write(applied, Durability::Buffered).map_err(io_err)?;
                Ok(CommandResponse::LeaseRevoke { revision: self.mvcc.current_revision() })
            }
            Command::PublishMember { id, name, client_urls } => {
                let mut members = self.lock_applied().members.clone();
                members.insert(id, MemberAttributes { name, client_urls });
                let mut batch = WriteBatch::new();
                batch.put(Cf::Meta, format::MEMBER_ATTRIBUTES_KEY, encode(&members)?);
                batch.extend(applied);
                self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
                self.lock_applied().members = members;
                Ok(CommandResponse::MemberPublished)
            }
            Command::Auth(op) => match self.auth.state().apply(caller, &op) {
                Ok((next, mut batch)) => {
                    batch.extend(applied);
                    self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
                    self.auth.committed(next);
                    Ok(CommandResponse::Auth { revision: self.mvcc.current_revision() })
                }
                Err(refused) => Err(refused),
            },
            Command::Alarm { action, alarm } => {
                let mut alarms = self.lock_applied().alarms.clone();
                let changed = match action {
                    AlarmAction::Activate => alarms.insert(alarm),
                    AlarmAction::Deactivate => alarms.remove(&alarm),
                };
                let mut batch = WriteBatch::new();
                batch.put(Cf::Meta, format::ALARMS_KEY, encode(&alarms)?);
                batch.extend(applied);
                self.backend.write(batch, Durability::Buffered).map_err(io_err)?;
                if changed {
                    tracing::warn!(?action, %alarm, "alarm changed");
                }
                self.lock_applied().alarms = alarms;
                Ok(CommandResponse::Alarm { changed: if changed { vec![alarm] } else { Vec::new() } })
            }
            Command::AsUser { .. } => Err(StoreError::Internal("nested AsUser command".into())),
        };
        Ok(result)
    }

    /// True when a standalone put may be staged on top of `staged` rather than applied on its own:
    /// with auth on, its permission check reads lease attachments from storage, which must not miss
    /// staged writes; near the revision limit, the put must stop apply exactly as an unstaged one.
    fn may_stage(&self, staged: Option<&StagedRun>) -> bool {
        let revision = staged.map_or_else(|| self.mvcc.current_revision(), |run| run.puts.revision());
        !self.auth.state().enabled && revision < self.revision_limit.load(Ordering::Acquire)
    }

    /// Stages one standalone put (see [`StagedPuts`]); refusals are `Err`, as [`Self::apply_command`]
    /// returns them.
    fn stage_put(
        &self,
        staged: &mut StagedPuts,
        req: &crate::mvcc::PutRequest,
        log_id: &LogId,
    ) -> io::Result<CommandResult> {
        let result = if self.out_of_space() {
            Err(StoreError::NoSpace)
        } else {
            match staged.execute_put(&self.mvcc, req, &*self.lessor, self.hub.wants_prev_values()) {
                Ok(resp) => Ok(CommandResponse::Put(resp)),
                Err(err) => Err(refusal(err)?),
            }
        };
        tracing::trace!(log_index = log_id.index(), ?result, "staged put");
        Ok(result)
    }

    /// Writes the staged puts with `log_id` as the applied position, publishes their events and
    /// only then answers their clients.
    fn commit_staged(&self, staged: StagedRun) -> io::Result<()> {
        let StagedRun { puts, log_id, answers, .. } = staged;
        let committed = puts.commit(&self.mvcc, Self::applied_batch(&log_id)?, Durability::Buffered).map_err(io_err)?;
        for change in &committed {
            self.hub.publish(change.revision, &change.events);
        }
        self.lock_applied().log_id = Some(log_id);
        for (responder, result) in answers {
            responder.send(result);
        }
        Ok(())
    }

    fn apply_membership(&self, log_id: &LogId, membership: StoredMembership) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(Cf::Meta, format::MEMBERSHIP_KEY, encode(&membership)?);
        self.write_applied(batch, log_id)?;
        self.lock_applied().membership = membership;
        Ok(())
    }

    /// Replaces the whole state with a verified snapshot, then reloads every in-memory view.
    fn install(&self, meta: &SnapshotMeta, file: &SnapshotFile) -> io::Result<()> {
        snapshot::verify(file.path())?;
        let file = snapshot::adopt(file, meta, &self.snapshot_dir)?;
        {
            let _exclusive = self.mvcc.lock_exclusive();
            replace_data(&*self.backend, file.path())?;
            self.mvcc.reload().map_err(io_err)?;
        }
        self.lessor.reload().map_err(io_err)?;
        self.auth.reload().map_err(io_err)?;
        self.load_applied()?;
        self.hub.reset_after_install();
        tracing::info!(snapshot = %snapshot::name(meta), revision = self.mvcc.current_revision(), "installed snapshot");
        Ok(())
    }
}

/// Standalone puts staged by one apply call, with the clients waiting for them.
struct StagedRun {
    puts: StagedPuts,
    /// The log id of the last staged entry: the applied position once the run is written.
    log_id: LogId,
    /// Entries staged, refused puts included; at most [`StagedRun::MAX_ENTRIES`].
    entries: usize,
    /// One per staged entry that has a client waiting (the leader's own).
    answers: Vec<(ApplyResponder<TypeConfig>, CommandResult)>,
}

impl StagedRun {
    /// At most this many entries wait in one run (it bounds the answers held back and the batch).
    const MAX_ENTRIES: usize = 1024;
    /// A run whose writes pass this size is written at once.
    const MAX_BYTES: usize = 4 << 20;

    fn new(puts: StagedPuts, log_id: LogId) -> Self {
        StagedRun { puts, log_id, entries: 0, answers: Vec::new() }
    }

    fn is_full(&self) -> bool {
        self.entries >= Self::MAX_ENTRIES || self.puts.size_bytes() >= Self::MAX_BYTES
    }
}

/// Maps a deterministic MVCC refusal; anything else is a storage failure, which stops the member.
fn refusal(err: MvccError) -> io::Result<StoreError> {
    match err {
        MvccError::Compacted { .. } | MvccError::FutureRevision | MvccError::KeyNotFound | MvccError::LeaseNotFound => {
            Ok(err.into())
        }
        other => Err(io_err(other)),
    }
}

/// Maps a deterministic lease refusal; anything else is a storage failure.
fn lease_refusal(err: LeaseError) -> io::Result<StoreError> {
    match err {
        LeaseError::NotFound | LeaseError::Exists | LeaseError::TtlTooLarge => Ok(err.into()),
        LeaseError::Mvcc(err) => refusal(err),
        other => Err(io_err(other)),
    }
}

/// Bytes per batch while streaming a snapshot into the backend.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// One apply call (a run of committed entries) slower than this is logged, as etcd logs an apply
/// that "took too long": every request waiting on those entries waits as long.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_secs(1);

/// Replaces the state-machine column families with a snapshot's contents, crash-safely.
fn replace_data(backend: &dyn Backend, path: &Path) -> io::Result<()> {
    let meta = snapshot::verify(path)?;
    let mut wipe = WriteBatch::new();
    for cf in Cf::STATE_MACHINE {
        let mut cursor = backend.cursor(cf);
        cursor.seek_to_last();
        if let Some((last, _)) = cursor.entry() {
            let mut end = last.to_vec();
            end.push(0);
            wipe.delete_range(cf, Vec::new(), end);
        }
        cursor.status().map_err(io_err)?;
    }
    wipe.put(Cf::Meta, format::FORMAT_KEY, format::FORMAT_VERSION.to_be_bytes());
    wipe.put(Cf::Meta, format::INSTALLING_SNAPSHOT_KEY, snapshot::name(&meta).as_bytes());
    backend.write(wipe, Durability::Synced).map_err(io_err)?;

    let mut batch = WriteBatch::new();
    snapshot::for_each_record(path, |cf, key, value| {
        if cf == Cf::Meta && key == format::INSTALLING_SNAPSHOT_KEY {
            return Ok(());
        }
        batch.put(cf, key, value);
        if batch.size_bytes() >= INSTALL_BATCH_BYTES {
            backend.write(std::mem::take(&mut batch), Durability::Buffered).map_err(io_err)?;
        }
        Ok(())
    })?;
    batch.delete(Cf::Meta, format::INSTALLING_SNAPSHOT_KEY);
    backend.write(batch, Durability::Synced).map_err(io_err)
}

/// The state machine openraft drives; cheap to clone.
#[derive(Clone, Debug)]
pub struct StateMachine {
    core: Arc<StoreCore>,
}

impl StateMachine {
    /// A state machine over an opened core.
    pub fn new(core: Arc<StoreCore>) -> Self {
        Self { core }
    }

    /// The shared state.
    pub fn core(&self) -> &Arc<StoreCore> {
        &self.core
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotFile>, io::Error> {
        let core = self.core.clone();
        let (meta, snapshot) = tokio::task::spawn_blocking(move || snapshot::build(&*core.backend, &core.snapshot_dir))
            .await
            .map_err(io_err)??;
        Ok(SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.core.lock_applied();
        Ok((applied.log_id, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut applied = 0_usize;
        let mut staged: Option<StagedRun> = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            applied += 1;
            let log_id = entry.log_id;
            if let EntryPayload::Normal(Command::Put(req)) = &entry.payload
                && self.core.may_stage(staged.as_ref())
            {
                let run = staged.get_or_insert_with(|| StagedRun::new(self.core.mvcc.stage_puts(), log_id));
                let result = self.core.stage_put(&mut run.puts, req, &log_id)?;
                run.log_id = log_id;
                run.entries += 1;
                if let Some(responder) = responder {
                    run.answers.push((responder, result));
                }
                if run.is_full()
                    && let Some(full) = staged.take()
                {
                    self.core.commit_staged(full)?;
                }
                continue;
            }
            if let Some(run) = staged.take() {
                self.core.commit_staged(run)?;
            }
            let result = match entry.payload {
                EntryPayload::Blank => {
                    self.core.write_applied(WriteBatch::new(), &log_id)?;
                    Ok(CommandResponse::None)
                }
                EntryPayload::Normal(command) => self.core.apply_command(command, &log_id)?,
                EntryPayload::Membership(membership) => {
                    self.core.apply_membership(&log_id, StoredMembership::new(Some(log_id), membership))?;
                    Ok(CommandResponse::None)
                }
            };
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        if let Some(run) = staged.take() {
            self.core.commit_staged(run)?;
        }
        let took = started.elapsed();
        if took > SLOW_APPLY {
            tracing::warn!(took = ?took, expected = ?SLOW_APPLY, entries = applied, "applying entries took too long");
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        let core = self.core.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || core.install(&meta, &snapshot)).await.map_err(io_err)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        Ok(snapshot::current(&self.core.snapshot_dir)?
            .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot }))
    }
}
