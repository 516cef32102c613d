//! The engine's durability over one real schema: replicas sharing the due work execute every
//! step once, and timers pending when the service stops fire once after it comes back, never
//! before their time.

#[path = "support/service.rs"]
mod support;

use std::time::Duration;

use cim_core::TenantId;
use cim_workflow::engine::EngineOptions;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_complete_fifty_instances_executing_each_step_once() {
    fifty_on_two_replicas(fast()).await;
}

/// Leases that lapse at once: both replicas claim the same instances over and over and decide on
/// the same versions, so only the expected version of each advance keeps every step single.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_racing_for_every_instance_still_execute_each_step_once() {
    fifty_on_two_replicas(EngineOptions { lease: Duration::from_millis(1), ..fast() }).await;
}

async fn fifty_on_two_replicas(engine: EngineOptions) {
    let svc = Service::start_with(engine.clone()).await;
    let second = svc.replica(engine).await;
    let (mut a, mut b) = (svc.client().await, client(&second).await);
    let tenant = TenantId::new();
    let (definition, _) = define(
        &mut a,
        tenant,
        json!({"name": "fan", "steps": [
            {"id": "first", "kind": "automated", "set": {"n": "n + 1"}},
            {"id": "left", "kind": "parallel", "depends_on": ["first"]},
            {"id": "right", "kind": "timer", "depends_on": ["first"], "sleep_ms": 50},
            {"id": "last", "kind": "automated", "depends_on": ["left", "right"], "set": {"m": "n * 10"}}
        ]}),
    )
    .await;
    // Started through both replicas, so both engines are woken and both poll.
    let mut ids = Vec::new();
    for i in 0..50 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        ids.push(start(c, tenant, &definition, json!({"n": i})).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let done = until(&mut a, tenant, id, Duration::from_secs(60), |w| w.status == "completed").await;
        let context = cim_proto::json::struct_to_json(done.context).unwrap();
        assert_eq!(context["m"], json!((i as i64 + 1) * 10));
    }
    for event in ["step_execution_started", "step_execution_completed", "timer_fired"] {
        assert_eq!(svc.repeated(event).await, vec![], "{event} recorded twice for a step");
    }
    assert_eq!(svc.count("step_execution_started").await, 50 * 4);
    assert_eq!(svc.count("timer_fired").await, 50);
    assert_eq!(svc.count("workflow_completed").await, 50);
    second.stop_replica().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_pending_at_a_stop_fire_once_after_the_restart_and_never_early() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let (definition, _) = define(
        &mut c,
        tenant,
        json!({"name": "sleepy", "steps": [
            {"id": "nap", "kind": "timer", "sleep_ms": 3000},
            {"id": "after", "kind": "automated", "depends_on": ["nap"], "set": {"woke": "true"}}
        ]}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(start(&mut c, tenant, &definition, json!({})).await);
    }
    for id in &ids {
        until(&mut c, tenant, id, Duration::from_secs(20), |w| step(w, "nap").status == "running").await;
    }
    // The only engine stops with every timer scheduled and none due; it comes back after they
    // all came due.
    let (schema, prefix) = (svc.running.schema.clone(), svc.running.prefix.clone());
    let store = svc.running.store.clone();
    svc.running.stop_replica().await;
    assert_eq!(count_in(&store, &schema, "timer_fired").await, 0);
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let svc = Service { running: start_on(schema, prefix).await };
    let mut c = svc.client().await;
    for id in &ids {
        let done = until_status(&mut c, tenant, id, "completed").await;
        assert_eq!(cim_proto::json::struct_to_json(done.context).unwrap()["woke"], json!(true));
    }
    assert_eq!(svc.count("timer_fired").await, 10);
    assert_eq!(svc.repeated("timer_fired").await, vec![]);
    // Never early: each firing happened at or after the time its timer was scheduled for.
    let sql = format!(
        "SELECT count(*) FROM {}.events WHERE event_type = 'timer_fired' AND occurred_at < (payload->>'fire_at')::timestamptz",
        svc.running.schema
    );
    let early: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&svc.running.pool).await.unwrap();
    assert_eq!(early, 0);
    svc.stop().await;
}

async fn count_in(store: &cim_eventstore::EventStore, schema: &str, event_type: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {schema}.events WHERE event_type = $1");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(event_type).fetch_one(store.pool()).await.unwrap()
}
