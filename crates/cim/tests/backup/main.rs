//! `cim backup`, `cim restore` and `cim streams rebuild` against real Postgres, NATS and a local
//! backup directory, with the graph, document, agent and workflow services writing through their
//! gRPC APIs. Each test has databases and a subject prefix of its own.

mod answers;
mod damage;
mod replay;
mod resume;
mod retention;
mod s3;
mod streams;
mod webhook;
mod world;

use std::collections::HashSet;

use cim_core::TenantId;
use cim_eventstore::archive::republish::ids_in_stream;
use cim_testkit::domain::unique;
use world::*;

const SCHEMAS: [&str; 4] = ["graph", "document", "agent", "workflow"];

fn backup_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(unique(tag))
}

/// The manifest `id` in `dir`, or the newest.
fn manifest(dir: &std::path::Path, id: Option<&str>) -> serde_json::Value {
    let path = match id {
        Some(id) => dir.join("manifests").join(format!("{id}.json")),
        None => {
            let mut all: Vec<_> =
                std::fs::read_dir(dir.join("manifests")).unwrap().flatten().map(|e| e.path()).collect();
            all.sort();
            all.pop().unwrap()
        }
    };
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn high_of(manifest: &serde_json::Value, schema: &str) -> i64 {
    manifest["schemas"].as_array().unwrap().iter().find(|s| s["schema"] == schema).unwrap()["high"].as_i64().unwrap()
}

/// Every event once in the stream of each domain under `prefix`: as many messages as events, and
/// exactly the events' ids.
async fn assert_streams_hold_each_event_once(pool: &sqlx::PgPool, prefix: &str) {
    let js = jetstream().await;
    let sp: cim_core::SubjectPrefix = prefix.parse().unwrap();
    for (schema, domain) in DOMAINS {
        let ids: Vec<uuid::Uuid> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT event_id FROM {schema}.events")))
                .fetch_all(pool)
                .await
                .unwrap();
        let expected: HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
        let name = sp.stream_name(domain);
        let messages = js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
        assert_eq!(messages, ids.len() as u64, "{name}: one message per event");
        assert_eq!(ids_in_stream(&js, &name).await.unwrap(), expected, "{name}: exactly the events' ids");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_while_writers_run_restores_and_an_incremental_one_restores_the_newer_state() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix, dir) = (Database::create("bk").await, unique("p"), backup_dir("bkdir"));
    let services = Services::start(&db, &prefix).await;
    let pool = db.pool().await;
    let tenant = TenantId::new();
    let mut written = write_documents(&services.document, tenant, 20).await;
    written += write_agents(&services.agent, tenant, 10, 40).await;
    written += write_workflows(&services.workflow, tenant, 8).await.0;
    // Two graph writers, 10,010 events between them, keep writing while the first backup runs.
    let graph_writers: Vec<_> = (0..2)
        .map(|_| {
            let running = services.graph.grpc;
            tokio::spawn(async move { write_graphs_at(running, tenant, 5, 1000, 50).await })
        })
        .collect();
    while count(&pool, "SELECT count(*) FROM graph.events").await < 3000 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut first = cim(&db, &prefix);
    first.args(["backup", "--to", dir.to_str().unwrap(), "--segment-events", "2000"]);
    let first = tokio::task::spawn_blocking(move || run_ok(&mut first)).await.unwrap();
    for w in graph_writers {
        written += w.await.unwrap();
    }
    assert!(written >= 10_000, "{written} events written");
    let m1 = manifest(&dir, None);
    let id1 = m1["id"].as_str().unwrap().to_owned();
    assert!(first.contains(&format!("backup {id1} complete")), "{first}");

    // The first backup restores to exactly the events at its cut: no hole below it.
    let (r1, p1) = (Database::create("r1").await, unique("p"));
    run_ok(cim(&r1, &p1).args(["restore", "--from", dir.to_str().unwrap(), "--backup", &id1]));
    let r1_pool = r1.pool().await;
    for schema in SCHEMAS {
        let high = high_of(&m1, schema);
        let original = count(&pool, &format!("SELECT count(*) FROM {schema}.events WHERE position <= {high}")).await;
        let restored = count(&r1_pool, &format!("SELECT count(*) FROM {schema}.events")).await;
        assert_eq!(restored, original, "{schema}: every event at or below the cut {high}, none above");
    }
    assert!(count(&r1_pool, "SELECT count(*) FROM graph.events").await < 10_010, "the first cut was taken mid-write");
    run_ok(cim(&r1, &p1).args(["verify"]));

    // More writes in every domain, then an incremental backup.
    written += write_documents(&services.document, tenant, 5).await + write_agents(&services.agent, tenant, 2, 5).await;
    written += write_graphs_at(services.graph.grpc, tenant, 1, 100, 50).await;
    written += write_workflows(&services.workflow, tenant, 3).await.0;
    let second = run_ok(cim(&db, &prefix).args(["backup", "--to", dir.to_str().unwrap(), "--segment-events", "2000"]));
    assert!(second.contains(&format!("incremental from {id1}")), "{second}");
    let total = count(
        &pool,
        "SELECT (SELECT count(*) FROM graph.events) + (SELECT count(*) FROM document.events) \
         + (SELECT count(*) FROM agent.events) + (SELECT count(*) FROM workflow.events)",
    )
    .await;
    assert_eq!(total, written as i64);
    // Each backup is recorded in every schema it covers, with the position it holds (what the
    // services export for CimBackupStale).
    let m2 = manifest(&dir, None);
    for schema in SCHEMAS {
        let sql = format!("SELECT backup_id, position FROM {schema}.backups ORDER BY completed_at");
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.unwrap();
        let want =
            vec![(id1.clone(), high_of(&m1, schema)), (m2["id"].as_str().unwrap().to_owned(), high_of(&m2, schema))];
        assert_eq!(rows, want, "{schema}.backups");
    }

    // The latest backup restores to the newer state: same events, same projections, and each
    // event once in the new streams.
    let (r2, p2) = (Database::create("r2").await, unique("p"));
    let restored = run_ok(cim(&r2, &p2).args(["restore", "--from", dir.to_str().unwrap()]));
    assert!(restored.contains("every chain verified"), "{restored}");
    let r2_pool = r2.pool().await;
    for schema in SCHEMAS {
        let events = format!("SELECT row_to_json(e)::text FROM {schema}.events e ORDER BY position");
        let a: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(events.clone())).fetch_all(&pool).await.unwrap();
        let b: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(events)).fetch_all(&r2_pool).await.unwrap();
        assert!(a == b, "{schema}: the restored events differ ({} vs {})", a.len(), b.len());
        let (a, b) = (projections(&pool, schema).await, projections(&r2_pool, schema).await);
        for ((table, rows), (_, restored)) in a.iter().zip(&b) {
            let first_diff = rows.iter().zip(restored).find(|(x, y)| x != y);
            assert!(
                rows == restored,
                "{schema}.{table}: {} rows vs {} restored; first difference {first_diff:?}",
                rows.len(),
                restored.len()
            );
        }
        assert_eq!(a.len(), b.len());
    }
    assert_streams_hold_each_event_once(&r2_pool, &p2).await;
    let restored_backups = count(&r2_pool, "SELECT count(*) FROM graph.backups").await;
    assert_eq!(restored_backups, 0, "a restored database has not been backed up from where it is");

    // Every query of every domain's public API answers as the original does.
    let again = Services::start(&r2, &p2).await;
    answers::assert_same_answers(&services, &again, tenant).await;
    // The restored database takes new writes (positions continue above the restored ones).
    assert_eq!(write_graphs_at(again.graph.grpc, tenant, 1, 10, 10).await, 11);
    again.stop().await;
    services.stop().await;
    drop_streams(&p1).await;
    for d in [db, r1, r2] {
        d.drop_now().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
