//! The webhook schema in a backup: its subscriptions' events, and the two tables no event
//! rebuilds, the signing secrets (never in events) and the delivery queue (written by the intake
//! from other domains' streams), restored as they were.

use cim_core::TenantId;
use cim_proto::webhook as hpb;
use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};

use crate::backup_dir;
use crate::world::*;

/// Every row of `table`, as one text, in a stable order.
async fn rows(pool: &sqlx::PgPool, table: &str) -> String {
    let sql = format!("SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM webhook.{table} t");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_subscriptions_secrets_and_queued_deliveries_come_back_with_a_restore() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix, dir) = (Database::create("wh").await, unique("p"), backup_dir("whdir"));
    let vars = [("CIM_DATABASE_URL", db.url.clone()), ("CIM_DATABASE_MAX_CONNECTIONS", "4".to_owned())];
    let shutdown = Shutdown::new();
    let prepared = cim_webhook::app::prepare(&config(ServiceKind::Webhook, &prefix, &vars), &shutdown).await.unwrap();
    let webhook = Running::spawn(prepared, "webhook".into(), prefix.clone(), shutdown);
    let mut client = WebhookServiceClient::connect(format!("http://{}", webhook.grpc)).await.unwrap();
    let tenant = TenantId::new();
    for i in 0..3 {
        // Nothing answers the handshake on port 9: registered, pending, with its secret.
        let r = hpb::CreateSubscriptionRequest {
            name: format!("hook {i}"),
            filter: "graph.evt.>".into(),
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        };
        client.create_subscription(req(tenant, r)).await.unwrap();
    }
    // Deliveries as the intake queues them, one per subscription.
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO webhook.webhook_deliveries (subscription_id, event_id, tenant_id, aggregate_id, sequence, \
         subject, event, domain, stream_sequence) SELECT subscription_id, gen_random_uuid(), tenant_id, \
         gen_random_uuid(), 1, 'graph.evt.graph.x.graph_created', '{\"a\": 1}'::json, 'graph', 7 \
         FROM webhook.webhook_subscriptions",
    )
    .execute(&pool)
    .await
    .unwrap();
    let tables = ["webhook_subscriptions", "webhook_secrets", "webhook_deliveries"];
    let mut before = Vec::new();
    for table in tables {
        before.push(rows(&pool, table).await);
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook.webhook_secrets").await, 3);
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook.webhook_deliveries").await, 3);

    let out = run_ok(cim(&db, &prefix).args(["backup", "--to", dir.to_str().unwrap()]));
    assert!(out.contains("complete"), "{out}");
    webhook.stop_replica().await;

    let (restored, restored_prefix) = (Database::create("whr").await, unique("p"));
    run_ok(cim(&restored, &restored_prefix).args(["restore", "--from", dir.to_str().unwrap()]));
    let restored_pool = restored.pool().await;
    for (table, before) in tables.iter().zip(&before) {
        assert_eq!(&rows(&restored_pool, table).await, before, "webhook.{table} restored as it was");
    }
    run_ok(cim(&restored, &restored_prefix).args(["verify"]));

    let js = jetstream().await;
    for p in [&prefix, &restored_prefix] {
        let sp: cim_core::SubjectPrefix = p.parse().unwrap();
        let _ = js.delete_stream(sp.stream_name(cim_core::Domain::Webhook)).await;
        let _ = js.delete_stream(sp.dlq_stream_name()).await;
    }
    pool.close().await;
    restored_pool.close().await;
    db.drop_now().await;
    restored.drop_now().await;
    let _ = std::fs::remove_dir_all(&dir);
}
