//! `cim replay`: projections rebuilt beside the live ones and swapped in while a writer runs.

use cim_core::TenantId;
use cim_testkit::domain::unique;

use crate::world::*;

/// What must survive a swap: index names and foreign keys (validated).
async fn shape(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 \
         UNION ALL SELECT conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated FROM pg_constraint \
         WHERE connamespace = $1::regnamespace AND contype = 'f' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_rebuilds_damaged_projections_beside_and_swaps_them_in_while_writing() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix) = (Database::create("bkr").await, unique("p"));
    let services = Services::start(&db, &prefix).await;
    let pool = db.pool().await;
    let tenant = TenantId::new();
    write_graphs_at(services.graph.grpc, tenant, 2, 400, 50).await;
    write_documents(&services.document, tenant, 6).await;
    write_agents(&services.agent, tenant, 3, 9).await;
    let mut before = Vec::new();
    for schema in ["graph", "document", "agent"] {
        before.push((projections(&pool, schema).await, shape(&pool, schema).await));
    }
    for damage in [
        "DELETE FROM graph.nodes WHERE node_id IN ('n5', 'n7')",
        "UPDATE graph.graphs SET name = 'wrong'",
        "UPDATE document.documents SET title = 'wrong'",
        "UPDATE agent.tasks SET priority = 999",
    ] {
        sqlx::query(damage).execute(&pool).await.unwrap();
    }

    // Document and agent with nobody writing: back to exactly what they were.
    for (i, domain) in [(1, "document"), (2, "agent")] {
        let out = run_ok(cim(&db, &prefix).args(["replay", "--domain", domain]));
        assert!(out.contains("rebuilt from the events"), "{out}");
        assert_eq!((projections(&pool, domain).await, shape(&pool, domain).await), before[i], "{domain}");
    }

    // Graph while a writer adds nodes to a graph of its own: the replay catches up with them.
    let writer = tokio::spawn(write_graphs_at(services.graph.grpc, tenant, 1, 600, 20));
    let mut replay = cim(&db, &prefix);
    replay.args(["replay", "--domain", "graph"]);
    let out = tokio::task::spawn_blocking(move || run_ok(&mut replay)).await.unwrap();
    assert!(out.contains("graph: projections (edges, graphs, nodes) rebuilt"), "{out}");
    assert_eq!(writer.await.unwrap(), 601, "every write during the replay succeeded");
    let after = projections(&pool, "graph").await;
    let nodes = &after.iter().find(|(t, _)| t == "nodes").unwrap().1;
    assert_eq!(nodes.len(), 800 + 600, "the damage repaired and the writer's nodes there");
    for (table, rows) in &before[0].0 {
        let now = &after.iter().find(|(t, _)| t == table).unwrap().1;
        let lost: Vec<_> = rows.iter().filter(|r| !now.contains(r)).collect();
        assert!(lost.is_empty(), "{table}: rows lost: {lost:?}");
    }
    assert_eq!(shape(&pool, "graph").await, before[0].1, "index names kept");
    // The service goes on writing through the swapped-in tables.
    assert_eq!(write_graphs_at(services.graph.grpc, tenant, 1, 10, 10).await, 11);
    let left: i64 = count(
        &pool,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%\\_\\_replay' OR nspname LIKE '%\\_\\_replaced'",
    )
    .await;
    assert_eq!(left, 0, "nothing left beside");
    services.stop().await;
    db.drop_now().await;
}
