//! The consumer helper: a durable pull consumer with explicit ack whose handler runs inside a
//! Postgres transaction that also records the event id in `inbox`. A redelivered event that was
//! already applied is acknowledged without running the handler again. After the last allowed
//! delivery a failing event is copied to the dead-letter stream with the reason, then terminated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use cim_core::{EventEnvelope, SubjectPrefix};

use cim_runtime::Shutdown;
use futures::StreamExt;
use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

use crate::error::StoreError;
use cim_streams::{ConsumerMetrics, publish_dead_letter};

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

    async fn consumer(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, StoreError> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| StoreError::JetStream(format!("stream {}: {e}", self.config.stream)))?;
        let config = pull::Config {
            durable_name: Some(self.config.name.clone()),
            filter_subject: self.config.filter_subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            // Enforced here, not by the server: a message the server stops redelivering before
            // it reached the dead-letter stream would be lost to this consumer.
            max_deliver: -1,
            max_ack_pending: self.config.max_ack_pending,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(&self.config.name, config)
            .await
            .map_err(|e| StoreError::JetStream(format!("consumer {}: {e}", self.config.name)))
    }

    /// Consumes until `stop`; reconnects to the consumer after errors.
    pub async fn run(self, stop: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_triggered() {
            match self.consume(&stop).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(consumer = %self.config.name, error = %e, ?backoff, "consumer interrupted");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume(&self, stop: &Shutdown) -> Result<(), StoreError> {
        let mut consumer = self.consumer().await?;
        let mut messages =
            consumer.messages().await.map_err(|e| StoreError::JetStream(format!("pulling messages: {e}")))?;
        let mut last_lag = Instant::now() - Duration::from_secs(60);
        loop {
            if last_lag.elapsed() >= Duration::from_secs(5) {
                if let Ok(info) = consumer.info().await {
                    self.metrics.lag.set(info.num_pending as f64);
                }
                last_lag = Instant::now();
            }
            let next = tokio::select! {
                m = messages.next() => m,
                _ = stop.wait() => return Ok(()),
            };
            let Some(message) = next else { return Ok(()) };
            let message = message.map_err(|e| StoreError::JetStream(format!("receiving: {e}")))?;
            self.process(message).await?;
        }
    }

    async fn process(&self, message: jetstream::Message) -> Result<(), StoreError> {
        let name = &self.config.name;
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        if delivered > 1 {
            self.metrics.redeliveries.increment(1);
        }
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
