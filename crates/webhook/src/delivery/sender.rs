//! The sender: claims due deliveries (each the oldest pending one of its subscription and
//! aggregate, and only once its stream's intake has taken in everything before it
//! ([`super::floor`]), so an aggregate's events go out in order) under a lease, calls, and records what
//! the answer means: delivered; tried again after a backoff with jitter (or the receiver's
//! Retry-After); the subscription disabled on 410; after the last attempt, the dead-letter
//! stream with the reason. What the calls that finished in one turn of the loop came to is
//! recorded with one statement ([`outcome`]) before the loop claims again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use cim_aggregate::{CommandOptions, ExecutorError};
use cim_core::{Actor, AggregateId, EventEnvelope, SubjectPrefix, TenantId, headers};
use cim_runtime::Shutdown;
use cim_runtime::edge::Caller;
use sqlx::{PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use super::cloudevent::{self, Outcome};
use super::floor::{self, AckFloors};
use super::{DEAD_LETTER_CONSUMER, Delivery, SUBSCRIPTION_HEADER};
use crate::metrics::{DELIVERIES_TOTAL, DELIVERY_SECONDS, LAG_SECONDS, PENDING};
use crate::signing::Secret;
use crate::subscription::{SubscriptionCommand, SubscriptionError};
use outcome::{Finished, RowOutcome};

pub mod outcome;

/// A claimed delivery.
#[derive(Debug)]
struct Claimed {
    subscription: Uuid,
    event_id: Uuid,
    tenant: Uuid,
    subject: String,
    event: String,
    traceparent: Option<String>,
    attempts: u32,
    url: String,
    secret: String,
}

/// Runs until `stop`: claims as many deliveries as there are free call slots, whenever calls
/// finish (their outcomes recorded first, all in one statement), the intake wakes it, or the
/// poll interval passes. Each call is a task of its own: a call must get on while this loop
/// waits for a connection to claim or record with (polled only from here, the calls held every
/// connection and the loop waited for one of them: one delivery per acquire timeout).
pub async fn run(delivery: Arc<Delivery>, js: jetstream::Context, prefix: SubjectPrefix, stop: Shutdown) {
    let slots = delivery.settings.concurrency;
    let mut floors = AckFloors::new(js.clone(), prefix.clone());
    // Dropped at return: calls in flight are aborted, their leases lapse and they are made again.
    let mut calls = tokio::task::JoinSet::new();
    loop {
        // Slots left free on floors not asked for this time: look again once they may be stale.
        let mut floors_stale = false;
        if calls.len() < slots {
            let asked = floors.refresh().await;
            let free = slots - calls.len();
            match delivery.claim(&floors, free).await {
                Ok(claimed) => {
                    floors_stale = !asked && claimed.len() < free;
                    if !claimed.is_empty() || !calls.is_empty() {
                        delivery.activity.touch();
                    }
                    for c in claimed {
                        let (delivery, js, prefix) = (delivery.clone(), js.clone(), prefix.clone());
                        calls.spawn(async move { delivery.deliver(&js, &prefix, c).await });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhook sender: claiming failed; trying again at the next poll"),
            }
        }
        tokio::select! {
            Some(first) = calls.join_next(), if !calls.is_empty() => {
                // Every other call that finished meanwhile frees its slot too, and is recorded with it.
                let finished = finished_calls(&mut calls, Some(first));
                delivery.record(&finished).await;
            }
            () = delivery.wake.notified() => {}
            () = tokio::time::sleep(floor::FRESH), if floors_stale => {}
            () = tokio::time::sleep(delivery.settings.poll) => {}
            () = stop.wait() => {
                // Calls that finished are recorded; those still in flight are made again.
                let finished = finished_calls(&mut calls, None);
                delivery.record(&finished).await;
                return;
            }
        }
    }
}

/// `first` and every other call that has finished. A call that panicked leaves its row leased:
/// made again when the lease lapses.
fn finished_calls(
    calls: &mut tokio::task::JoinSet<Finished>,
    first: Option<Result<Finished, tokio::task::JoinError>>,
) -> Vec<Finished> {
    let mut finished: Vec<Finished> = first.into_iter().flat_map(Result::ok).collect();
    while let Some(done) = calls.try_join_next() {
        finished.extend(done.ok());
    }
    finished
}

impl Delivery {
    async fn claim(&self, floors: &AckFloors, limit: usize) -> Result<Vec<Claimed>, sqlx::Error> {
        // The lease outlasts one call with room to record its outcome.
        let lease = self.settings.timeout + Duration::from_secs(5);
        let (domains, floors) = floors.as_columns();
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT d.subscription_id, d.event_id FROM webhook_deliveries d \
               WHERE d.state = 'pending' AND d.next_at <= now() AND (d.leased_until IS NULL OR d.leased_until < now()) \
                 AND (d.stream_sequence IS NULL OR d.stream_sequence <= 1 + coalesce( \
                      (SELECT f.floor FROM unnest($3::text[], $4::bigint[]) AS f(domain, floor) \
                       WHERE f.domain = d.domain), 0)) \
                 AND EXISTS (SELECT 1 FROM webhook_subscriptions s \
                             WHERE s.subscription_id = d.subscription_id AND s.state = 'active') \
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.subscription_id = d.subscription_id \
                                 AND e.aggregate_id = d.aggregate_id AND e.state = 'pending' AND e.sequence < d.sequence) \
               ORDER BY d.next_at LIMIT $1 FOR UPDATE OF d SKIP LOCKED) \
             UPDATE webhook_deliveries w SET leased_until = now() + make_interval(secs => $2), attempts = w.attempts + 1 \
             FROM due, webhook_subscriptions s, webhook_secrets k \
             WHERE w.subscription_id = due.subscription_id AND w.event_id = due.event_id \
               AND s.subscription_id = w.subscription_id AND k.subscription_id = w.subscription_id \
             RETURNING w.subscription_id, w.event_id, w.tenant_id, w.subject, w.event::text AS event, w.traceparent, w.attempts, \
                       s.url, k.secret",
        )
        .bind(limit as i64)
        .bind(lease.as_secs_f64())
        .bind(&domains)
        .bind(&floors)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    subscription: r.try_get("subscription_id")?,
                    event_id: r.try_get("event_id")?,
                    tenant: r.try_get("tenant_id")?,
                    subject: r.try_get("subject")?,
                    event: r.try_get("event")?,
                    traceparent: r.try_get("traceparent")?,
                    attempts: r.try_get::<i32, _>("attempts")?.max(0) as u32,
                    url: r.try_get("url")?,
                    secret: r.try_get("secret")?,
                })
            })
            .collect()
    }

    /// Makes the call; answers what to record on the row.
    async fn deliver(&self, js: &jetstream::Context, prefix: &SubjectPrefix, c: Claimed) -> Finished {
        let event = match serde_json::from_str::<EventEnvelope>(&c.event) {
            Ok(event) => event,
            // The intake stored what the stream published; an envelope it could read.
            Err(e) => return self.give_up(js, prefix, &c, 0, &format!("unreadable event: {e}")).await,
        };
        let span = tracing::info_span!("webhook.deliver", otel.kind = "client", subscription = %c.subscription, event_id = %c.event_id, attempt = c.attempts);
        if let Some(tp) = c.traceparent.as_deref().and_then(|tp| http::HeaderValue::from_str(tp).ok()) {
            let mut parent = http::HeaderMap::new();
            parent.insert("traceparent", tp);
            cim_runtime::telemetry::continue_http(&span, &parent);
        }
        let answer = match Secret::parse(&c.secret) {
            Ok(secret) => {
                let (headers, body) =
                    span.in_scope(|| cloudevent::request(&event, c.traceparent.as_deref(), &secret, Utc::now()));
                let started = Instant::now();
                let answer = cloudevent::send(&self.client, &c.url, headers, body).instrument(span).await;
                metrics::histogram!(DELIVERY_SECONDS).record(started.elapsed().as_secs_f64());
                answer
            }
            Err(e) => Outcome::Failed { status: 0, reason: format!("the stored secret does not parse: {e}") },
        };
        let outcome = match answer {
            Outcome::Delivered(_) => {
                metrics::counter!(DELIVERIES_TOTAL, "outcome" => "delivered").increment(1);
                RowOutcome::Delivered
            }
            Outcome::Gone => {
                metrics::counter!(DELIVERIES_TOTAL, "outcome" => "gone").increment(1);
                self.disable(&c).await;
                RowOutcome::Gone { reason: "answered 410 Gone: the subscription was disabled".into() }
            }
            Outcome::Throttled { status, retry_after } if c.attempts < self.settings.attempts => {
                metrics::counter!(DELIVERIES_TOTAL, "outcome" => "throttled").increment(1);
                let wait = retry_after.min(self.settings.backoff_max);
                let reason = format!("answered {status} with Retry-After {}s", retry_after.as_secs());
                RowOutcome::Retry { status, reason, wait }
            }
            Outcome::Failed { status, reason } if c.attempts < self.settings.attempts => {
                metrics::counter!(DELIVERIES_TOTAL, "outcome" => "retried").increment(1);
                RowOutcome::Retry { status, reason, wait: backoff(&self.settings, c.attempts) }
            }
            Outcome::Throttled { status, .. } => {
                let reason = format!("answered {status} to the last of {} attempts", c.attempts);
                return self.give_up(js, prefix, &c, status, &reason).await;
            }
            Outcome::Failed { status, reason } => {
                let reason = format!("{reason} (the last of {} attempts)", c.attempts);
                return self.give_up(js, prefix, &c, status, &reason).await;
            }
        };
        Finished { subscription: c.subscription, event_id: c.event_id, outcome }
    }

    /// Records what the calls of one turn came to (see [`outcome`]).
    async fn record(&self, finished: &[Finished]) {
        if let Err(e) = outcome::record(&self.pool, finished).await {
            // The leases lapse and the calls are made again: at least once.
            tracing::warn!(calls = finished.len(), error = %e, "webhook outcomes not recorded");
        }
    }

    /// The last attempt failed: the event goes to the dead-letter stream with the reason, then
    /// the row is marked dead (replayable). If the stream does not take it, the row stays pending
    /// and is tried again at the next backoff, so nothing is lost.
    async fn give_up(
        &self,
        js: &jetstream::Context,
        prefix: &SubjectPrefix,
        c: &Claimed,
        status: u16,
        reason: &str,
    ) -> Finished {
        let mut h = async_nats::HeaderMap::new();
        h.insert(SUBSCRIPTION_HEADER, c.subscription.to_string().as_str());
        h.insert(headers::TENANT_ID, c.tenant.to_string().as_str());
        if let Some(tp) = &c.traceparent {
            h.insert(headers::TRACEPARENT, tp.as_str());
        }
        let payload = bytes::Bytes::from(c.event.clone());
        let published =
            cim_streams::publish_dead_letter_of(js, prefix, DEAD_LETTER_CONSUMER, &c.subject, &h, payload, reason)
                .await;
        let outcome = match published {
            Ok(()) => {
                metrics::counter!(DELIVERIES_TOTAL, "outcome" => "dead").increment(1);
                tracing::warn!(subscription = %c.subscription, event_id = %c.event_id, %reason, "webhook delivery dead-lettered");
                RowOutcome::Dead { status, reason: reason.to_owned() }
            }
            Err(e) => {
                tracing::warn!(subscription = %c.subscription, error = %e, "dead-letter publish failed; will retry");
                let reason = format!("{reason}; dead-lettering failed: {e}");
                RowOutcome::Retry { status, reason, wait: backoff(&self.settings, c.attempts) }
            }
        };
        Finished { subscription: c.subscription, event_id: c.event_id, outcome }
    }

    /// 410 Gone: the subscription is disabled through its aggregate, like an operator would.
    async fn disable(&self, c: &Claimed) {
        let (Ok(tenant), Ok(id)) = (TenantId::from_uuid(c.tenant), AggregateId::from_uuid(c.subscription)) else {
            return;
        };
        let caller = Caller { tenant, actor: Actor::service("webhook"), correlation: None };
        let command = SubscriptionCommand::Disable { reason: format!("{} answered 410 Gone", c.url) };
        match self.subscriptions.execute(&caller, id, &command, &CommandOptions::default()).await {
            Ok(_) | Err(ExecutorError::Rule(SubscriptionError::Already(_) | SubscriptionError::Deleted)) => {}
            Err(e) => tracing::warn!(subscription = %id, error = %e, "disabling after 410 failed"),
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): the first backoff doubled per attempt,
/// capped, with "equal jitter" (half fixed, half random) so receivers recovering from an outage
/// are not hit by every sender at once.
pub fn backoff(settings: &cim_runtime::config::WebhookSettings, attempt: u32) -> Duration {
    let doubled = settings.backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = doubled.min(settings.backoff_max);
    capped.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// Exports per-subscription pending deliveries and lag every few seconds (every replica the
/// same values, from the shared queue).
pub async fn export_stats(pool: PgPool, stop: Shutdown) {
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        let rows = sqlx::query(
            "SELECT subscription_id::text AS id, count(*) AS pending, \
                    extract(epoch FROM now() - min(created_at))::float8 AS lag \
             FROM webhook_deliveries WHERE state = 'pending' GROUP BY subscription_id",
        )
        .fetch_all(&pool)
        .await;
        if let Ok(rows) = rows {
            let mut seen = std::collections::HashSet::new();
            for r in rows {
                let (Ok(id), Ok(pending), Ok(lag)) =
                    (r.try_get::<String, _>("id"), r.try_get::<i64, _>("pending"), r.try_get::<f64, _>("lag"))
                else {
                    continue;
                };
                metrics::gauge!(PENDING, "subscription" => id.clone()).set(pending as f64);
                metrics::gauge!(LAG_SECONDS, "subscription" => id.clone()).set(lag);
                seen.insert(id);
            }
            for gone in known.difference(&seen) {
                metrics::gauge!(PENDING, "subscription" => gone.clone()).set(0.0);
                metrics::gauge!(LAG_SECONDS, "subscription" => gone.clone()).set(0.0);
            }
            known = seen;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = stop.wait() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let settings = cim_runtime::config::WebhookSettings {
            attempts: 8,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            timeout: Duration::from_secs(1),
            poll: Duration::from_millis(50),
            concurrency: 4,
            idle_exit: None,
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            for _ in 0..50 {
                let wait = backoff(&settings, attempt).as_millis() as u64;
                assert!(wait >= full / 2 && wait <= full, "attempt {attempt}: {wait} ms");
            }
        }
    }
}
