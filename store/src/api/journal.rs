//! Keel's Journal service (`keeljournal.Journal/Follow`): the committed log streamed to
//! `keel ctl backup --follow`. Admin only, like Maintenance Snapshot (the log holds every value).
//!
//! Invariants: messages carry consecutive entries from the index asked for; each message holds at
//! most [`MESSAGE_BYTES`] of entries (plus one entry, when a single one is larger); at most
//! [`BUFFERED_MESSAGES`] wait for a slow client, then reading pauses; the stream ends when the
//! client goes away or the server shuts down.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keel_proto::keeljournal as pb;
use tonic::{Request, Response, Status};

use super::{Api, observe};

/// Entry bytes per message.
const MESSAGE_BYTES: usize = 1 << 20;
/// Messages queued ahead of the client.
const BUFFERED_MESSAGES: usize = 4;
/// How long a follower waits for a new entry before it gets an empty keep-alive message.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The Journal service.
#[derive(Clone, Debug)]
pub struct JournalService {
    api: Arc<Api>,
}

impl JournalService {
    pub(super) fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::journal_server::Journal for JournalService {
    type FollowStream = FollowStream;

    async fn follow(&self, request: Request<pb::FollowRequest>) -> Result<Response<Self::FollowStream>, Status> {
        observe("JournalFollow", async {
            let caller = self.api.caller(&request)?;
            self.api.auth().check_admin(caller.as_deref())?;
            let from = request.into_inner().from_index.max(1);
            let member = self.api.member.clone();
            // Fail the call itself (not the stream) when the start is already purged.
            let first = member.journal(from, MESSAGE_BYTES, Duration::ZERO).await?;
            let (tx, rx) = tokio::sync::mpsc::channel(BUFFERED_MESSAGES);
            let shutdown = self.api.shutting_down();
            tokio::spawn(async move {
                let cluster_id = member.cluster_id();
                let mut next = from;
                let mut pending = Some(first);
                let stream = async {
                    loop {
                        let records = match pending.take() {
                            Some(records) => Ok(records),
                            None => member.journal(next, MESSAGE_BYTES, KEEPALIVE).await,
                        };
                        let message = records.map(|records| {
                            next = records.last().map_or(next, |last| last.index + 1);
                            pb::FollowResponse {
                                entries: records
                                    .into_iter()
                                    .map(|r| pb::JournalEntry { index: r.index, entry: r.entry })
                                    .collect(),
                                cluster_id,
                                applied_index: member.core().applied_log_id().map_or(0, |id| id.index()),
                            }
                        });
                        let failed = message.is_err();
                        if tx.send(message.map_err(Status::from)).await.is_err() || failed {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = stream => {}
                    () = shutdown => {}
                }
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            Ok(Response::new(Box::pin(stream) as Self::FollowStream))
        })
        .await
    }
}
