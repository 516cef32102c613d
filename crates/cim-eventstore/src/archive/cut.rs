//! A consistent cut of several schemas: every event committed before one instant, nothing after.
//!
//! Positions come from an identity sequence, so they are allocated before commit: a snapshot
//! alone could see position 12 while 11 is still in flight, and a later incremental backup
//! starting after 12 would miss 11 forever. So the cut first takes `SHARE` locks on every
//! `events` table, which waits for the writers in flight to commit and holds new ones back, then
//! exports its snapshot to a second, read-only transaction and lets go at once: writers pause
//! for as long as the in-flight commits take, and every position at or below the cut's highest is
//! settled (committed and visible, or rolled back for good).

use std::time::Duration;

use cim_core::{AggregateId, EventHash, TenantId};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::table;
use crate::error::StoreError;

/// An open cut: a read-only REPEATABLE READ transaction on the exported snapshot.
#[derive(Debug)]
pub struct Cut {
    tx: Transaction<'static, Postgres>,
}

/// One event as exported: what the manifest needs, and the row's JSON text.
#[derive(Debug, Clone)]
pub struct ArchivedEvent {
    pub position: i64,
    pub aggregate_id: AggregateId,
    pub tenant_id: TenantId,
    pub sequence: u64,
    pub hash: EventHash,
    /// `row_to_json` of the `events` row.
    pub line: String,
}

/// An aggregate's last event in a cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub aggregate_id: AggregateId,
    pub tenant_id: TenantId,
    pub version: u64,
    pub hash: EventHash,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl Cut {
    /// Takes the cut over `schemas` (those without an `events` table yet are skipped). Gives up
    /// after `lock_wait` if a writer holds its transaction open that long.
    pub async fn take(pool: &PgPool, schemas: &[&str], lock_wait: Duration) -> Result<Cut, StoreError> {
        let mut locker = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *locker).await?;
        let wait = format!("SET LOCAL lock_timeout = {}", lock_wait.as_millis().max(1));
        sqlx::query(sqlx::AssertSqlSafe(wait)).execute(&mut *locker).await?;
        // One order everywhere, so two concurrent cuts cannot deadlock each other.
        let mut sorted: Vec<&str> = schemas.to_vec();
        sorted.sort_unstable();
        for schema in sorted {
            if has_events_table(&mut locker, schema).await? {
                let lock = format!("LOCK TABLE {} IN SHARE MODE", table(schema, "events"));
                sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *locker).await?;
            }
        }
        let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()").fetch_one(&mut *locker).await?;
        if !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(corrupt("exported snapshot id", snapshot));
        }
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
        let import = format!("SET TRANSACTION SNAPSHOT '{snapshot}'");
        sqlx::query(sqlx::AssertSqlSafe(import)).execute(&mut *tx).await?;
        // The importer holds the snapshot now; the writers may go on.
        locker.commit().await?;
        Ok(Cut { tx })
    }

    /// Whether `schema` has an event store at this cut.
    pub async fn has_events(&mut self, schema: &str) -> Result<bool, StoreError> {
        has_events_table(&mut self.tx, schema).await
    }

    /// The highest position in `schema` at this cut (0 when empty).
    pub async fn high(&mut self, schema: &str) -> Result<i64, StoreError> {
        let sql = format!("SELECT coalesce(max(position), 0) FROM {}", table(schema, "events"));
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut *self.tx).await?)
    }

    /// Up to `limit` events with `after < position <= upto`, in position order.
    pub async fn events(
        &mut self,
        schema: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<ArchivedEvent>, StoreError> {
        let sql = format!(
            "SELECT e.position, e.aggregate_id, e.tenant_id, e.sequence, e.hash, row_to_json(e)::text AS line \
             FROM {} e WHERE e.position > $1 AND e.position <= $2 ORDER BY e.position LIMIT $3",
            table(schema, "events")
        );
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after).bind(upto).bind(limit).fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|r| {
                Ok(ArchivedEvent {
                    position: r.try_get("position")?,
                    aggregate_id: AggregateId::from_uuid(r.try_get("aggregate_id")?)
                        .map_err(|e| corrupt("aggregate_id", e))?,
                    tenant_id: TenantId::from_uuid(r.try_get("tenant_id")?).map_err(|e| corrupt("tenant_id", e))?,
                    sequence: r.try_get::<i64, _>("sequence")? as u64,
                    hash: EventHash::from_slice(&r.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?,
                    line: r.try_get("line")?,
                })
            })
            .collect()
    }

    /// Every row of `schema.name` as `row_to_json` text, or `None` if there is no such table.
    pub async fn rows(&mut self, schema: &str, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table(schema, name))
            .fetch_one(&mut *self.tx)
            .await?;
        if !exists {
            return Ok(None);
        }
        let sql = format!("SELECT row_to_json(t)::text FROM {} t", table(schema, name));
        Ok(Some(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *self.tx).await?))
    }

    /// Ends the read.
    pub async fn finish(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

async fn has_events_table(conn: &mut sqlx::PgConnection, schema: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table(schema, "events")).fetch_one(conn).await?)
}
