//! Rows back into a schema whose tables the migrations made, inside the caller's transaction, and
//! the imported history checked: every aggregate's chain, and its head against what the backup
//! recorded.

use std::collections::HashMap;

use cim_core::chain::StoredEvent;
use cim_core::{AggregateId, Domain};
use futures::TryStreamExt;
use sqlx::{PgConnection, Row};

use super::{Head, table};
use crate::error::StoreError;
use crate::store::{EVENT_COLUMNS, stored_from_row};

/// Whether `schema.events` holds no event: a restore goes only into an empty store.
pub async fn is_empty(conn: &mut PgConnection, schema: &str) -> Result<bool, StoreError> {
    let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", table(schema, "events"));
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(conn).await?)
}

/// Inserts `lines` (`row_to_json` text of `schema.name` rows) as they were, identity columns
/// (the events' `position`) included.
pub async fn insert_rows(
    conn: &mut PgConnection,
    schema: &str,
    name: &str,
    lines: &[String],
) -> Result<u64, StoreError> {
    let target = table(schema, name);
    let sql = format!(
        "INSERT INTO {target} OVERRIDING SYSTEM VALUE \
         SELECT r.* FROM unnest($1::text[]) AS x(line), json_populate_record(NULL::{target}, x.line::json) r"
    );
    Ok(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(lines).execute(conn).await?.rows_affected())
}

/// After the events went in with their positions: the identity continues above the highest, so
/// the next append does not collide with a restored position.
pub async fn continue_positions(conn: &mut PgConnection, schema: &str) -> Result<(), StoreError> {
    let events = table(schema, "events");
    let sql = format!(
        "SELECT setval(pg_get_serial_sequence($1, 'position'), max(position)) FROM {events} HAVING max(position) IS NOT NULL"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&events).fetch_optional(conn).await?;
    Ok(())
}

/// What [`check_chains`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ChainCheck {
    pub aggregates: usize,
    pub events: usize,
    /// Aggregates whose chain breaks, or whose head differs from the expected one, with why:
    /// the first broken link, or what the backup recorded against what was imported.
    pub broken: Vec<(AggregateId, String)>,
}

/// Verifies the chain of every aggregate in `schema` (read in the caller's transaction, so it
/// sees the imported rows before they commit) and compares each head with `expected`; an
/// aggregate the backup recorded but that has no events is broken too.
pub async fn check_chains(
    conn: &mut PgConnection,
    schema: &str,
    domain: Domain,
    expected: &HashMap<AggregateId, Head>,
) -> Result<ChainCheck, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM {} e ORDER BY e.aggregate_id, e.sequence", table(schema, "events"));
    let mut check = ChainCheck::default();
    let mut seen: HashMap<AggregateId, ()> = HashMap::with_capacity(expected.len());
    let mut current: Vec<StoredEvent> = Vec::new();
    {
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let event = match stored_from_row(domain, &row) {
                Ok(event) => event,
                Err(e) => {
                    let id: uuid::Uuid = row.try_get("aggregate_id")?;
                    let id = AggregateId::from_uuid(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    check.broken.push((id, format!("unreadable event: {e}")));
                    continue;
                }
            };
            if current.first().is_some_and(|f| f.envelope.aggregate_id != event.envelope.aggregate_id) {
                close(&mut check, &mut seen, expected, std::mem::take(&mut current));
            }
            current.push(event);
        }
    }
    close(&mut check, &mut seen, expected, current);
    for id in expected.keys().filter(|id| !seen.contains_key(id)) {
        check.broken.push((*id, "recorded in the backup but no event was imported".into()));
    }
    Ok(check)
}

fn close(
    check: &mut ChainCheck,
    seen: &mut HashMap<AggregateId, ()>,
    expected: &HashMap<AggregateId, Head>,
    events: Vec<StoredEvent>,
) {
    let Some(last) = events.last() else { return };
    let id = last.envelope.aggregate_id;
    seen.insert(id, ());
    check.aggregates += 1;
    if let Err(e) = cim_core::verify_chain(&events) {
        check.broken.push((id, e.to_string()));
        return;
    }
    match expected.get(&id) {
        None => check.broken.push((id, "imported but not recorded in the backup's heads".into())),
        Some(head) if head.version != last.envelope.sequence || head.hash != last.envelope.hash => {
            check.broken.push((
                id,
                format!(
                    "head is version {} hash {}, the backup recorded version {} hash {}",
                    last.envelope.sequence, last.envelope.hash, head.version, head.hash
                ),
            ));
        }
        Some(_) => check.events += events.len(),
    }
}
