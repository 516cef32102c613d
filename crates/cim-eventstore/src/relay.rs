//! The outbox relay: publishes committed events to the domain's JetStream stream, in
//! per-aggregate order, and deletes them from the outbox once JetStream acknowledged them.
//!
//! - One active relay per schema across processes: the holder of a session advisory lock.
//! - Woken by an in-process signal right after a local commit, by `LISTEN` when a writer in
//!   another process committed, and by a timer.
//! - Per-aggregate order under failures: a batch is pipelined, and every message but the first
//!   carries `Nats-Expected-Last-Msg-Id` = its predecessor's id. A lost message makes the server
//!   reject all that follow it, so nothing overtakes an event that must be retried.
//! - Duplicates after a crash between ack and delete are dropped by JetStream's duplicate
//!   window (`Nats-Msg-Id` = event id).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use cim_core::{EventEnvelope, EventSubject, SubjectPrefix, headers};
use cim_runtime::Shutdown;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgListener};
use tracing::Instrument;

use crate::error::StoreError;
use crate::metrics::{
    OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE_SECONDS, RELAY_ERRORS_TOTAL, RELAY_LEADER, RELAY_PUBLISHED_TOTAL,
};
use crate::store::{EVENT_COLUMNS, EventStore, envelope_from_row, notify_channel};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub batch_size: i64,
    /// Fallback wake-up when no signal arrives.
    pub poll_interval: Duration,
    pub ack_timeout: Duration,
    /// How often a non-leader retries the lock, and the leader re-checks it still holds it.
    pub lock_interval: Duration,
    pub max_backoff: Duration,
    /// After a wake-up, wait this long so commits arriving together go out as one batch (fewer
    /// outbox round trips under load, at the cost of this much latency).
    pub settle: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            poll_interval: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(5),
            lock_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            settle: Duration::from_millis(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Relay {
    store: EventStore,
    js: jetstream::Context,
    prefix: SubjectPrefix,
    config: RelayConfig,
}

/// The advisory-lock key for a schema's relay.
pub fn lock_key(schema: &str) -> i64 {
    // Stable across processes and builds: the first 8 bytes of a name-based UUID.
    let uuid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("cim.relay.{schema}").as_bytes());
    let (head, _) = uuid.as_u64_pair();
    head as i64
}

struct Pending {
    position: i64,
    traceparent: Option<String>,
    event: EventEnvelope,
}

impl Relay {
    pub fn new(store: EventStore, js: jetstream::Context, prefix: SubjectPrefix, mut config: RelayConfig) -> Self {
        // async-nats allows 5000 unacknowledged publishes per context and waits (without a
        // timeout) for a free slot: a larger batch would wait on its own acks.
        config.batch_size = config.batch_size.clamp(1, 4000);
        Self { store, js, prefix, config }
    }

    /// Runs until `stop`: competes for the lock, publishes while holding it.
    pub async fn run(self, stop: Shutdown) {
        let schema = self.store.schema().to_owned();
        while !stop.is_triggered() {
            let mut led = false;
            if let Err(e) = self.lead(&stop, &mut led).await {
                metrics::counter!(RELAY_ERRORS_TOTAL, "schema" => schema.clone()).increment(1);
                tracing::warn!(schema = %schema, error = %e, "relay lost its footing; retrying");
            }
            // Only the relay that held the lock speaks for this process (a second relay in the
            // same process that never got the lock must not clear the flag).
            if led {
                self.store.set_local_leader(false);
                metrics::gauge!(RELAY_LEADER, "schema" => schema.clone()).set(0.0);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.lock_interval) => {}
                _ = stop.wait() => {}
            }
        }
    }

    /// Takes the lock if free, then publishes until stopped or the lock connection fails.
    async fn lead(&self, stop: &Shutdown, led: &mut bool) -> Result<(), StoreError> {
        let schema = self.store.schema().to_owned();
        let mut lock_conn = self.store.pool().acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_key(&schema))
            .fetch_one(&mut lock_conn)
            .await?;
        if !got {
            return Ok(());
        }
        tracing::info!(schema = %schema, "relay is the leader for this schema");
        *led = true;
        self.store.set_local_leader(true);
        metrics::gauge!(RELAY_LEADER, "schema" => schema.clone()).set(1.0);
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen(&notify_channel(&schema)).await?;

        let mut backoff = Duration::from_millis(100);
        // A new leader, or one that just saw a failure, may face messages already in the stream
        // (acks lost, another leader mid-batch). Duplicates are acked without moving the stream's
        // last msg id, which would let a pipelined chain skip an unpublished event; so publish
        // one at a time, each acknowledged before the next, until a batch goes through cleanly.
        let mut careful = true;
        let mut last_lock_check = Instant::now();
        let mut last_gauges = Instant::now() - Duration::from_secs(60);
        loop {
            if last_lock_check.elapsed() >= self.config.lock_interval {
                // The lock lives as long as this session: if the connection died, so did the lock.
                sqlx::query("SELECT 1").execute(&mut lock_conn).await?;
                last_lock_check = Instant::now();
            }
            if last_gauges.elapsed() >= Duration::from_secs(5) {
                self.record_backlog().await;
                last_gauges = Instant::now();
            }
            match self.publish(careful).await {
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    careful = false;
                    if n as i64 >= self.config.batch_size {
                        continue;
                    }
                }
                Err(e) => {
                    careful = true;
                    metrics::counter!(RELAY_ERRORS_TOTAL, "schema" => schema.clone()).increment(1);
                    tracing::warn!(schema = %schema, error = %e, ?backoff, "publishing failed; backing off");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait() => break,
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    continue;
                }
            }
            if stop.is_triggered() {
                break;
            }
            tokio::select! {
                _ = self.store.wake().notified() => {}
                n = listener.recv() => {
                    if let Err(e) = n {
                        tracing::debug!(error = %e, "outbox listener interrupted");
                    }
                }
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = stop.wait() => {}
            }
            if !self.config.settle.is_zero() {
                tokio::time::sleep(self.config.settle).await;
            }
            // Drain one more batch after stop so work committed during the drain goes out.
            if stop.is_triggered() {
                let _ = self.publish(careful).await;
                break;
            }
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock_key(&schema)).execute(&mut lock_conn).await;
        Ok(())
    }

    async fn record_backlog(&self) {
        let row = sqlx::query(
            // The oldest pending event is the one with the lowest position: one index lookup
            // each, never a join over the event history.
            "SELECT (SELECT count(*) FROM outbox) AS n, extract(epoch FROM now() - \
             (SELECT occurred_at FROM events WHERE position = (SELECT min(position) FROM outbox)))::float8 AS age",
        )
        .fetch_one(self.store.pool())
        .await;
        if let Ok(row) = row {
            let schema = self.store.schema().to_owned();
            let n: i64 = row.try_get("n").unwrap_or_default();
            let age: Option<f64> = row.try_get("age").unwrap_or_default();
            metrics::gauge!(OUTBOX_BACKLOG, "schema" => schema.clone()).set(n as f64);
            metrics::gauge!(OUTBOX_OLDEST_AGE_SECONDS, "schema" => schema).set(age.unwrap_or(0.0));
        }
    }

    async fn fetch(&self, conn: &mut PgConnection) -> Result<Vec<Pending>, StoreError> {
        let sql = format!(
            // The outbox is small and `events` only grows: each pending row looks its event up by
            // primary key. A plain join let the planner merge-join from the start of `events`, so
            // every poll read the whole event history up to the oldest pending row.
            "SELECT o.position, o.traceparent, {EVENT_COLUMNS} \
             FROM (SELECT position, traceparent FROM outbox ORDER BY position LIMIT $1) o \
             CROSS JOIN LATERAL (SELECT * FROM events WHERE events.position = o.position OFFSET 0) e \
             ORDER BY o.position"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(self.config.batch_size).fetch_all(conn).await?;
        rows.iter()
            .map(|row| {
                Ok(Pending {
                    position: row.try_get("position")?,
                    traceparent: row.try_get("traceparent")?,
                    event: envelope_from_row(self.store.domain(), row)?,
                })
            })
            .collect()
    }

    /// Publishes one batch, pipelined; returns how many events were published.
    pub async fn publish_batch(&self) -> Result<usize, StoreError> {
        self.publish(false).await
    }

    /// Publishes one batch; `careful`: one message at a time, each acknowledged before the next.
    async fn publish(&self, careful: bool) -> Result<usize, StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let pending = self.fetch(&mut conn).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut done: Vec<i64> = Vec::with_capacity(pending.len());
        let mut failure = None;
        if careful {
            for p in &pending {
                let span = publish_span(p);
                let acked = match self.send(p, &span, None).await {
                    Ok(ack) => self.await_ack(ack).await,
                    Err(e) => Err(e),
                };
                drop(span);
                match acked {
                    Ok(()) => done.push(p.position),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        } else {
            // Pipelined. Each message but the first names its predecessor in
            // `Nats-Expected-Last-Msg-Id` (this relay is the stream's only publisher), so if one
            // is lost the server rejects every later one: nothing overtakes an event that must be
            // retried, and per-aggregate order holds.
            let mut acks = Vec::with_capacity(pending.len());
            let mut previous: Option<String> = None;
            for p in &pending {
                // Each event's span lasts until its acknowledgement.
                let span = publish_span(p);
                match self.send(p, &span, previous.as_deref()).await {
                    Ok(ack) => acks.push((p.position, ack, span)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                previous = Some(p.event.event_id.to_string());
            }
            // Whatever was sent is awaited, so its prefix is recorded even if a later send
            // failed; only the acknowledged prefix counts, the rest is retried in order.
            for (position, ack, _span) in acks {
                match self.await_ack(ack).await {
                    Ok(()) => done.push(position),
                    Err(e) => {
                        failure.get_or_insert(e);
                        break;
                    }
                }
            }
        }
        if !done.is_empty() {
            // Committed without waiting for the WAL flush: a delete lost in a crash only means
            // those events are published again (deduplicated by `Nats-Msg-Id`; consumers are
            // idempotent), while a flush per batch would double the fsyncs per command.
            sqlx::query(
                "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 DELETE FROM outbox WHERE position = ANY($1) AND EXISTS (SELECT 1 FROM async)",
            )
            .bind(&done)
            .execute(&mut *conn)
            .await?;
            metrics::counter!(RELAY_PUBLISHED_TOTAL, "schema" => self.store.schema().to_owned())
                .increment(done.len() as u64);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }

    async fn await_ack(&self, ack: jetstream::context::PublishAckFuture) -> Result<(), StoreError> {
        match tokio::time::timeout(self.config.ack_timeout, ack).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::JetStream(format!("publish not acknowledged: {e}"))),
            Err(_) => Err(StoreError::JetStream("no publish acknowledgement in time".into())),
        }
    }

    /// Sends `p` with `span`'s trace context in its headers, so consumers continue the trace as
    /// children of the publish.
    async fn send(
        &self,
        p: &Pending,
        span: &tracing::Span,
        previous: Option<&str>,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        let traceparent = match span.is_none() {
            true => p.traceparent.clone(),
            false => cim_runtime::telemetry::traceparent_of(span),
        };
        let (subject, publish) = event_message(&self.prefix, &p.event, traceparent.as_deref(), previous)?;
        self.js
            .send_publish(subject, publish)
            .instrument(span.clone())
            .await
            .map_err(|err| StoreError::JetStream(format!("publish: {err}")))
    }
}

/// One event's publish: a producer span continuing the trace of the append that stored it (the
/// outbox's `traceparent`); an event stored without one starts a trace of its own. None when
/// spans are not exported: the stored context is then published as it is.
fn publish_span(p: &Pending) -> tracing::Span {
    if !cim_runtime::telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "relay.publish",
        otel.kind = "producer",
        messaging.system = "nats",
        event_id = %p.event.event_id,
        event_type = %p.event.event_type,
    );
    if let Some(tp) = &p.traceparent {
        cim_runtime::telemetry::continue_traceparent(&span, tp);
    }
    span
}

/// An event as the relay publishes it: its subject, and the envelope with `Nats-Msg-Id` = the
/// event id (JetStream drops a second publish of it within the duplicate window) and the routing
/// headers; `previous` makes the server refuse it unless that message id is the stream's last.
/// `cim streams rebuild` publishes the same message again.
pub(crate) fn event_message(
    prefix: &SubjectPrefix,
    e: &EventEnvelope,
    traceparent: Option<&str>,
    previous: Option<&str>,
) -> Result<(String, PublishMessage), StoreError> {
    let subject = EventSubject {
        domain: e.domain,
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id,
        event_type: e.event_type.clone(),
    }
    .to_subject(prefix);
    let payload = serde_json::to_vec(e).map_err(|err| StoreError::Corrupt(err.to_string()))?;
    let mut h = async_nats::HeaderMap::new();
    // Set here rather than with `message_id()`: `headers()` would replace it.
    h.insert(headers::MSG_ID, e.event_id.to_string().as_str());
    h.insert(headers::EVENT_TYPE, e.event_type.as_str());
    h.insert(headers::AGGREGATE_ID, e.aggregate_id.to_string().as_str());
    h.insert(headers::SEQUENCE, e.sequence.to_string().as_str());
    h.insert(headers::CORRELATION_ID, e.correlation_id.to_string().as_str());
    h.insert(headers::CAUSATION_ID, e.causation_id.to_string().as_str());
    h.insert(headers::TENANT_ID, e.tenant_id.to_string().as_str());
    if let Some(previous) = previous {
        h.insert("Nats-Expected-Last-Msg-Id", previous);
    }
    if let Some(tp) = traceparent {
        h.insert(headers::TRACEPARENT, tp);
    }
    Ok((subject, PublishMessage::build().payload(payload.into()).headers(h)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("graph"), super::lock_key("graph"));
        assert_ne!(super::lock_key("graph"), super::lock_key("document"));
    }
}
