//! The manifest: what one backup holds and how to check it. Written last, after every object it
//! names was written and checked, so a backup without its manifest was interrupted and the next
//! run resumes it; restore reads only what a manifest names.
//!
//! Layout under the target: `manifests/<id>.json`; `events/<schema>/<after>-<upto>.jsonl.zst`,
//! shared by the backups of one target (an incremental backup names the earlier segments and adds
//! its own); `tables/<id>/<schema>/<table>.jsonl.zst`, the rows that events cannot rebuild,
//! copied whole by each backup.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};
use serde::{Deserialize, Serialize};

pub(crate) const FORMAT: u32 = 1;
const MANIFESTS: &str = "manifests";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    /// Sortable by time: the newest manifest is the latest backup.
    pub id: String,
    pub created_at: DateTime<Utc>,
    /// The backup this one continued from (incremental), if any.
    pub parent: Option<String>,
    pub schemas: Vec<SchemaBackup>,
}

/// One domain schema at the backup's cut.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SchemaBackup {
    /// The domain service (`graph`, ...).
    pub domain: String,
    pub schema: String,
    /// The highest position at the cut: every event at or below it is in `segments`.
    pub high: i64,
    pub events: u64,
    /// In position order, each starting where the previous ended.
    pub segments: Vec<Segment>,
    pub tables: Vec<TableCopy>,
    /// Every aggregate's last event at the cut, by aggregate id.
    pub heads: BTreeMap<String, HeadEntry>,
}

/// A chunk of events: those with `after < position <= upto`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Segment {
    pub key: String,
    pub after: i64,
    pub upto: i64,
    pub first: i64,
    pub last: i64,
    pub events: u64,
    /// Compressed size, and the BLAKE3 of the compressed bytes.
    pub bytes: u64,
    pub blake3: String,
}

/// The rows of a table that events cannot rebuild (idempotency keys, document content records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TableCopy {
    pub table: String,
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
    pub blake3: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HeadEntry {
    pub tenant: String,
    pub version: u64,
    pub hash: String,
}

/// A new backup's id: its start time, to the millisecond.
pub(crate) fn new_id(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

pub(crate) fn key(id: &str) -> Path {
    Path::from(format!("{MANIFESTS}/{id}.json"))
}

/// The newest manifest under the target, or `None` when there is no backup yet.
pub(crate) async fn latest(store: &dyn ObjectStore) -> Result<Option<Manifest>, String> {
    use futures::TryStreamExt;
    let listed: Vec<_> = store
        .list(Some(&Path::from(MANIFESTS)))
        .try_collect()
        .await
        .map_err(|e| format!("listing {MANIFESTS}/: {e}"))?;
    let newest = listed.iter().map(|m| m.location.to_string()).filter(|k| k.ends_with(".json")).max();
    match newest {
        Some(k) => read(store, &k).await.map(Some),
        None => Ok(None),
    }
}

/// The manifest with this id, or the newest.
pub(crate) async fn find(store: &dyn ObjectStore, id: Option<&str>) -> Result<Manifest, String> {
    match id {
        Some(id) => read(store, key(id).as_ref()).await,
        None => latest(store).await?.ok_or_else(|| format!("no backup here: nothing under {MANIFESTS}/")),
    }
}

async fn read(store: &dyn ObjectStore, k: &str) -> Result<Manifest, String> {
    let bytes = store
        .get(&Path::from(k))
        .await
        .map_err(|e| format!("manifest {k}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("manifest {k}: {e}"))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("manifest {k} is unreadable (truncated?): {e}"))?;
    if manifest.format != FORMAT {
        return Err(format!("manifest {k} has format {}, this cim reads {FORMAT}", manifest.format));
    }
    Ok(manifest)
}

pub(crate) async fn write(store: &dyn ObjectStore, manifest: &Manifest) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
    store.put(&key(&manifest.id), json.into()).await.map_err(|e| format!("writing manifest {}: {e}", manifest.id))?;
    Ok(())
}
