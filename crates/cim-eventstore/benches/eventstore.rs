//! Event-store benchmark. Prints one JSON document:
//! - append throughput (events/s, one event per command, fast-path expectation) at concurrency
//!   1, 16 and 64, next to the rate of a plain single-row INSERT (autocommit = INSERT + COMMIT)
//!   into an identical table at the same concurrency, measured in the same run;
//! - relay throughput: events/s from a full outbox to JetStream acknowledgements.
//!
//! `cargo bench -p cim-eventstore --bench eventstore` (CIM_BENCH_SECONDS per point, default 5).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_core::{
    Actor, AggregateId, CausationId, CorrelationId, Domain, EventContext, EventHash, NewEvent, SubjectPrefix, TenantId,
    Upcasters,
};
use cim_eventstore::{Append, EventStore, Expected, Relay, RelayConfig, StoreConfig};
use cim_runtime::Shutdown;
use sqlx::PgPool;

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn payload(n: u64) -> serde_json::Value {
    serde_json::json!({"node_id": format!("n{n}"), "node_type": "person", "properties": {"name": "Ada", "age": 36}})
}

async fn pool(url: &str, schema: &str, max: u32) -> PgPool {
    cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
        url: url.to_owned(),
        schema: schema.to_owned(),
        max_connections: max,
        connect_timeout: Duration::from_secs(10),
        application_name: "cim-bench".into(),
    })
    .await
    .expect("postgres")
}

fn context(tenant: TenantId, id: AggregateId) -> EventContext {
    EventContext {
        domain: Domain::Graph,
        aggregate_type: "node".parse().expect("name"),
        aggregate_id: id,
        tenant_id: tenant,
        actor: Actor::service("bench"),
        correlation_id: CorrelationId::new(),
        causation_id: CausationId::new(),
    }
}

#[tokio::main]
async fn main() {
    let url = env("CIM_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres");
    let nats_url = env("CIM_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let secs: f64 = env("CIM_BENCH_SECONDS", "5").parse().expect("CIM_BENCH_SECONDS");
    let tag = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let schema = format!("bench_{tag}");
    let prefix: SubjectPrefix = format!("bench{tag}").parse().expect("prefix");

    let admin = pool(&url, &schema, 70).await;
    let store = EventStore::open(
        admin.clone(),
        StoreConfig {
            domain: Domain::Graph,
            schema: schema.clone(),
            snapshot_every: 1000,
            upcasters: Upcasters::new(),
        },
    )
    .await
    .expect("store");
    sqlx::query("CREATE TABLE raw_events (LIKE events INCLUDING ALL)").execute(&admin).await.expect("raw table");

    let mut points = Vec::new();
    for c in [1usize, 16, 64] {
        let raw = {
            let pool = admin.clone();
            let tenant = TenantId::new();
            cim_testkit::bench::rate(c, Duration::ZERO, secs, move |_, i| {
                let pool = pool.clone();
                async move {
                    let e = cim_core::EventId::new();
                    sqlx::query(
                        "INSERT INTO raw_events (event_id, aggregate_id, sequence, aggregate_type, event_type, \
                         schema_version, occurred_at, tenant_id, actor, correlation_id, causation_id, payload, hash, \
                         prev_hash) VALUES ($1, $2, $3, 'node', 'node_added', 1, now(), $4, 'service:bench', $5, $6, \
                         $7::json, $8, $9)",
                    )
                    .bind(e.as_uuid())
                    .bind(AggregateId::new().as_uuid())
                    .bind(i as i64 + 1)
                    .bind(tenant.as_uuid())
                    .bind(CorrelationId::new().as_uuid())
                    .bind(CausationId::new().as_uuid())
                    .bind(serde_json::to_string(&payload(i)).expect("json"))
                    .bind(EventHash::GENESIS.as_bytes().to_vec())
                    .bind(EventHash::GENESIS.as_bytes().to_vec())
                    .execute(&pool)
                    .await
                    .expect("raw insert");
                }
            })
            .await
        };
        let append = {
            let tenant = TenantId::new();
            // One aggregate per worker; each worker knows its head (the fast path a service
            // takes after loading the aggregate).
            let heads: Arc<Vec<tokio::sync::Mutex<(AggregateId, Expected)>>> =
                Arc::new((0..c).map(|_| tokio::sync::Mutex::new((AggregateId::new(), Expected::NoStream))).collect());
            let store = store.clone();
            cim_testkit::bench::rate(c, Duration::ZERO, secs, move |w, i| {
                let (store, heads) = (store.clone(), heads.clone());
                async move {
                    let mut head = heads[w].lock().await;
                    let done = store
                        .append(Append {
                            context: context(tenant, head.0),
                            expected: head.1,
                            events: vec![NewEvent {
                                event_type: "node_added".parse().expect("name"),
                                schema_version: 1,
                                payload: payload(i),
                            }],
                            idempotency_key: None,
                        })
                        .await
                        .expect("append");
                    head.1 = done.expected();
                }
            })
            .await
        };
        points.push(serde_json::json!({
            "concurrency": c,
            "append_events_per_s": append.per_s.round(),
            "raw_insert_rows_per_s": raw.per_s.round(),
            "append_over_raw": (append.per_s / raw.per_s * 1000.0).round() / 1000.0,
            "append": append.json(),
            "raw_insert": raw.json(),
        }));
    }

    // Relay: drain the outbox the appends above filled.
    let backlog: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&admin).await.expect("count");
    let client = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: nats_url,
        client_name: "cim-bench".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .expect("nats");
    let js = cim_runtime::nats::jetstream(client);
    let stream = cim_streams::streams::ensure_domain_stream(&js, &prefix, Domain::Graph, 1).await.expect("stream");
    let relay = Relay::new(store.clone(), js.clone(), prefix.clone(), RelayConfig::default());
    let stop = Shutdown::new();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(stop.clone()));
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&admin).await.expect("count");
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_secs = started.elapsed().as_secs_f64();
    stop.trigger();
    let _ = task.await;
    let in_stream = js.get_stream(&stream).await.expect("stream").info().await.expect("info").state.messages;

    let ratio_64 = points.last().and_then(|p| p["append_over_raw"].as_f64()).unwrap_or(0.0);
    let relay_rate = backlog as f64 / relay_secs;
    let report = serde_json::json!({
        "bench": "eventstore",
        "seconds_per_point": secs,
        "append": points,
        "relay": {
            "events": backlog,
            "in_stream": in_stream,
            "seconds": (relay_secs * 1000.0).round() / 1000.0,
            "events_per_s": relay_rate.round(),
        },
        "targets": {
            "append_over_raw_at_64": {"target": 0.7, "measured": ratio_64, "met": ratio_64 >= 0.7},
            "relay_events_per_s": {"target": 20000, "measured": relay_rate.round(), "met": relay_rate >= 20000.0},
        },
    });
    let _ = js.delete_stream(&stream).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
