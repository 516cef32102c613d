//! Which backups of a schema's history completed: `cim backup` records each in the schema's
//! `backups` table once its manifest is written, and every service owning a schema exports the
//! newest as [`BACKUP_LAST_SUCCESS`](crate::metrics::BACKUP_LAST_SUCCESS).
//!
//! Why the record lives here and the gauge comes from the services: a one-shot backup job has no
//! `/metrics` that lasts, and whether a history is backed up is a fact about the data, not about
//! a job. The row sits beside the events it covers (a database restored elsewhere starts with
//! none), and the service that owns the schema already reads it, always runs and is scraped;
//! no other process or grant is involved.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cim_runtime::Shutdown;
use sqlx::PgPool;

use super::table;
use crate::error::StoreError;
use crate::metrics::BACKUP_LAST_SUCCESS;

/// How often a service reads its schema's newest backup: far below any backup schedule, and
/// one indexed row per minute is nothing to Postgres.
pub const EXPORT_EVERY: Duration = Duration::from_secs(60);

/// One completed backup of one schema.
#[derive(Debug, Clone)]
pub struct BackupRecord {
    pub backup_id: String,
    pub completed_at: DateTime<Utc>,
    /// Where it went (`s3://bucket/prefix` or a directory): no credentials, only the location.
    pub target: String,
    /// The highest position it holds.
    pub position: i64,
    pub events: i64,
}

/// Records `backup` in `schema.backups`. Recording the same backup again changes nothing.
pub async fn record<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    schema: &str,
    backup: &BackupRecord,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {} (backup_id, completed_at, target, position, events) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (backup_id) DO NOTHING",
        table(schema, "backups")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&backup.backup_id)
        .bind(backup.completed_at)
        .bind(&backup.target)
        .bind(backup.position)
        .bind(backup.events)
        .execute(conn)
        .await?;
    Ok(())
}

/// When the newest backup of `schema` completed; `None` when it was never backed up.
pub async fn last_success(pool: &PgPool, schema: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let sql = format!("SELECT max(completed_at) FROM {}", table(schema, "backups"));
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await?)
}

/// Exports the newest backup's time of `schema` every [`EXPORT_EVERY`] until `stop`: 0 while there
/// is none (never backed up is as stale as it gets, so the alert fires rather than stays silent).
/// A failed read keeps the last value: the readiness check reports Postgres, not this gauge.
pub async fn export_last_success(pool: PgPool, schema: String, stop: Shutdown) {
    let mut tick = tokio::time::interval(EXPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tick.tick() => {}
        }
        match last_success(&pool, &schema).await {
            // Looked up on each tick, as the relay's gauges are: a handle taken before the
            // process installed its recorder would go nowhere.
            Ok(at) => metrics::gauge!(BACKUP_LAST_SUCCESS, "schema" => schema.clone())
                .set(at.map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0)),
            Err(e) => tracing::debug!(schema = %schema, error = %e, "reading the newest backup failed"),
        }
    }
}
