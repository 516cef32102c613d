//! Dead letters: a message no handler could apply, kept with why.

use async_nats::jetstream;
use cim_core::{SubjectPrefix, headers};

use crate::StreamError;

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
    let subject = prefix.dlq_subject(consumer).map_err(|e| StreamError::Invalid(e.to_string()))?;
    // A dead letter is a new message: without the original's `Nats-*` publish controls (its
    // msg id would make it a duplicate; its expected-last-msg-id would not hold in the DLQ).
    let mut h = async_nats::HeaderMap::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        if !AsRef::<str>::as_ref(name).to_ascii_lowercase().starts_with("nats-") {
            for v in values {
                h.append(name.clone(), v.clone());
            }
        }
    }
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(1000).collect();
    h.insert(headers::DLQ_REASON, reason.as_str());
    h.insert(headers::DLQ_ORIGINAL_SUBJECT, message.subject.as_str());
    let ack = js
        .publish_with_headers(subject, h, message.payload.clone())
        .await
        .map_err(|e| StreamError::JetStream(format!("dead-letter publish: {e}")))?;
    ack.await.map_err(|e| StreamError::JetStream(format!("dead-letter not acknowledged: {e}")))?;
    Ok(())
}
