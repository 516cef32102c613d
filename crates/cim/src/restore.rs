//! `cim restore`: a backup into an empty database. Every object is checked against the manifest
//! before its rows go in; the events keep their positions; every aggregate's chain is verified
//! and its head compared with the manifest; each domain's projections are rebuilt by its own
//! projector; then the streams get whatever events they lack. Events, kept rows and projections
//! go in as one transaction, so a refused backup leaves the database as empty as it was.

use std::collections::HashMap;

use cim_core::{AggregateId, EventHash, TenantId, Upcasters};
use cim_eventstore::archive::replay::Replay;
use cim_eventstore::archive::{Head, import};
use object_store::ObjectStore;

use super::*;
use crate::backup::manifest::{self, SchemaBackup};
use crate::backup::{connect, open_target, segment};
use crate::progress::Progress;

/// Rows per insert statement.
const INSERT_ROWS: usize = 1000;

#[derive(Debug, Clone)]
pub struct RestoreArgs {
    pub from: String,
    /// A backup id (`manifests/<id>.json`); the newest when absent.
    pub backup: Option<String>,
    /// Leave the streams alone (`cim streams rebuild` later).
    pub no_streams: bool,
}

pub(crate) async fn restore(config: &Config, args: &RestoreArgs) -> Result<String, String> {
    let store = open_target(config, &args.from)?;
    let refused = |e: String| format!("refused, nothing restored: {e}");
    let manifest = manifest::find(store.as_ref(), args.backup.as_deref()).await.map_err(refused)?;
    let mut parts = Vec::new();
    for part in &manifest.schemas {
        let service = DOMAIN_SERVICES
            .iter()
            .find(|s| s.schema == part.schema)
            .ok_or_else(|| {
                format!("backup {} holds schema {}, which no domain of this cim owns", manifest.id, part.schema)
            })
            .map_err(refused)?;
        check_contiguous(part).map_err(refused)?;
        parts.push((service, part));
    }
    // Migrated first (each schema as its service would), outside the data transaction.
    for (service, _) in &parts {
        let pool = connect(config, service.schema, 2).await.map_err(refused)?;
        for migrator in (service.migrations)() {
            cim_runtime::postgres::migrate(&pool, service.schema, migrator)
                .await
                .map_err(|e| refused(e.to_string()))?;
        }
        let mut conn = pool.acquire().await.map_err(|e| refused(e.to_string()))?;
        if !import::is_empty(&mut conn, service.schema).await.map_err(|e| refused(e.to_string()))? {
            return Err(refused(format!(
                "schema {} already holds events: restore goes into an empty database",
                service.schema
            )));
        }
    }
    let pool = connect(config, "public", 2).await.map_err(refused)?;
    let mut tx = pool.begin().await.map_err(|e| refused(e.to_string()))?;
    let mut summary = Vec::new();
    for (service, part) in &parts {
        import_schema(&mut tx, store.as_ref(), service, part).await.map_err(refused)?;
        summary.push(format!("{} {} events", service.name, part.events));
    }
    tx.commit().await.map_err(|e| refused(format!("committing the restore: {e}")))?;
    let mut streams = String::new();
    if !args.no_streams {
        for (service, _) in &parts {
            // The database is committed by now: say so, and what is left to do.
            let done = crate::streams::rebuild(config, service).await.map_err(|e| {
                format!(
                    "the database is restored (backup {}), but the streams are not: {e}; \
                     run `cim streams rebuild --domain {}`",
                    manifest.id, service.name
                )
            })?;
            streams.push_str(&format!(
                "; stream of {}: {} published, {} already there",
                service.name, done.published, done.present
            ));
        }
    }
    Ok(format!(
        "restored backup {} ({}): every chain verified, projections rebuilt{streams}",
        manifest.id,
        summary.join(", ")
    ))
}

/// The segments cover `(0, high]` without a gap: a manifest that lost a segment is refused.
fn check_contiguous(part: &SchemaBackup) -> Result<(), String> {
    let mut at = 0;
    for s in &part.segments {
        if s.after != at {
            return Err(format!(
                "segment {} starts after position {}, the previous segment ended at {at}: the backup is incomplete",
                s.key, s.after
            ));
        }
        at = s.upto;
    }
    if at != part.high {
        return Err(format!(
            "schema {}: segments end at position {at}, the backup's cut is {}",
            part.schema, part.high
        ));
    }
    Ok(())
}

async fn import_schema(
    tx: &mut sqlx::PgConnection,
    store: &dyn ObjectStore,
    service: &DomainService,
    part: &SchemaBackup,
) -> Result<(), String> {
    let schema = service.schema;
    let db = |e: cim_eventstore::StoreError| format!("{schema}: {e}");
    // Kept rows first: document versions reference their content records.
    for copy in &part.tables {
        let lines = segment::fetch_checked(store, &copy.key, copy.bytes, &copy.blake3).await?;
        if lines.len() as u64 != copy.rows {
            return Err(format!("segment {} holds {} rows, the manifest says {}", copy.key, lines.len(), copy.rows));
        }
        for chunk in lines.chunks(INSERT_ROWS) {
            import::insert_rows(tx, schema, &copy.table, chunk).await.map_err(db)?;
        }
    }
    let mut progress = Progress::new(&format!("import {}", service.name), part.events);
    for s in &part.segments {
        let lines = segment::fetch_checked(store, &s.key, s.bytes, &s.blake3).await?;
        if lines.len() as u64 != s.events {
            return Err(format!("segment {} holds {} events, the manifest says {}", s.key, lines.len(), s.events));
        }
        for chunk in lines.chunks(INSERT_ROWS) {
            import::insert_rows(tx, schema, "events", chunk).await.map_err(|e| format!("segment {}: {e}", s.key))?;
            progress.add(chunk.len() as u64);
        }
    }
    progress.finish();
    import::continue_positions(tx, schema).await.map_err(db)?;
    let heads = expected_heads(part)?;
    let check = import::check_chains(tx, schema, service.domain, &heads).await.map_err(db)?;
    if let Some((aggregate, why)) = check.broken.first() {
        return Err(format!(
            "{}: {} of {} aggregates do not match the backup; first: aggregate {aggregate}: {why}",
            service.name,
            check.broken.len(),
            check.aggregates.max(heads.len())
        ));
    }
    let mut progress = Progress::new(&format!("project {}", service.name), part.events);
    let projector = (service.projector)();
    let mut tick = |n| progress.add(n);
    let upcasters = Upcasters::new();
    let replay = Replay {
        schema,
        into: schema,
        domain: service.domain,
        upcasters: &upcasters,
        projector: projector.as_ref(),
        batch: 1000,
    };
    replay
        .run(tx, 0, i64::MAX, &mut tick)
        .await
        .map_err(|e| format!("{}: rebuilding projections: {e}", service.name))?;
    progress.finish();
    Ok(())
}

fn expected_heads(part: &SchemaBackup) -> Result<HashMap<AggregateId, Head>, String> {
    let bad = |what: &str, e: &dyn std::fmt::Display| format!("manifest: schema {}: {what}: {e}", part.schema);
    part.heads
        .iter()
        .map(|(id, h)| {
            let aggregate_id = id.parse::<AggregateId>().map_err(|e| bad("aggregate id", &e))?;
            let tenant_id = h.tenant.parse::<TenantId>().map_err(|e| bad("tenant", &e))?;
            let hash = EventHash::from_hex(&h.hash).map_err(|e| bad("hash", &e))?;
            Ok((aggregate_id, Head { aggregate_id, tenant_id, version: h.version, hash }))
        })
        .collect()
}
