//! Dead letters: a message no handler could apply, kept with why.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use cim_core::{SubjectPrefix, headers};

use crate::{ConsumerMetrics, StreamError};

/// Copies `message` to the dead-letter stream under `<prefix>.dlq.<consumer>` with the reason
/// and original subject in headers, and waits for JetStream's ack. The caller then terminates
/// the original (`AckKind::Term`) and counts it in `cim_consumer_dead_letters_total`. Shared by
/// the event store's `Consumer` and consumers that keep no inbox (the gateway's cache invalidator).
pub async fn publish_dead_letter(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    consumer: &str,
    message: &jetstream::Message,
    reason: &str,
) -> Result<(), StreamError> {
    let empty = async_nats::HeaderMap::new();
    let original = message.headers.as_ref().unwrap_or(&empty);
    publish_dead_letter_of(js, prefix, consumer, &message.subject, original, message.payload.clone(), reason).await
}

/// [`publish_dead_letter`] for a message that is no longer a JetStream message in hand (the
/// webhook sender keeps its deliveries in Postgres): its original subject, headers and payload.
pub async fn publish_dead_letter_of(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    consumer: &str,
    original_subject: &str,
    original: &async_nats::HeaderMap,
    payload: bytes::Bytes,
    reason: &str,
) -> Result<(), StreamError> {
    let subject = prefix.dlq_subject(consumer).map_err(|e| StreamError::Invalid(e.to_string()))?;
    // A dead letter is a new message: without the original's `Nats-*` publish controls (its
    // msg id would make it a duplicate; its expected-last-msg-id would not hold in the DLQ).
    let mut h = async_nats::HeaderMap::new();
    for (name, values) in original.iter() {
        if !AsRef::<str>::as_ref(name).to_ascii_lowercase().starts_with("nats-") {
            for v in values {
                h.append(name.clone(), v.clone());
            }
        }
    }
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(1000).collect();
    h.insert(headers::DLQ_REASON, reason.as_str());
    h.insert(headers::DLQ_ORIGINAL_SUBJECT, original_subject);
    let ack = js
        .publish_with_headers(subject, h, payload)
        .await
        .map_err(|e| StreamError::JetStream(format!("dead-letter publish: {e}")))?;
    ack.await.map_err(|e| StreamError::JetStream(format!("dead-letter not acknowledged: {e}")))?;
    Ok(())
}

/// What a consumer without an inbox does with a message no retry can help (it does not read as
/// an event): dead-lettered with `reason`, then terminated and counted; if the dead-letter
/// stream does not take it, the message comes again after `retry_after`, so nothing is lost.
pub async fn dead_letter_or_retry(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    consumer: &str,
    metrics: &ConsumerMetrics,
    message: &jetstream::Message,
    reason: &str,
    retry_after: Duration,
) {
    match publish_dead_letter(js, prefix, consumer, message, reason).await {
        Ok(()) => {
            tracing::error!(%consumer, %reason, "sent to the dead-letter stream");
            let _ = message.ack_with(AckKind::Term).await;
            metrics.dead_letters.increment(1);
        }
        Err(e) => {
            tracing::warn!(%consumer, error = %e, "dead-letter publish failed; will retry");
            let _ = message.ack_with(AckKind::Nak(Some(retry_after))).await;
        }
    }
}
