//! A domain's projections rebuilt beside the live ones and swapped in (`cim replay`): the
//! services keep serving from the live tables while the new ones fill, and writers pause only
//! for the swap (the events appended meanwhile, then renames).
//!
//! 1. [`Beside::prepare`]: schema `<live>__replay` with an empty copy of every projection table
//!    (`LIKE … INCLUDING ALL`: columns, defaults, checks, indexes).
//! 2. [`Beside::fill`]: the events up to a settled cut ([`super::Cut`]) replayed into it.
//! 3. [`Beside::swap`]: in one transaction, the live projection tables locked against writes,
//!    the events after the cut replayed, the live tables moved to `<live>__replaced` and the new
//!    ones into the live schema under the live indexes' names, foreign keys added again
//!    (`NOT VALID`, validated after the commit without blocking writers).
//! 4. [`Beside::finish`]: constraints validated, the old tables dropped.
//!
//! Projection tables are the schema's tables other than the event store's and the `kept` ones
//! (rows events cannot rebuild), which stay in place.

use std::time::Duration;

use sqlx::{PgPool, Row};

use super::replay::Replay;
use super::{Cut, ident, table};
use crate::error::StoreError;

const EVENT_STORE_TABLES: [&str; 7] =
    ["events", "outbox", "snapshots", "inbox", "idempotency", "backups", "_sqlx_migrations"];

/// Projection tables being rebuilt beside a live schema.
#[derive(Debug)]
pub struct Beside {
    live: String,
    beside: String,
    replaced: String,
    tables: Vec<String>,
    /// The cut the fill replayed up to.
    high: i64,
}

/// A foreign key to add again after the swap.
struct ForeignKey {
    table: String,
    name: String,
    definition: String,
}

impl Beside {
    /// Makes the empty tables beside `live` (dropping what an interrupted replay left).
    pub async fn prepare(pool: &PgPool, live: &str, kept: &[&str]) -> Result<Beside, StoreError> {
        let skip: Vec<&str> = EVENT_STORE_TABLES.iter().chain(kept).copied().collect();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND NOT (table_name::text = ANY($2)) ORDER BY 1",
        )
        .bind(live)
        .bind(&skip)
        .fetch_all(pool)
        .await?;
        let beside = Beside {
            live: live.to_owned(),
            beside: format!("{live}__replay"),
            replaced: format!("{live}__replaced"),
            tables,
            high: 0,
        };
        let mut tx = pool.begin().await?;
        for schema in [&beside.beside, &beside.replaced] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema))))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {}", ident(&beside.beside)))).execute(&mut *tx).await?;
        for t in &beside.tables {
            let sql = format!("CREATE TABLE {} (LIKE {} INCLUDING ALL)", table(&beside.beside, t), table(live, t));
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(beside)
    }

    /// The projection tables being rebuilt.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Replays the events up to a settled cut into the new tables; returns the cut's position.
    pub async fn fill(
        &mut self,
        pool: &PgPool,
        replay: Replay<'_>,
        lock_wait: Duration,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<i64, StoreError> {
        let mut cut = Cut::take(pool, &[self.live.as_str()], lock_wait).await?;
        let high = cut.high(&self.live).await?;
        cut.finish().await?;
        let mut tx = pool.begin().await?;
        replay.run(&mut tx, 0, high, progress).await?;
        tx.commit().await?;
        for t in &self.tables {
            sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {}", table(&self.beside, t)))).execute(pool).await?;
        }
        self.high = high;
        Ok(high)
    }

    /// Swaps the new tables in; returns how many events were replayed during the swap.
    pub async fn swap(&self, pool: &PgPool, replay: Replay<'_>, lock_wait: Duration) -> Result<u64, StoreError> {
        let (live, beside, replaced) = (&self.live, &self.beside, &self.replaced);
        let mut tx = pool.begin().await?;
        let wait = format!("SET LOCAL lock_timeout = {}", lock_wait.as_millis().max(1));
        sqlx::query(sqlx::AssertSqlSafe(wait)).execute(&mut *tx).await?;
        // Writers lock a projection row before they append, so the projections first.
        let mut locked: Vec<String> = self.tables.iter().map(|t| table(live, t)).collect();
        locked.push(table(live, "events"));
        let lock = format!("LOCK TABLE {} IN EXCLUSIVE MODE", locked.join(", "));
        sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *tx).await?;
        let mut caught_up = 0u64;
        let mut count = |n| caught_up += n;
        replay.run(&mut tx, self.high, i64::MAX, &mut count).await?;

        // Read with the live schema as the path, so definitions name its tables unqualified and
        // bind to whatever table has that name there when added again.
        sqlx::query("SELECT set_config('search_path', $1, true)").bind(ident(live)).execute(&mut *tx).await?;
        let keys = sqlx::query(
            "SELECT c.conrelid::regclass::text AS tbl, c.conname::text AS name, pg_get_constraintdef(c.oid) AS def \
             FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE c.contype = 'f' AND n.nspname = $1 \
               AND (c.conrelid::regclass::text = ANY($2) OR c.confrelid::regclass::text = ANY($2))",
        )
        .bind(live)
        .bind(&self.tables)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok(ForeignKey { table: r.try_get("tbl")?, name: r.try_get("name")?, definition: r.try_get("def")? }))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // Keys of tables that stay (kept rows referring to a projection) would follow the old
        // table away; they are dropped here and added again below.
        for k in keys.iter().filter(|k| !self.tables.contains(&k.table)) {
            let sql = format!("ALTER TABLE {} DROP CONSTRAINT {}", table(live, &k.table), ident(&k.name));
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        let indexes = indexes_of(&mut tx, live).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {}", ident(replaced)))).execute(&mut *tx).await?;
        for t in &self.tables {
            for (from, to) in [(live, replaced), (beside, live)] {
                let sql = format!("ALTER TABLE {} SET SCHEMA {}", table(from, t), ident(to));
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
            }
        }
        // `LIKE` named the new indexes itself; each takes the name of the live index it copies
        // (same definition), so the schema stays what the migrations made.
        let fresh = indexes_of(&mut tx, live).await?;
        let shape = |r: &sqlx::postgres::PgRow| -> Result<(String, String), sqlx::Error> {
            let (name, def): (String, String) = (r.try_get("name")?, r.try_get("def")?);
            Ok((r.try_get::<String, _>("tbl")?, def.replacen(&format!("INDEX {name} ON"), "INDEX ON", 1)))
        };
        for new in &fresh {
            let (new_shape, new_name) = (shape(new)?, new.try_get::<String, _>("name")?);
            let old = indexes.iter().find(|o| shape(o).is_ok_and(|s| s == new_shape));
            if let Some(old) = old.map(|o| o.try_get::<String, _>("name")).transpose()?
                && old != new_name
            {
                // The old table (now elsewhere) keeps its index under the name; free it first.
                let free = format!(
                    "ALTER INDEX {}.{} RENAME TO {}",
                    ident(replaced),
                    ident(&old),
                    ident(&format!("{old}__old"))
                );
                sqlx::query(sqlx::AssertSqlSafe(free)).execute(&mut *tx).await?;
                let sql = format!("ALTER INDEX {}.{} RENAME TO {}", ident(live), ident(&new_name), ident(&old));
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
            }
        }
        for k in &keys {
            let sql = format!(
                "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                table(live, &k.table),
                ident(&k.name),
                k.definition
            );
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for k in &keys {
            let sql = format!("ALTER TABLE {} VALIDATE CONSTRAINT {}", table(live, &k.table), ident(&k.name));
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
        Ok(caught_up)
    }

    /// Drops the replaced tables and the emptied beside schema.
    pub async fn finish(self, pool: &PgPool) -> Result<(), StoreError> {
        for schema in [&self.replaced, &self.beside] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema))))
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}

/// The indexes of `schema`'s tables: table, name and definition.
async fn indexes_of(conn: &mut sqlx::PgConnection, schema: &str) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    Ok(sqlx::query(
        "SELECT tablename::text AS tbl, indexname::text AS name, indexdef AS def FROM pg_indexes WHERE schemaname = $1",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?)
}
