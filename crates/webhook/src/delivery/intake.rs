//! The intake: a durable consumer `webhook-intake-<domain>` per domain stream, in stream order,
//! a batch at a time: the messages that have already arrived (at most [`BATCH`]; a message alone
//! is taken in as soon as it arrives, never held to fill a batch). Each event is matched against
//! the active subscriptions of its tenant in its domain (filter, then condition), looked up once
//! per batch for every tenant in it ([`rows`]); one statement inserts every delivery row of the
//! batch (one commit), and the messages are acknowledged after it commits. A redelivered message
//! inserts nothing (the row's key is subscription and event), so no inbox is needed, and a crash
//! between the commit and the acks only brings the batch back to be matched again. Each row keeps
//! its message's stream sequence: the sender waits for the consumer's ack floor to reach it (see
//! [`super::sender`]), so an event taken in before an earlier one of its aggregate (redelivered
//! after a crash) does not go out first.
//!
//! Subscriptions are read from the projection for every batch, after its messages arrived, not
//! cached: a subscription created, disabled or deleted (its projection row committed with its
//! event) is honoured for every event taken in after that commit, on every replica, as when each
//! event read them on its own.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use cim_core::{Domain, EventEnvelope, SubjectPrefix};
use cim_runtime::Shutdown;
use cim_streams::{ConsumerMetrics, PullLoop, dead_letter_or_retry};

use super::Delivery;
use crate::metrics::INTAKE_TOTAL;

mod rows;

/// Messages taken in together at most: what one pull request of the consumer asks for
/// (async-nats' default), so a batch is at most what the server has sent and not yet handed out.
pub const BATCH: usize = 200;

/// How long an event that could not be taken in (the database did not answer) waits to come again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The intake's durable consumer on `domain`'s stream.
pub fn consumer_name(domain: Domain) -> String {
    format!("webhook-intake-{domain}")
}

/// `(worker name, consumer)` per domain stream. A stream that does not exist yet (its service not
/// deployed) is bound again with backoff until it does.
pub fn consumers(
    delivery: &Arc<Delivery>,
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    stop: &Shutdown,
) -> Vec<(String, impl std::future::Future<Output = ()> + Send + 'static)> {
    Domain::ALL
        .iter()
        .map(|&domain| {
            let name = consumer_name(domain);
            let consumer = PullLoop::domain_durable(&name, prefix, domain, Duration::from_secs(30));
            let (delivery, js, prefix, stop) = (delivery.clone(), js.clone(), prefix.clone(), stop.clone());
            let worker = name.clone();
            let run = async move {
                let intake = Intake { metrics: ConsumerMetrics::new(&name), name, js, prefix };
                consumer
                    .run_batches(
                        &intake.js,
                        &stop,
                        |_| async {},
                        BATCH,
                        |messages| {
                            let (delivery, intake) = (&delivery, &intake);
                            async move {
                                delivery.take(intake, messages).await;
                                Ok(())
                            }
                        },
                    )
                    .await;
            };
            (worker, run)
        })
        .collect()
}

/// One intake consumer: where its unreadable messages go, and its metrics.
struct Intake {
    name: String,
    js: jetstream::Context,
    prefix: SubjectPrefix,
    metrics: ConsumerMetrics,
}

impl Delivery {
    /// Takes in one batch: every readable event's rows in one statement, then the acks; an
    /// unreadable message is dead-lettered on its own (the others do not wait for it).
    async fn take(&self, intake: &Intake, messages: Vec<Message>) {
        self.activity.touch();
        let mut readable = Vec::with_capacity(messages.len());
        for message in messages {
            match serde_json::from_slice::<EventEnvelope>(&message.payload) {
                Ok(event) => readable.push((event, message)),
                Err(e) => {
                    let reason = format!("unreadable event: {e}");
                    let (js, prefix, name, metrics) = (&intake.js, &intake.prefix, &intake.name, &intake.metrics);
                    dead_letter_or_retry(js, prefix, name, metrics, &message, &reason, RETRY_AFTER).await;
                }
            }
        }
        if readable.is_empty() {
            return;
        }
        match self.rows_for(&readable).await {
            Ok(taken) => {
                // In stream order, so the consumer's ack floor moves up through the batch.
                for (_, message) in &readable {
                    let _ = message.ack().await;
                }
                intake.metrics.applied.increment(readable.len() as u64);
                if taken > 0 {
                    metrics::counter!(INTAKE_TOTAL).increment(taken);
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                let first = readable[0].0.event_id;
                tracing::warn!(events = readable.len(), %first, error = %e, "webhook intake: batch not taken; will retry");
                for (_, message) in &readable {
                    let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
                }
                intake.metrics.retried.increment(readable.len() as u64);
            }
        }
    }

    /// Inserts the rows of `events` (each with the message that brought it) in one statement;
    /// answers how many rows they make.
    async fn rows_for(&self, events: &[(EventEnvelope, Message)]) -> Result<u64, sqlx::Error> {
        let subscriptions = rows::Subscriptions::active_for(&self.pool, events.iter().map(|(e, _)| e)).await?;
        if subscriptions.is_empty() {
            return Ok(0);
        }
        rows::Rows::matching(&subscriptions, events).insert(&self.pool).await
    }
}
