//! Campaign, Proclaim, Resign, Leader and Observe: leader election per name, led by the oldest
//! candidacy key under `NAME/`, whose value is the leader's proclamation.
//!
//! Invariants:
//! - `proclaim` and `resign` act only on the candidacy they name (same key, same create
//!   revision), so a deposed leader's stale `LeaderKey` can neither overwrite nor delete a newer
//!   candidacy; they fail with [`StoreError::ElectionNotLeader`] and change nothing;
//! - `observe` reports every change of leader (a new leading key, or a new value proclaimed by the
//!   leader) in revision order, computed from the local watch stream revision by revision, so a
//!   leader that leads for a single revision is reported too. If the watch history it needs was
//!   compacted away, it re-reads the current state and continues from there (the only case in
//!   which intermediate leaders can be skipped).

use std::collections::{BTreeMap, HashMap};

use tokio::sync::mpsc;

use super::{Coordinator, FIRST_BACKOFF, Held, HubStream, prefix_of, prefix_range_end};
use crate::error::StoreError;
use crate::mvcc::{Event, EventKind, KeyValue, RangeRequest, SortOrder, SortTarget};
use crate::watch::{WatchMessage, WatchSpec};

/// Leadership updates buffered per Observe stream before the observer task waits for the client.
const OBSERVE_BUFFER: usize = 16;

/// A candidacy, as Campaign returns it and Proclaim and Resign name it (etcd's `LeaderKey`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election.
    pub name: Vec<u8>,
    /// The candidacy key, `NAME/<lease hex>`.
    pub key: Vec<u8>,
    /// The key's create revision: the leader's fencing token.
    pub rev: i64,
    /// The lease the key is attached to.
    pub lease: i64,
}

/// The leader of an election at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// The leading key; its value is the current proclamation.
    pub kv: KeyValue,
    /// The revision at which this became the leadership.
    pub revision: i64,
}

impl Coordinator {
    /// Campaigns in election `name` with `value` on `lease`, waiting until the candidacy leads.
    /// Campaigning again with the same lease reuses the candidacy (and proclaims `value`).
    pub async fn campaign(
        &self,
        caller: Option<&str>,
        name: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<(LeaderKey, Held), StoreError> {
        let held = self.acquire(caller, &prefix_of(name)?, lease, value, true).await?;
        let leader = LeaderKey { name: name.to_vec(), key: held.key.clone(), rev: held.create_revision, lease };
        Ok((leader, held))
    }

    /// Sets the leader's value; the revision of the write.
    pub async fn proclaim(&self, caller: Option<&str>, leader: &LeaderKey, value: &[u8]) -> Result<i64, StoreError> {
        check_leader_key(leader)?;
        self.proclaim_key(caller, &leader.key, leader.rev, value).await
    }

    /// Gives up the candidacy (leading or waiting); the revision that deleted its key.
    pub async fn resign(&self, caller: Option<&str>, leader: &LeaderKey) -> Result<i64, StoreError> {
        check_leader_key(leader)?;
        self.delete_if_current(caller, &leader.key, leader.rev).await?.ok_or(StoreError::ElectionNotLeader)
    }

    /// The current leader of election `name` (a linearizable read).
    pub async fn leader(&self, caller: Option<&str>, name: &[u8]) -> Result<Leadership, StoreError> {
        let prefix = prefix_of(name)?;
        let resp = self
            .read(
                caller,
                RangeRequest {
                    range_end: prefix_range_end(&prefix),
                    key: prefix,
                    limit: 1,
                    sort_order: SortOrder::Ascend,
                    sort_target: SortTarget::Create,
                    ..Default::default()
                },
            )
            .await?;
        let kv = resp.kvs.into_iter().next().ok_or(StoreError::ElectionNoLeader)?;
        Ok(Leadership { kv, revision: resp.revision })
    }

    /// Streams the leadership of election `name`: the current leader first (if any), then every
    /// change. The stream ends with an error if the member cannot serve reads for
    /// [`super::RETRY_WINDOW`]; the observer task ends when the receiver is dropped.
    pub fn observe(
        &self,
        caller: Option<String>,
        name: &[u8],
    ) -> Result<mpsc::Receiver<Result<Leadership, StoreError>>, StoreError> {
        let prefix = prefix_of(name)?;
        let permit = self.observer_permit()?;
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            this.observe_until_closed(caller, prefix, tx).await;
        });
        Ok(rx)
    }

    async fn observe_until_closed(
        &self,
        caller: Option<String>,
        prefix: Vec<u8>,
        tx: mpsc::Sender<Result<Leadership, StoreError>>,
    ) {
        let range_end = prefix_range_end(&prefix);
        let mut reported = Reported::default();
        // Each round reads the candidates, then follows the watch stream from the next revision.
        // A round ends only when the watch ends (history compacted, or the hub closing at
        // shutdown); the loop ends when the client goes away or reads keep failing.
        loop {
            let read = RangeRequest { key: prefix.clone(), range_end: range_end.clone(), ..Default::default() };
            let resp = tokio::select! {
                resp = self.read(caller.as_deref(), read) => resp,
                () = tx.closed() => return,
            };
            let resp = match resp {
                Ok(resp) => resp,
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            };
            let mut candidates = Candidates::default();
            resp.kvs.into_iter().for_each(|kv| candidates.put(kv));
            if !reported.send_if_changed(&tx, candidates.leader(), resp.revision).await {
                return;
            }

            let mut changes = HubStream::open(self.member.core().hub().clone());
            let spec = WatchSpec {
                key: prefix.clone(),
                range_end: range_end.clone(),
                start_revision: resp.revision + 1,
                ..Default::default()
            };
            if changes.watch(spec).await.is_err() {
                return;
            }
            loop {
                let message = tokio::select! {
                    message = changes.recv() => message,
                    () = tx.closed() => return,
                };
                match message {
                    Some(WatchMessage::Events { events, .. }) => {
                        for revision in events.chunk_by(|a, b| a.kv.mod_revision == b.kv.mod_revision) {
                            revision.iter().for_each(|event| candidates.apply(event));
                            let at = revision[0].kv.mod_revision;
                            if !reported.send_if_changed(&tx, candidates.leader(), at).await {
                                return;
                            }
                        }
                    }
                    Some(WatchMessage::Created { .. } | WatchMessage::Progress { .. }) => {}
                    Some(WatchMessage::Canceled { .. } | WatchMessage::CreateFailed { .. }) | None => break,
                }
            }
            tokio::time::sleep(FIRST_BACKOFF).await;
        }
    }
}

/// Proclaim and Resign need a whole candidacy: a name, a key under it and its create revision.
pub(super) fn check_leader_key(leader: &LeaderKey) -> Result<(), StoreError> {
    let prefix = prefix_of(&leader.name)?;
    if leader.key.is_empty() {
        return Err(StoreError::EmptyKey);
    }
    // Revision 0 would match a missing key in the create-revision compare.
    if leader.rev <= 0 || !leader.key.starts_with(&prefix) {
        return Err(StoreError::ElectionNotLeader);
    }
    Ok(())
}

/// The candidacy keys of one election, ordered by create revision.
#[derive(Default)]
pub(super) struct Candidates {
    by_key: HashMap<Vec<u8>, KeyValue>,
    by_create: BTreeMap<i64, Vec<u8>>,
}

impl Candidates {
    pub(super) fn put(&mut self, kv: KeyValue) {
        if let Some(old) = self.by_key.get(&kv.key)
            && old.create_revision != kv.create_revision
        {
            self.by_create.remove(&old.create_revision);
        }
        self.by_create.insert(kv.create_revision, kv.key.clone());
        self.by_key.insert(kv.key.clone(), kv);
    }

    pub(super) fn apply(&mut self, event: &Event) {
        match event.kind {
            EventKind::Put => self.put(event.kv.clone()),
            EventKind::Delete => {
                if let Some(old) = self.by_key.remove(&event.kv.key) {
                    self.by_create.remove(&old.create_revision);
                }
            }
        }
    }

    pub(super) fn leader(&self) -> Option<&KeyValue> {
        self.by_create.values().next().and_then(|key| self.by_key.get(key))
    }
}

/// The last leadership sent to an observer.
#[derive(Default)]
struct Reported {
    last: Option<(Vec<u8>, i64, i64)>,
}

impl Reported {
    /// Sends `leader` unless it is what was last sent (same key, creation and modification);
    /// false when the observer is gone.
    async fn send_if_changed(
        &mut self,
        tx: &mpsc::Sender<Result<Leadership, StoreError>>,
        leader: Option<&KeyValue>,
        revision: i64,
    ) -> bool {
        let Some(kv) = leader else {
            return true;
        };
        let identity = (kv.key.clone(), kv.create_revision, kv.mod_revision);
        if self.last.as_ref() == Some(&identity) {
            return true;
        }
        self.last = Some(identity);
        tx.send(Ok(Leadership { kv: kv.clone(), revision })).await.is_ok()
    }
}
