//! `cim backup`: every domain schema's events, as compressed segments with a manifest, taken at
//! one consistent cut while the services keep writing; incremental from the target's latest
//! backup, and resumable (segments already there and identical are not written again). Each
//! completed backup is recorded in the schemas it covers (what `CimBackupStale` watches), and
//! older chains are pruned when asked (`retention`).

pub(crate) mod manifest;
pub(crate) mod retention;
pub(crate) mod segment;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cim_eventstore::archive::{ArchivedEvent, Cut};
use object_store::ObjectStore;

use self::manifest::{HeadEntry, Manifest, SchemaBackup, Segment, TableCopy};
use self::segment::Put;
use super::*;
use crate::progress::Progress;

/// How long the cut waits for writers in flight before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What `cim backup` was asked.
#[derive(Debug, Clone)]
pub struct BackupArgs {
    pub to: String,
    /// Ignore earlier backups at the target: every segment from the first event (segments
    /// already there and identical are still not written again).
    pub full: bool,
    /// Start a new chain (a full backup) when the current one started at least this long ago.
    pub full_every: Option<Duration>,
    /// After the backup, keep only the newest this many chains.
    pub keep: Option<usize>,
    pub segment_events: i64,
}

/// A target as `--to`/`--from` name it: a directory, or `s3://bucket/prefix` with the S3
/// endpoint, region and credentials of the configuration (`CIM_S3_*`), opened the way the
/// document service opens its content store.
pub(crate) fn open_target(config: &Config, at: &str) -> Result<Arc<dyn ObjectStore>, String> {
    use cim_runtime::config::ObjectLocation;
    let location = match at.strip_prefix("s3://") {
        Some(rest) => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{at}: expected s3://bucket[/prefix]"));
            }
            ObjectLocation::S3 { bucket: bucket.to_owned(), prefix: prefix.trim_end_matches('/').to_owned() }
        }
        None => ObjectLocation::Local(at.into()),
    };
    let settings = cim_runtime::config::ObjectStoreSettings { location, ..config.objects.clone() };
    cim_objects::Objects::open(&settings, config.connect_timeout)
        .map(|o| o.store().clone())
        .map_err(|e| format!("backup target {at}: {e}"))
}

/// A pool on the configured database; queries name their schema, so `public` is its path.
pub(crate) async fn connect(config: &Config, schema: &str, connections: u32) -> Result<sqlx::PgPool, String> {
    cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
        url: config.database_url.expose().to_owned(),
        schema: schema.into(),
        max_connections: connections,
        connect_timeout: config.connect_timeout,
        application_name: "cim-backup".into(),
    })
    .await
    .map_err(|e| format!("postgres: {e}"))
}

pub(crate) async fn backup(config: &Config, args: &BackupArgs) -> Result<String, String> {
    let store = open_target(config, &args.to)?;
    let previous = match manifest::latest(store.as_ref()).await? {
        Some(_) if args.full => None,
        Some(latest) => match args.full_every {
            Some(every) if retention::chain_due(store.as_ref(), &latest, every).await? => None,
            _ => Some(latest),
        },
        None => None,
    };
    let pool = connect(config, "public", 2).await?;
    let schemas: Vec<&str> = DOMAIN_SERVICES.iter().map(|s| s.schema).collect();
    let mut cut = Cut::take(&pool, &schemas, LOCK_WAIT).await.map_err(|e| format!("taking the cut: {e}"))?;
    let started = chrono::Utc::now();
    let id = manifest::new_id(started);
    if previous.is_none() {
        retention::mark_chain(store.as_ref(), &id, started).await?;
    }
    let mut written = (0usize, 0usize);
    let mut taken = Vec::new();
    for service in DOMAIN_SERVICES {
        if !cut.has_events(service.schema).await.map_err(|e| e.to_string())? {
            continue;
        }
        let before = previous.as_ref().and_then(|m| m.schemas.iter().find(|s| s.schema == service.schema));
        let (schema, w, s) = back_up_schema(&mut cut, store.as_ref(), service, before, &id, args).await?;
        written.0 += w;
        written.1 += s;
        taken.push(schema);
    }
    cut.finish().await.map_err(|e| e.to_string())?;
    let manifest = Manifest {
        format: manifest::FORMAT,
        id: id.clone(),
        created_at: started,
        parent: previous.map(|m| m.id),
        schemas: taken,
    };
    manifest::write(store.as_ref(), &manifest).await?;
    let events: u64 = manifest.schemas.iter().map(|s| s.events).sum();
    let parts: Vec<String> = manifest.schemas.iter().map(|s| format!("{} {} events", s.domain, s.events)).collect();
    let mut summary = format!(
        "backup {id} complete: {events} events ({}); {} segments written, {} already there and identical; {}",
        parts.join(", "),
        written.0,
        written.1,
        manifest.parent.as_deref().map(|p| format!("incremental from {p}")).unwrap_or_else(|| "full".to_owned())
    );
    record(&pool, &manifest, &args.to).await.map_err(|e| format!("{summary}, but {e}"))?;
    if let Some(keep) = args.keep {
        let pruned =
            retention::prune(store.as_ref(), keep).await.map_err(|e| format!("{summary}, but pruning failed: {e}"))?;
        summary.push_str(&format!(
            "; kept the newest {keep} chains, pruned {} ({} manifests, {} segments, {} table copies)",
            pruned.chains, pruned.manifests, pruned.segments, pruned.tables
        ));
        for unreadable in pruned.unreadable {
            summary.push_str(&format!("; its segments left in place: {unreadable}"));
        }
    }
    Ok(summary)
}

/// Records the backup in each schema it covers (`<schema>.backups`): the services export the
/// newest as `cim_backup_last_success_timestamp_seconds`. In one transaction, so the schemas
/// agree.
async fn record(pool: &sqlx::PgPool, manifest: &Manifest, target: &str) -> Result<(), String> {
    use cim_eventstore::archive::record::{BackupRecord, record};
    let failed = |e: &dyn std::fmt::Display| {
        format!(
            "recording it failed (CimBackupStale will not see it; were the services started with this version?): {e}"
        )
    };
    let mut tx = pool.begin().await.map_err(|e| failed(&e))?;
    let completed_at = chrono::Utc::now();
    for part in &manifest.schemas {
        let backup = BackupRecord {
            backup_id: manifest.id.clone(),
            completed_at,
            target: target.to_owned(),
            position: part.high,
            events: part.events as i64,
        };
        record(&mut *tx, &part.schema, &backup).await.map_err(|e| failed(&format!("{}: {e}", part.schema)))?;
    }
    tx.commit().await.map_err(|e| failed(&e))
}

/// One schema: the segments after the previous backup's cut, then the rows events cannot
/// rebuild. Returns the schema's part of the manifest and how many segments were written and
/// skipped.
async fn back_up_schema(
    cut: &mut Cut,
    store: &dyn ObjectStore,
    service: &DomainService,
    before: Option<&SchemaBackup>,
    id: &str,
    args: &BackupArgs,
) -> Result<(SchemaBackup, usize, usize), String> {
    let schema = service.schema;
    let db = |e: cim_eventstore::StoreError| format!("{schema}: {e}");
    let high = cut.high(schema).await.map_err(db)?;
    let (mut after, mut segments, mut heads, mut events) = match before {
        Some(b) => (b.high, b.segments.clone(), b.heads.clone(), b.events),
        None => (0, Vec::new(), BTreeMap::new(), 0),
    };
    if high < after {
        return Err(format!(
            "{schema}: the database ends at position {high}, before the latest backup's {after} \
             (a database restored from elsewhere?): take a --full backup"
        ));
    }
    let mut progress = Progress::new(&format!("backup {}", service.name), (high - after) as u64);
    let (mut written, mut skipped) = (0, 0);
    while after < high {
        let page = cut.events(schema, after, high, args.segment_events).await.map_err(db)?;
        let (Some(first), Some(last)) = (page.first(), page.last()) else { break };
        // Boundaries depend only on where the segment starts and on events that never change,
        // so a resumed backup cuts the same full segments and finds them already written.
        let upto = if (page.len() as i64) < args.segment_events { high } else { last.position };
        let key = format!("events/{schema}/{after:020}-{upto:020}.jsonl.zst");
        let encoded = segment::encode(page.iter().map(|e| e.line.as_str()))?;
        let segment = Segment {
            key: key.clone(),
            after,
            upto,
            first: first.position,
            last: last.position,
            events: page.len() as u64,
            bytes: encoded.bytes.len() as u64,
            blake3: encoded.blake3.clone(),
        };
        match segment::put_checked(store, &key, encoded).await? {
            Put::Written => written += 1,
            Put::Skipped => skipped += 1,
        }
        note_heads(&mut heads, &page);
        events += page.len() as u64;
        progress.add(page.len() as u64);
        segments.push(segment);
        after = upto;
    }
    progress.finish();
    let mut tables = Vec::new();
    for name in service.kept.iter().chain(["idempotency"].iter()) {
        let Some(rows) = cut.rows(schema, name).await.map_err(db)? else { continue };
        let key = format!("tables/{id}/{schema}/{name}.jsonl.zst");
        let encoded = segment::encode(rows.iter().map(String::as_str))?;
        let copy = TableCopy {
            table: (*name).to_owned(),
            key: key.clone(),
            rows: rows.len() as u64,
            bytes: encoded.bytes.len() as u64,
            blake3: encoded.blake3.clone(),
        };
        segment::put_checked(store, &key, encoded).await?;
        tables.push(copy);
    }
    let backup = SchemaBackup {
        domain: service.name.to_owned(),
        schema: schema.to_owned(),
        high,
        events,
        segments,
        tables,
        heads,
    };
    Ok((backup, written, skipped))
}

/// Events come in position order, so each aggregate's last one seen is its head.
fn note_heads(heads: &mut BTreeMap<String, HeadEntry>, page: &[ArchivedEvent]) {
    for e in page {
        heads.insert(
            e.aggregate_id.to_string(),
            HeadEntry { tenant: e.tenant_id.to_string(), version: e.sequence, hash: e.hash.to_hex() },
        );
    }
}
