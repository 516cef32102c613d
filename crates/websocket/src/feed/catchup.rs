//! The stream read a resume starts with: the events in `(from, P]` for one subscription, read
//! with a filtered, short-lived consumer while the live feed buffers what comes after P.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use cim_core::SubjectPrefix;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::registry::{Feed, Target};
use crate::event::decode_message;
use crate::protocol::{Code, Refusal};
use crate::queue::Outbound;

/// How long a catch-up read waits for the next message before giving up.
const CATCHUP_STALL: Duration = Duration::from_secs(10);
/// Catch-up reads running at once per instance: after a restart every client resumes at once,
/// and each read is a consumer on the server.
const CATCHUP_CONCURRENCY: usize = 16;

/// Catch-up reads: the streams they read, and the bound on how many run at once.
pub(super) struct CatchUp {
    js: jetstream::Context,
    prefix: SubjectPrefix,
    permits: Semaphore,
}

impl CatchUp {
    pub(super) fn new(js: jetstream::Context, prefix: SubjectPrefix) -> CatchUp {
        CatchUp { js, prefix, permits: Semaphore::new(CATCHUP_CONCURRENCY) }
    }

    /// Checks that a resume from `from` can be gap-free.
    pub(super) async fn check_resumable(&self, feed: &Feed, from: u64) -> Result<(), Refusal> {
        let stream = self
            .js
            .get_stream(&feed.stream)
            .await
            .map_err(|e| Refusal::new(Code::Unavailable, format!("reading stream state: {e}")))?;
        let state = &stream.cached_info().state;
        if from > state.last_sequence {
            return Err(Refusal::new(
                Code::PositionAhead,
                format!(
                    "from {from} is beyond the last position {} of the {} stream",
                    state.last_sequence, feed.domain
                ),
            ));
        }
        if state.first_sequence > from.saturating_add(1) {
            return Err(Refusal::new(
                Code::PositionExpired,
                format!(
                    "events after {from} are no longer kept; the {} stream starts at {}",
                    feed.domain, state.first_sequence
                ),
            ));
        }
        Ok(())
    }

    /// Sends the target's events in `(from, until]` from the stream. `Err(None)`: the client
    /// went away.
    pub(super) async fn read_range(
        &self,
        feed: &Feed,
        target: &Target,
        from: u64,
        until: u64,
    ) -> Result<(), Option<Refusal>> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Some(Refusal::new(Code::Unavailable, format!("{what}: {e}; the subscription ended, subscribe again")))
        };
        let _permit = self.permits.acquire().await.map_err(|e| unavailable("catch-up", &e))?;
        let stream = self.js.get_stream(&feed.stream).await.map_err(|e| unavailable("reading the stream", &e))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: target.filter.subject(&self.prefix),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from + 1 },
                description: Some("cim-websocket catch-up".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("reading the stream", &e))?;
        let name = consumer.cached_info().name.clone();
        let mut result = Ok(());
        if consumer.cached_info().num_pending > 0 {
            result = async {
                let mut messages = consumer.messages().await.map_err(|e| unavailable("reading the stream", &e))?;
                loop {
                    let message = match tokio::time::timeout(CATCHUP_STALL, messages.next()).await {
                        Err(_) => return Err(unavailable("reading the stream", &"no message in time")),
                        Ok(None) => return Err(unavailable("reading the stream", &"subscription ended")),
                        Ok(Some(Err(e))) => {
                            tracing::debug!(error = %e, "catch-up hiccup");
                            continue;
                        }
                        Ok(Some(Ok(m))) => m,
                    };
                    let Ok((position, pending)) = message.info().map(|i| (i.stream_sequence, i.pending)) else {
                        continue;
                    };
                    if position <= from {
                        continue;
                    }
                    if position > until {
                        return Ok(());
                    }
                    if let Ok(event) = decode_message(position, &message)
                        && event.tenant == target.tenant
                        && target.filter.matches(&event.aggregate_type, &event.aggregate_id, &event.event_type)
                    {
                        let item = Outbound::Event { id_json: target.id_json.clone(), event: Arc::new(event) };
                        target.client.push_patiently(item).await.map_err(|_| None)?;
                        feed.metrics.catchup_events.increment(1);
                    }
                    if position == until || pending == 0 {
                        return Ok(());
                    }
                }
            }
            .await;
        }
        // Ephemeral consumers also expire on their own; deleting now keeps the server tidy.
        let _ = stream.delete_consumer(&name).await;
        result
    }
}
