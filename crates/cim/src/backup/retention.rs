//! Chains of backups and their retention (`cim backup --full-every … --keep N`).
//!
//! A chain is a full backup and the incremental ones after it: each incremental continues from
//! the newest manifest at the target, so a chain's manifests are consecutive in id (time) order,
//! and each names every segment of the ones before it. A full backup marks where its chain
//! starts with `chains/<id>.json`, written *before* its manifest, so no manifest exists whose
//! chain start is unmarked; that makes the chains known from two listings, without reading the
//! manifests (which name every aggregate's head and can be large).
//!
//! Retention keeps the newest N chains whole and deletes what is older: its segments (those no
//! kept manifest names: segments are shared between chains when their boundaries match), table
//! copies, manifests and markers. A segment named by nothing (a backup interrupted before its
//! manifest) is never touched: the next run resumes with it.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

use super::manifest::{self, Manifest};

const CHAINS: &str = "chains";

/// What a prune removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub chains: usize,
    pub manifests: usize,
    pub segments: usize,
    pub tables: usize,
    /// Manifests deleted without their segments, because they could not be read.
    pub unreadable: Vec<String>,
}

/// The time a backup started, from its id (which is that time, formatted by `manifest::new_id`).
fn started(id: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(id, "%Y%m%dT%H%M%S%.3fZ").ok().map(|t| t.and_utc())
}

/// The ids of the objects directly under `dir/` whose names end in `.json`, sorted.
async fn ids_under(store: &dyn ObjectStore, dir: &str) -> Result<Vec<String>, String> {
    let listed: Vec<_> =
        store.list(Some(&Path::from(dir))).try_collect().await.map_err(|e| format!("listing {dir}/: {e}"))?;
    let mut ids: Vec<String> = listed
        .iter()
        .filter_map(|m| m.location.filename().and_then(|f| f.strip_suffix(".json")).map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Marks `id` as the start of a chain. Called before the backup's manifest is written.
pub(crate) async fn mark_chain(store: &dyn ObjectStore, id: &str, at: DateTime<Utc>) -> Result<(), String> {
    let body = serde_json::json!({ "id": id, "created_at": at });
    store
        .put(&Path::from(format!("{CHAINS}/{id}.json")), serde_json::to_vec(&body).map_err(|e| e.to_string())?.into())
        .await
        .map_err(|e| format!("writing {CHAINS}/{id}.json: {e}"))?;
    Ok(())
}

/// Whether the chain `latest` belongs to started more than `every` ago (or has no marker: a
/// target written before chains were marked), so this run should start a new one.
pub(crate) async fn chain_due(store: &dyn ObjectStore, latest: &Manifest, every: Duration) -> Result<bool, String> {
    let roots = chain_roots(store).await?;
    let Some(root) = roots.iter().rev().find(|r| r.as_str() <= latest.id.as_str()) else { return Ok(true) };
    let Some(start) = started(root) else { return Ok(true) };
    let age = Utc::now().signed_duration_since(start).to_std().unwrap_or_default();
    Ok(age >= every)
}

/// The ids of the backups that started a chain, oldest first. A marker whose manifest is missing
/// is a full backup that did not finish: no chain.
async fn chain_roots(store: &dyn ObjectStore) -> Result<Vec<String>, String> {
    let manifests: BTreeSet<String> = ids_under(store, "manifests").await?.into_iter().collect();
    Ok(ids_under(store, CHAINS).await?.into_iter().filter(|r| manifests.contains(r)).collect())
}

/// Keeps the newest `keep` chains (at least one) and deletes everything older.
pub(crate) async fn prune(store: &dyn ObjectStore, keep: usize) -> Result<Pruned, String> {
    let keep = keep.max(1);
    let manifests = ids_under(store, "manifests").await?;
    let markers = ids_under(store, CHAINS).await?;
    let present: BTreeSet<&str> = manifests.iter().map(String::as_str).collect();
    let roots: Vec<&str> = markers.iter().map(String::as_str).filter(|r| present.contains(r)).collect();
    if roots.len() <= keep {
        return Ok(Pruned::default());
    }
    let cutoff = roots[roots.len() - keep];
    // What the kept chains need: each chain's newest manifest names all of that chain's segments.
    let mut needed = BTreeSet::new();
    let kept = &roots[roots.len() - keep..];
    for (i, root) in kept.iter().enumerate() {
        let end = kept.get(i + 1).copied();
        let newest = manifests
            .iter()
            .filter(|m| m.as_str() >= *root && end.is_none_or(|e| m.as_str() < e))
            .max()
            .expect("a root's own manifest is present");
        needed.extend(segments_of(&manifest::find(store, Some(newest)).await?));
    }
    let old: Vec<&String> = manifests.iter().filter(|m| m.as_str() < cutoff).collect();
    let mut pruned = Pruned { chains: roots.len() - keep, ..Pruned::default() };
    let mut doomed = BTreeSet::new();
    for id in &old {
        // Read once, when deleted; a manifest that cannot be read leaves its segments behind
        // (reported) rather than stopping every later prune.
        match manifest::find(store, Some(id)).await {
            Ok(m) => doomed.extend(segments_of(&m)),
            Err(e) => pruned.unreadable.push(e),
        }
    }
    // Data first, the manifests that name it after, markers last: an interrupted prune leaves at
    // worst old manifests naming missing segments (refused by restore, naming them), and the
    // next prune finishes the job.
    for key in doomed.difference(&needed) {
        delete(store, key).await?;
        pruned.segments += 1;
    }
    for id in &old {
        let listed: Vec<_> = store
            .list(Some(&Path::from(format!("tables/{id}"))))
            .try_collect()
            .await
            .map_err(|e| format!("listing tables/{id}/: {e}"))?;
        for object in listed {
            delete(store, object.location.as_ref()).await?;
            pruned.tables += 1;
        }
        delete(store, manifest::key(id).as_ref()).await?;
        pruned.manifests += 1;
    }
    for marker in markers.iter().filter(|m| m.as_str() < cutoff) {
        delete(store, &format!("{CHAINS}/{marker}.json")).await?;
    }
    Ok(pruned)
}

fn segments_of(m: &Manifest) -> impl Iterator<Item = String> + '_ {
    m.schemas.iter().flat_map(|s| s.segments.iter().map(|g| g.key.clone()))
}

async fn delete(store: &dyn ObjectStore, key: &str) -> Result<(), String> {
    match store.delete(&Path::from(key)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(format!("deleting {key}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_id_reads_back_as_its_start() {
        let at = DateTime::parse_from_rfc3339("2030-05-06T07:08:09.123Z").unwrap().with_timezone(&Utc);
        assert_eq!(started(&manifest::new_id(at)), Some(at));
        assert_eq!(started("nope"), None);
    }
}
