//! A backup interrupted, then resumed; a damaged or truncated segment refused, naming it.

use cim_core::TenantId;
use cim_testkit::domain::unique;

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_backup_resumes_and_a_damaged_segment_is_refused_naming_it() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix, dir) = (Database::create("bkd").await, unique("p"), std::env::temp_dir().join(unique("bkdir")));
    let services = Services::start(&db, &prefix).await;
    let tenant = TenantId::new();
    write_graphs_at(services.graph.grpc, tenant, 3, 500, 50).await;
    write_documents(&services.document, tenant, 3).await;
    let to = dir.to_str().unwrap();
    let backup = || {
        let mut cmd = cim(&db, &prefix);
        cmd.args(["backup", "--to", to, "--segment-events", "100"]);
        cmd
    };
    run_ok(&mut backup());
    let segments = segment_files(&dir, "graph");
    assert_eq!(segments.len(), 16, "1503 graph events in segments of 100: {segments:?}");

    // What an interruption leaves: segments written, no manifest. Here the run got through the
    // first six segments, and the sixth was torn.
    for m in std::fs::read_dir(dir.join("manifests")).unwrap().flatten() {
        std::fs::remove_file(m.path()).unwrap();
    }
    for s in &segments[6..] {
        std::fs::remove_file(s).unwrap();
    }
    let torn = std::fs::read(&segments[5]).unwrap();
    std::fs::write(&segments[5], &torn[..torn.len() / 2]).unwrap();
    let resumed = run_ok(&mut backup());
    // Skipped: graph's first five and document's one (its events did not change); written again:
    // the torn one and the ten missing.
    assert!(resumed.contains("11 segments written, 6 already there and identical"), "{resumed}");
    assert_eq!(std::fs::read(&segments[5]).unwrap(), torn, "the torn segment was written again");

    let (restored, rp) = (Database::create("rd").await, unique("p"));
    run_ok(cim(&restored, &rp).args(["restore", "--from", to, "--no-streams"]));
    let pool = restored.pool().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM graph.events").await, 1503);

    // `cim verify --aggregate`: one aggregate's chain, and its first broken link once a stored
    // event was changed.
    let id: uuid::Uuid = sqlx::query_scalar("SELECT aggregate_id FROM graph.events WHERE sequence = 3 LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let verify = || {
        let mut cmd = cim(&restored, &rp);
        cmd.args(["verify", "--domain", "graph", "--aggregate", &id.to_string()]);
        cmd
    };
    assert!(run_ok(&mut verify()).contains(&format!("graph: aggregate {id}")), "verified");
    sqlx::query("UPDATE graph.events SET actor = 'user:mallory' WHERE aggregate_id = $1 AND sequence = 3")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let out = verify().output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("BROKEN aggregate {id}")) && report.contains("sequence 3"),
        "names the aggregate and the first broken link: {report}"
    );

    // One flipped byte: refused, naming the segment, and nothing restored.
    let key = |p: &std::path::Path| format!("events/graph/{}", p.file_name().unwrap().to_str().unwrap());
    let good = std::fs::read(&segments[2]).unwrap();
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&segments[2], &bytes).unwrap();
    let (empty, ep) = (Database::create("re").await, unique("p"));
    let out = cim(&empty, &ep).args(["restore", "--from", to]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr.contains(&format!(
            "restore failed: refused, nothing restored: segment {} is corrupted",
            key(&segments[2])
        )),
        "{}",
        describe(&out)
    );
    let empty_pool = empty.pool().await;
    assert_eq!(count(&empty_pool, "SELECT count(*) FROM graph.events").await, 0, "nothing restored");
    assert_eq!(count(&empty_pool, "SELECT count(*) FROM document.events").await, 0, "nothing restored");

    // A truncated one (the byte flip repaired): refused, naming it.
    std::fs::write(&segments[2], &good).unwrap();
    let whole = std::fs::read(&segments[0]).unwrap();
    std::fs::write(&segments[0], &whole[..whole.len() - 10]).unwrap();
    let out = cim(&empty, &ep).args(["restore", "--from", to]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("segment {} is truncated or corrupted", key(&segments[0]))),
        "{}",
        describe(&out)
    );
    // A restore goes only into an empty database.
    let out = cim(&restored, &rp).args(["restore", "--from", to]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds events"), "{}", describe(&out));

    services.stop().await;
    for d in [db, restored, empty] {
        d.drop_now().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
