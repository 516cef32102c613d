//! The consumer helper: a durable pull consumer with explicit ack whose handler runs inside a
//! Postgres transaction that also records the event id in `inbox`. A redelivered event that was
//! already applied is acknowledged without running the handler again. After the last allowed
//! delivery a failing event is copied to the dead-letter stream with the reason, then terminated.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use cim_core::{EventEnvelope, SubjectPrefix};

use cim_runtime::Shutdown;
use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use crate::error::StoreError;
use cim_streams::{Binding, ConsumerMetrics, PullLoop, publish_dead_letter};

/// Applies one event. Whatever it writes through `tx` commits together with the inbox record.
pub trait EventHandler: Send + Sync {
    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a EventEnvelope) -> BoxFuture<'a, Result<(), String>>;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Durable name; also the inbox key and the DLQ subject token. `[A-Za-z0-9_-]`.
    pub name: String,
    pub stream: String,
    /// One filter subject (NATS 2.9), e.g. `cim.graph.evt.>`.
    pub filter_subject: String,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    pub ack_wait: Duration,
    /// Delay before a failed event is redelivered.
    pub retry_delay: Duration,
}

impl ConsumerConfig {
    pub fn new(name: &str, stream: &str, filter_subject: &str) -> Self {
        Self {
            name: name.to_owned(),
            stream: stream.to_owned(),
            filter_subject: filter_subject.to_owned(),
            max_deliver: 5,
            max_ack_pending: 1000,
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
        }
    }
}

pub struct Consumer {
    pool: PgPool,
    js: jetstream::Context,
    prefix: SubjectPrefix,
    config: ConsumerConfig,
    handler: Arc<dyn EventHandler>,
    metrics: ConsumerMetrics,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("config", &self.config).finish_non_exhaustive()
    }
}

enum Outcome {
    Applied,
    Duplicate,
    Retry(String, Duration),
    DeadLetter(String),
}

/// Why applying failed: the handler refused the event (counts toward dead-lettering), or the
/// database did not answer (retried with backoff, never dead-lettered).
enum Failure {
    Handler(String),
    Infra(String),
}

impl Consumer {
    /// `pool` must point at the consuming service's schema (where its `inbox` lives).
    pub fn new(
        pool: PgPool,
        js: jetstream::Context,
        prefix: SubjectPrefix,
        config: ConsumerConfig,
        handler: Arc<dyn EventHandler>,
    ) -> Result<Self, StoreError> {
        cim_core::subject::validate_token(&config.name).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let metrics = ConsumerMetrics::new(&config.name);
        Ok(Self { pool, js, prefix, config, handler, metrics })
    }

    fn pull(&self) -> PullLoop {
        PullLoop {
            name: self.config.name.clone(),
            stream: self.config.stream.clone(),
            binding: Binding::Durable(pull::Config {
                durable_name: Some(self.config.name.clone()),
                filter_subject: self.config.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                // Enforced here, not by the server: a message the server stops redelivering
                // before it reached the dead-letter stream would be lost to this consumer.
                max_deliver: -1,
                max_ack_pending: self.config.max_ack_pending,
                ..Default::default()
            }),
            // One at a time: a handler's transaction sees the effects of the event before.
            concurrency: 1,
            metrics: Some(self.metrics.clone()),
        }
    }

    /// Consumes until `stop`; binds the consumer again after errors.
    pub async fn run(self, stop: Shutdown) {
        self.pull()
            .run(
                &self.js,
                &stop,
                |_| async {},
                |message| async { self.process(message).await.map_err(|e| e.to_string()) },
            )
            .await;
    }

    async fn process(&self, message: jetstream::Message) -> Result<(), StoreError> {
        let name = &self.config.name;
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let outcome = match serde_json::from_slice::<EventEnvelope>(&message.payload) {
            // Unreadable: no retry can help.
            Err(e) => Outcome::DeadLetter(format!("unreadable event: {e}")),
            Ok(event) => {
                let span = tracing::info_span!("consume", consumer = %name, event_id = %event.event_id, otel.kind = "consumer");
                if let Some(h) = &message.headers {
                    cim_runtime::telemetry::continue_nats(&span, h);
                }
                match tracing::Instrument::instrument(self.apply(&event), span).await {
                    Ok(true) => Outcome::Applied,
                    Ok(false) => Outcome::Duplicate,
                    Err(Failure::Handler(reason)) if delivered >= self.config.max_deliver => {
                        Outcome::DeadLetter(reason)
                    }
                    Err(Failure::Handler(reason)) => Outcome::Retry(reason, self.config.retry_delay),
                    Err(Failure::Infra(reason)) => {
                        let exp = (delivered.clamp(1, 8) - 1) as u32;
                        Outcome::Retry(reason, (self.config.retry_delay * 2u32.pow(exp)).min(Duration::from_secs(30)))
                    }
                }
            }
        };
        let ack_err = |e: async_nats::Error| StoreError::JetStream(format!("ack: {e}"));
        match outcome {
            Outcome::Applied => {
                message.ack().await.map_err(ack_err)?;
                self.metrics.applied.increment(1);
            }
            Outcome::Duplicate => {
                message.ack().await.map_err(ack_err)?;
                self.metrics.duplicates.increment(1);
            }
            Outcome::Retry(reason, delay) => {
                tracing::warn!(consumer = %name, delivered, %reason, ?delay, "not applied; will retry");
                message.ack_with(AckKind::Nak(Some(delay))).await.map_err(ack_err)?;
                self.metrics.retried.increment(1);
            }
            Outcome::DeadLetter(reason) => {
                tracing::error!(consumer = %name, delivered, %reason, "sending event to the dead-letter stream");
                match self.dead_letter(&message, &reason).await {
                    Ok(()) => {
                        message.ack_with(AckKind::Term).await.map_err(ack_err)?;
                        self.metrics.dead_letters.increment(1);
                    }
                    Err(e) => {
                        // Not dead-lettered: keep it, try again later.
                        tracing::warn!(consumer = %name, error = %e, "dead-letter publish failed; will retry");
                        message.ack_with(AckKind::Nak(Some(self.config.retry_delay))).await.map_err(ack_err)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the handler and records the inbox entry in one transaction. `Ok(false)`: already
    /// applied before.
    async fn apply(&self, event: &EventEnvelope) -> Result<bool, Failure> {
        let infra = |e: sqlx::Error| Failure::Infra(format!("database: {e}"));
        let mut tx = self.pool.begin().await.map_err(infra)?;
        let inserted = sqlx::query("INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(&self.config.name)
            .bind(event.event_id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(infra)?
            .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        self.handler.handle(&mut tx, event).await.map_err(Failure::Handler)?;
        tx.commit().await.map_err(infra)?;
        Ok(true)
    }

    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) -> Result<(), StoreError> {
        Ok(publish_dead_letter(&self.js, &self.prefix, &self.config.name, message, reason).await?)
    }
}
