//! Chains and retention: `--full-every` starts a new chain when the current one is old enough,
//! `--keep N` keeps the newest N chains whole and deletes the rest, never a segment a kept
//! backup names.

use std::collections::BTreeSet;
use std::path::Path;

use cim_core::TenantId;
use cim_testkit::domain::unique;

use crate::world::*;
use crate::{backup_dir, manifest};

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, at: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn ids(dir: &Path, under: &str) -> Vec<String> {
    let mut ids: Vec<String> = files(dir)
        .iter()
        .filter_map(|f| f.strip_prefix(&format!("{under}/"))?.strip_suffix(".json").map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The segment keys a manifest names.
fn named(m: &serde_json::Value) -> BTreeSet<String> {
    m["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["segments"].as_array().unwrap().iter().map(|g| g["key"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_chains_are_pruned_and_what_the_kept_ones_need_stays() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix, dir) = (Database::create("bkr").await, unique("p"), backup_dir("bkrdir"));
    let services = Services::start(&db, &prefix).await;
    let tenant = TenantId::new();
    let to = dir.to_str().unwrap().to_owned();
    let backup = |extra: &[&str]| {
        let mut cmd = cim(&db, &prefix);
        cmd.args(["backup", "--to", &to, "--segment-events", "100"]).args(extra);
        run_ok(&mut cmd)
    };
    let write = |graphs: usize| write_graphs_at(services.graph.grpc, tenant, graphs, 120, 40);

    // Chain A: a full backup, then an incremental one (its chain is a day old at most).
    write(2).await;
    write_documents(&services.document, tenant, 2).await;
    assert!(backup(&["--full-every", "1d"]).contains("; full"));
    let a1 = manifest(&dir, None)["id"].as_str().unwrap().to_owned();
    write(1).await;
    let out = backup(&["--full-every", "1d"]);
    assert!(out.contains(&format!("incremental from {a1}")), "{out}");
    let a2 = manifest(&dir, None);
    // Chain B: started because chain A is older than asked (1 ms), with two chains kept.
    write(1).await;
    let out = backup(&["--full-every", "1ms", "--keep", "2"]);
    assert!(out.contains("; full") && out.contains("pruned 0 (0 manifests"), "{out}");
    let b1 = manifest(&dir, None)["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&dir, "chains"), vec![a1.clone(), b1.clone()]);
    write(1).await;
    let out = backup(&["--keep", "2"]);
    assert!(out.contains(&format!("incremental from {b1}")), "{out}");
    let b2 = manifest(&dir, None);
    let b2_id = b2["id"].as_str().unwrap().to_owned();
    // Segments chain A alone holds: B cut its segments afresh from position 0, so A's ends differ.
    let only_a: BTreeSet<String> = named(&a2).difference(&named(&b2)).cloned().collect();
    assert!(!only_a.is_empty(), "chain A has segments of its own");
    assert!(named(&a2).intersection(&named(&b2)).count() > 0, "and shares some with chain B");

    // A full backup interrupted before its manifest left a marker: no chain, removed once old.
    std::fs::write(dir.join("chains").join("20000101T000000.000Z.json"), b"{}").unwrap();
    // Keep one chain: A goes (manifests, table copies, marker, its own segments); B stays whole.
    let out = backup(&["--keep", "1"]);
    let b3 = manifest(&dir, None);
    assert!(out.contains(&format!("incremental from {b2_id}")), "{out}");
    assert!(out.contains(&format!("pruned 1 (2 manifests, {} segments", only_a.len())), "{out}");
    let b3_id = b3["id"].as_str().unwrap().to_owned();
    assert_eq!(ids(&dir, "manifests"), vec![b1.clone(), b2_id.clone(), b3_id.clone()]);
    assert_eq!(ids(&dir, "chains"), vec![b1.clone()]);
    let left = files(&dir);
    assert!(!left.iter().any(|f| f.starts_with(&format!("tables/{a1}/"))), "chain A's table copies are gone");
    let segments: BTreeSet<String> = left.iter().filter(|f| f.starts_with("events/")).cloned().collect();
    assert_eq!(segments, named(&b3), "exactly the segments the kept backups name");
    assert!(only_a.iter().all(|k| !left.contains(k)));

    // Every kept backup still restores, the oldest of the chain included.
    let (r, rp) = (Database::create("rr").await, unique("p"));
    run_ok(cim(&r, &rp).args(["restore", "--from", &to, "--backup", &b1, "--no-streams"]));
    r.drop_now().await;
    let (r, rp) = (Database::create("rr").await, unique("p"));
    run_ok(cim(&r, &rp).args(["restore", "--from", &to, "--no-streams"]));
    let (a, b) = (db.pool().await, r.pool().await);
    for schema in ["graph", "document"] {
        assert_eq!(projections(&a, schema).await, projections(&b, schema).await, "{schema}");
    }
    // A restore of a pruned backup is refused, naming it.
    let out = cim(&r, &rp).args(["restore", "--from", &to, "--backup", &a1]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("manifest manifests/{a1}.json")),
        "{}",
        describe(&out)
    );

    let out = cim(&db, &prefix).args(["backup", "--to", &to, "--keep", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--keep 0 would delete everything: {}", describe(&out));
    services.stop().await;
    db.drop_now().await;
    r.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}
