//! `cim replay --domain <d>`: the domain's projections rebuilt from its events without downtime:
//! built beside the live tables, swapped in, the old ones dropped.

use std::time::Duration;

use cim_core::Upcasters;
use cim_eventstore::archive::beside::Beside;
use cim_eventstore::archive::replay::Replay;

use super::*;
use crate::backup::connect;
use crate::progress::Progress;

/// How long the cut and the swap wait for writers in flight.
const LOCK_WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn replay(config: &Config, domain: &str) -> Result<String, String> {
    let Some(service) = DOMAIN_SERVICES.iter().find(|s| s.name == domain) else {
        let names: Vec<&str> = DOMAIN_SERVICES.iter().map(|s| s.name).collect();
        return Err(format!("--domain: expected one of {}", names.join(", ")));
    };
    let schema = service.schema;
    let db = |e: cim_eventstore::StoreError| format!("{schema}: {e}");
    let pool = connect(config, schema, 3).await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{schema}\".events")))
        .fetch_one(&pool)
        .await
        .map_err(|e| format!("{schema}: {e}"))?;
    let mut beside = Beside::prepare(&pool, schema, service.kept).await.map_err(db)?;
    let projector = (service.projector)();
    let upcasters = Upcasters::new();
    let into = format!("{schema}__replay");
    let replay = Replay {
        schema,
        into: &into,
        domain: service.domain,
        upcasters: &upcasters,
        projector: projector.as_ref(),
        batch: 1000,
    };
    let mut progress = Progress::new(&format!("replay {}", service.name), total as u64);
    let mut tick = |n| progress.add(n);
    let high = beside.fill(&pool, replay, LOCK_WAIT, &mut tick).await.map_err(db)?;
    progress.finish();
    let caught_up = beside.swap(&pool, replay, LOCK_WAIT).await.map_err(db)?;
    let tables = beside.tables().join(", ");
    beside.finish(&pool).await.map_err(db)?;
    Ok(format!(
        "{}: projections ({tables}) rebuilt from the events up to position {high}, plus {caught_up} appended meanwhile, and swapped in",
        service.name
    ))
}
