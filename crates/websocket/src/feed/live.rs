//! A domain's live feed: an ordered consumer on the whole domain stream, re-created after
//! failures from the last position dispatched.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use cim_core::SubjectPrefix;
use cim_runtime::Shutdown;
use futures::StreamExt;

use super::registry::Feed;
use crate::event::decode_message;

/// Why a live feed stopped.
#[derive(Debug)]
enum FeedError {
    /// The domain's stream does not exist (yet): its service creates it.
    NoStream,
    Other(String),
}

impl From<String> for FeedError {
    fn from(e: String) -> Self {
        FeedError::Other(e)
    }
}

/// Whether JetStream said the stream does not exist.
pub(super) fn stream_missing(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Follows `feed`'s stream until `stop`, re-creating its consumer after failures from the last
/// position dispatched.
pub(super) async fn follow(js: &jetstream::Context, prefix: &SubjectPrefix, feed: &Feed, stop: &Shutdown) {
    let domain = feed.domain;
    let mut backoff = Duration::from_millis(100);
    while !stop.is_triggered() {
        match consume(js, prefix, feed, stop).await {
            Ok(()) => break,
            Err(FeedError::NoStream) => {
                // Expected while the domain's service has not started (or is not deployed).
                tracing::debug!(domain = %domain, ?backoff, "stream not created yet; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(FeedError::Other(e)) => {
                tracing::warn!(domain = %domain, error = %e, ?backoff, "live feed interrupted; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    feed: &Feed,
    stop: &Shutdown,
) -> Result<(), FeedError> {
    let stream = js.get_stream(&feed.stream).await.map_err(|e| {
        if stream_missing(&e) { FeedError::NoStream } else { FeedError::Other(format!("stream {}: {e}", feed.stream)) }
    })?;
    let start = feed.position() + 1;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: prefix.domain_events(feed.domain),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            description: Some("cim-websocket live feed".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the feed consumer: {e}"))?;
    let name = consumer.cached_info().name.clone();
    let mut messages = consumer.messages().await.map_err(|e| format!("subscribing the feed: {e}"))?;
    tracing::info!(domain = %feed.domain, stream = %feed.stream, start, "live feed started");
    let outcome = loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = stop.wait() => break Ok(()),
        };
        match next {
            None => break Err(FeedError::Other("the feed subscription ended".to_owned())),
            // The ordered consumer re-creates itself after these (heartbeats missed, NATS
            // reconnected) and continues after the last message it delivered.
            Some(Err(e)) => tracing::debug!(domain = %feed.domain, error = %e, "live feed hiccup"),
            Some(Ok(message)) => {
                let Ok(position) = message.info().map(|i| i.stream_sequence) else { continue };
                // The websocket hop of the event's trace: a consumer span continuing the relay's
                // publish, whose context the event frames carry to the clients (when spans are
                // exported; otherwise the frames carry the publish's, from the headers).
                let span = match cim_runtime::telemetry::exporting() {
                    true => tracing::info_span!(
                        "websocket.dispatch",
                        otel.kind = "consumer",
                        messaging.system = "nats",
                        domain = %feed.domain,
                        position,
                    ),
                    false => tracing::Span::none(),
                };
                if let Some(h) = message.headers.as_ref().filter(|_| !span.is_none()) {
                    cim_runtime::telemetry::continue_nats(&span, h);
                }
                let _entered = span.enter();
                let event = match decode_message(position, &message) {
                    Ok(mut e) => {
                        let delay = SystemTime::now().duration_since(e.occurred_at).unwrap_or_default();
                        feed.metrics.feed_delay.record(delay.as_secs_f64());
                        if !span.is_none() {
                            e.traceparent = cim_runtime::telemetry::traceparent_of(&span).map(Box::from);
                        }
                        Some(Arc::new(e))
                    }
                    Err(e) => {
                        feed.skipped.increment(1);
                        tracing::warn!(domain = %feed.domain, position, error = %e, "skipping a stream message");
                        None
                    }
                };
                feed.dispatch(position, event);
            }
        }
    };
    let _ = stream.delete_consumer(&name).await;
    outcome
}
