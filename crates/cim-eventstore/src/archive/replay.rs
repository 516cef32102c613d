//! A domain's projections rebuilt from its events: every event, in position order (each
//! aggregate's events in sequence, and across aggregates in commit order, which is what the
//! projections saw when the events were appended), through the domain's own projector, each
//! call with events of one aggregate as at append time.

use cim_core::{Domain, Upcasters};
use sqlx::PgConnection;

use super::table;
use crate::error::StoreError;
use crate::store::{EVENT_COLUMNS, Projector, envelope_from_row};

/// Runs `projector` over every event of `schema` in batches of `batch` (upcast first, as a load
/// would), in the caller's transaction, whose `search_path` it points at `schema`; `progress` hears how many events each batch had.
pub async fn replay(
    conn: &mut PgConnection,
    schema: &str,
    domain: Domain,
    upcasters: &Upcasters,
    projector: &dyn Projector,
    batch: i64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, StoreError> {
    let sql = format!(
        "SELECT e.position, {EVENT_COLUMNS} FROM {} e WHERE e.position > $1 ORDER BY e.position LIMIT $2",
        table(schema, "events")
    );
    // Projections name their tables unqualified, as the service's pool has `search_path` = its
    // schema; the caller's transaction may span several schemas, so set it for this one.
    sqlx::query("SELECT set_config('search_path', $1, true)").bind(super::ident(schema)).execute(&mut *conn).await?;
    let mut after = 0i64;
    let mut total = 0u64;
    loop {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(after).bind(batch.max(1)).fetch_all(&mut *conn).await?;
        let Some(last) = rows.last() else { return Ok(total) };
        after = sqlx::Row::try_get(last, "position")?;
        let events = rows
            .iter()
            .map(|row| envelope_from_row(domain, row).and_then(|e| upcasters.upcast(e).map_err(StoreError::from)))
            .collect::<Result<Vec<_>, _>>()?;
        // At append time a projector sees one command's events, all of one aggregate (graph's
        // relies on it); runs of consecutive events of one aggregate keep that promise.
        let mut rest = events.as_slice();
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|e| e.aggregate_id == first.aggregate_id).count();
            projector.project(conn, &rest[..run]).await?;
            rest = &rest[run..];
        }
        total += events.len() as u64;
        progress(events.len() as u64);
    }
}
