//! A domain's events published again to its stream from Postgres (`cim streams rebuild`), for when
//! JetStream lost messages it had acknowledged, or the whole stream.
//!
//! The stream is read first (headers only) for the message ids it still holds, and only the
//! events it lacks are published, in position order, as the relay publishes them (same subject,
//! same `Nats-Msg-Id` = event id). So the stream ends up holding each event once even beyond the
//! server's two-minute duplicate window, and a publish racing the live relay is still dropped by
//! the window. Consumers that applied an event before record it in their inbox and apply nothing
//! twice.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use cim_core::{Domain, SubjectPrefix, headers};
use futures::StreamExt;
use sqlx::PgPool;

use super::table;
use crate::error::StoreError;
use crate::relay::event_message;
use crate::store::{EVENT_COLUMNS, envelope_from_row};

/// What [`republish`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Republished {
    /// Messages the stream held before.
    pub in_stream: u64,
    /// Events published now.
    pub published: u64,
    /// Events the stream already held, not published.
    pub present: u64,
}

/// Publishes every event of `schema` that `domain`'s stream under `prefix` lacks, creating the
/// stream if it is gone; `progress` hears each page's number of events.
pub async fn republish(
    pool: &PgPool,
    schema: &str,
    domain: Domain,
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    replicas: usize,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<Republished, StoreError> {
    let jet = |e: &dyn std::fmt::Display| StoreError::JetStream(e.to_string());
    let name = cim_streams::streams::ensure_domain_stream(js, prefix, domain, replicas).await.map_err(|e| jet(&e))?;
    let present = ids_in_stream(js, &name).await?;
    let mut report = Republished { in_stream: present.len() as u64, ..Republished::default() };
    let sql = format!(
        "SELECT e.position, {EVENT_COLUMNS} FROM {} e WHERE e.position > $1 ORDER BY e.position LIMIT 1000",
        table(schema, "events")
    );
    let mut after = 0i64;
    loop {
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(after).fetch_all(pool).await?;
        let Some(last) = rows.last() else { return Ok(report) };
        after = sqlx::Row::try_get(last, "position")?;
        // Pipelined within a page (async-nats allows 5000 publishes in flight); every ack is
        // awaited before the next page, so an error stops at a page boundary.
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = envelope_from_row(domain, row)?;
            if present.contains(&event.event_id.to_string()) {
                report.present += 1;
                continue;
            }
            let (subject, message) = event_message(prefix, &event, None, None)?;
            acks.push(js.send_publish(subject, message).await.map_err(|e| jet(&format!("publish: {e}")))?);
        }
        for ack in acks {
            match tokio::time::timeout(Duration::from_secs(10), ack).await {
                Ok(Ok(_)) => report.published += 1,
                Ok(Err(e)) => return Err(jet(&format!("publish not acknowledged: {e}"))),
                Err(_) => return Err(jet(&"no publish acknowledgement in time")),
            }
        }
        progress(rows.len() as u64);
    }
}

/// The message ids the stream holds now, read with an ordered, headers-only consumer.
pub async fn ids_in_stream(js: &jetstream::Context, name: &str) -> Result<HashSet<String>, StoreError> {
    let jet = |e: &dyn std::fmt::Display| StoreError::JetStream(format!("stream {name}: {e}"));
    let mut stream = js.get_stream(name).await.map_err(|e| jet(&e))?;
    let count = stream.info().await.map_err(|e| jet(&e))?.state.messages;
    let mut ids = HashSet::with_capacity(count as usize);
    if count == 0 {
        return Ok(ids);
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            headers_only: true,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| jet(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| jet(&e))?;
    let mut read = 0u64;
    while read < count {
        // Messages removed meanwhile (limits, a purge) end the read; what was read counts.
        let next = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(next)) => next.map_err(|e| jet(&e))?,
            Ok(None) | Err(_) => break,
        };
        read += 1;
        if let Some(id) = next.headers.as_ref().and_then(|h| h.get(headers::MSG_ID)) {
            ids.insert(id.as_str().to_owned());
        }
        let pending = next.info().map(|i| i.pending).unwrap_or(0);
        if pending == 0 {
            break;
        }
    }
    Ok(ids)
}
