//! The intake: a durable consumer `webhook-intake-<domain>` per domain stream, in stream order.
//! Each event is matched against the active subscriptions of its tenant in its domain (filter,
//! then condition) and one delivery row per match is inserted; the message is acknowledged after
//! the rows commit. A redelivered message inserts nothing (the row's key is subscription and
//! event), so no inbox is needed. Each row keeps its message's stream sequence: the sender waits
//! for the consumer's ack floor to reach it (see [`super::sender`]), so an event taken in before
//! an earlier one of its aggregate (redelivered after a crash) does not go out first.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use cim_aggregate::expr::{Expr, event_view};
use cim_core::{Domain, EventEnvelope, SubjectPrefix, headers};
use cim_runtime::Shutdown;
use cim_streams::{ConsumerMetrics, PullLoop, dead_letter_or_retry};
use sqlx::Row;
use uuid::Uuid;

use super::Delivery;
use crate::metrics::INTAKE_TOTAL;

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
                let metrics = ConsumerMetrics::new(&name);
                consumer
                    .run(
                        &js,
                        &stop,
                        |_| async {},
                        |message| {
                            let (delivery, js, prefix, metrics, name) =
                                (&delivery, &js, &prefix, &metrics, name.as_str());
                            async move {
                                match serde_json::from_slice::<EventEnvelope>(&message.payload) {
                                    Ok(event) => delivery.take(&event, &message, metrics).await,
                                    Err(e) => {
                                        let reason = format!("unreadable event: {e}");
                                        dead_letter_or_retry(js, prefix, name, metrics, &message, &reason, RETRY_AFTER)
                                            .await;
                                    }
                                }
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

impl Delivery {
    async fn take(&self, event: &EventEnvelope, message: &Message, metrics: &ConsumerMetrics) {
        self.activity.touch();
        match self.rows_for(event, message).await {
            Ok(taken) => {
                let _ = message.ack().await;
                metrics.applied.increment(1);
                if taken > 0 {
                    metrics::counter!(INTAKE_TOTAL).increment(taken);
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::warn!(event_id = %event.event_id, error = %e, "webhook intake: not taken; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
                metrics.retried.increment(1);
            }
        }
    }

    /// Inserts the event's rows; answers how many subscriptions take it.
    async fn rows_for(&self, event: &EventEnvelope, message: &Message) -> Result<u64, sqlx::Error> {
        let candidates = sqlx::query(
            "SELECT subscription_id, filter, condition FROM webhook_subscriptions \
             WHERE tenant_id = $1 AND domain = $2 AND state = 'active'",
        )
        .bind(event.tenant_id.as_uuid())
        .bind(event.domain.as_str())
        .fetch_all(&self.pool)
        .await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let subject =
            format!("{}.evt.{}.{}.{}", event.domain, event.aggregate_type, event.aggregate_id, event.event_type);
        let view = serde_json::Map::from_iter([("event".to_owned(), serde_json::Value::Object(event_view(event)))]);
        let mut taking: Vec<Uuid> = Vec::new();
        for row in candidates {
            let filter: String = row.try_get("filter")?;
            let condition: Option<String> = row.try_get("condition")?;
            if !cim_core::subject::filter_matches(&filter, &subject) {
                continue;
            }
            // A condition that cannot be evaluated on this event (a field it lacks) does not take it.
            let takes =
                condition.is_none_or(|source| Expr::parse(&source).and_then(|e| e.test(&view)).unwrap_or(false));
            if takes {
                taking.push(row.try_get("subscription_id")?);
            }
        }
        if taking.is_empty() {
            return Ok(0);
        }
        let traceparent =
            message.headers.as_ref().and_then(|h| h.get(headers::TRACEPARENT)).map(|v| v.as_str().to_owned());
        let published = std::str::from_utf8(&message.payload).unwrap_or_default();
        let stream_sequence = message.info().ok().map(|info| info.stream_sequence as i64);
        // A message taken in again keeps a pending row's place current: after `cim streams
        // rebuild` the same event sits at a new stream sequence.
        sqlx::query(
            "INSERT INTO webhook_deliveries (subscription_id, event_id, tenant_id, aggregate_id, sequence, subject, \
             event, traceparent, domain, stream_sequence) \
             SELECT s, $2, $3, $4, $5, $6, CAST($7 AS json), $8, $9, $10 FROM unnest($1::uuid[]) AS s \
             ON CONFLICT (subscription_id, event_id) DO UPDATE SET stream_sequence = EXCLUDED.stream_sequence \
             WHERE webhook_deliveries.state = 'pending' \
               AND webhook_deliveries.stream_sequence IS DISTINCT FROM EXCLUDED.stream_sequence",
        )
        .bind(&taking)
        .bind(event.event_id.as_uuid())
        .bind(event.tenant_id.as_uuid())
        .bind(event.aggregate_id.as_uuid())
        .bind(event.sequence as i64)
        .bind(message.subject.as_str())
        .bind(published)
        .bind(traceparent)
        .bind(event.domain.as_str())
        .bind(stream_sequence)
        .execute(&self.pool)
        .await?;
        Ok(taking.len() as u64)
    }
}
