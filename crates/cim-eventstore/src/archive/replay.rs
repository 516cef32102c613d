//! A domain's projections rebuilt from its events: every event, in position order (each
//! aggregate's events in sequence, and across aggregates in commit order, which is what the
//! projections saw when the events were appended), through the domain's own projector, each
//! call with events of one aggregate as at append time.

use cim_core::{Domain, Upcasters};
use sqlx::PgConnection;

use super::{ident, table};
use crate::error::StoreError;
use crate::store::{EVENT_COLUMNS, Projector, envelope_from_row};

/// What to replay, and into which tables.
#[derive(Clone, Copy)]
pub struct Replay<'a> {
    /// The schema whose `events` are replayed.
    pub schema: &'a str,
    /// The schema whose tables the projector writes (its `search_path` comes first); the events'
    /// schema follows in the path, so tables a projection only reads resolve there.
    pub into: &'a str,
    pub domain: Domain,
    pub upcasters: &'a Upcasters,
    pub projector: &'a dyn Projector,
    /// Events read per query.
    pub batch: i64,
}

impl std::fmt::Debug for Replay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("schema", &self.schema).field("into", &self.into).finish_non_exhaustive()
    }
}

impl Replay<'_> {
    /// Runs the projector over the events with `after < position <= upto`, upcast first as a
    /// load would, in the caller's transaction (whose `search_path` it sets); `progress` hears
    /// how many events each batch had. Returns the last position replayed (`after` if none).
    pub async fn run(
        &self,
        conn: &mut PgConnection,
        after: i64,
        upto: i64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<i64, StoreError> {
        // Projections name their tables unqualified, as the service's pool has `search_path` =
        // its schema; the caller's transaction may span several schemas, so set it here.
        let path = if self.into == self.schema {
            ident(self.into)
        } else {
            format!("{}, {}", ident(self.into), ident(self.schema))
        };
        sqlx::query("SELECT set_config('search_path', $1, true)").bind(path).execute(&mut *conn).await?;
        let sql = format!(
            "SELECT e.position, {EVENT_COLUMNS} FROM {} e WHERE e.position > $1 AND e.position <= $2 \
             ORDER BY e.position LIMIT $3",
            table(self.schema, "events")
        );
        let mut at = after;
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(at)
                .bind(upto)
                .bind(self.batch.max(1))
                .fetch_all(&mut *conn)
                .await?;
            let Some(last) = rows.last() else { return Ok(at) };
            at = sqlx::Row::try_get(last, "position")?;
            let events = rows
                .iter()
                .map(|row| {
                    envelope_from_row(self.domain, row).and_then(|e| self.upcasters.upcast(e).map_err(StoreError::from))
                })
                .collect::<Result<Vec<_>, _>>()?;
            // At append time a projector sees one command's events, all of one aggregate
            // (graph's relies on it); runs of consecutive events of one aggregate keep that.
            let mut rest = events.as_slice();
            while let Some(first) = rest.first() {
                let run = rest.iter().take_while(|e| e.aggregate_id == first.aggregate_id).count();
                self.projector.project(conn, &rest[..run]).await?;
                rest = &rest[run..];
            }
            progress(events.len() as u64);
        }
    }
}
