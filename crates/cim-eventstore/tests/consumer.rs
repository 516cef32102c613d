//! The consumer helper against the real NATS and Postgres: poison events go to the DLQ after
//! `max_deliver` while the rest flow; an event delivered twice is applied once.

#[path = "support/helpers.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_core::{AggregateId, EventEnvelope, TenantId};
use cim_eventstore::{Append, Consumer, ConsumerConfig, EventHandler, Expected, Relay, RelayConfig};
use cim_runtime::Shutdown;
use futures::future::BoxFuture;
use sqlx::PgConnection;
use support::*;

/// Records each applied event; fails on events whose payload says `poison`, counting attempts.
struct Recorder {
    poison_attempts: std::sync::atomic::AtomicUsize,
}

impl EventHandler for Recorder {
    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a EventEnvelope) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if event.payload.get("poison").is_some() {
                self.poison_attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Err("poison pill".into());
            }
            sqlx::query("INSERT INTO applied (event_id) VALUES ($1)")
                .bind(event.event_id.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

async fn applied(env: &TestEnv) -> Vec<(uuid::Uuid, i64)> {
    sqlx::query_as("SELECT event_id, count(*) FROM applied GROUP BY event_id").fetch_all(&env.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_goes_to_the_dlq_and_a_redelivered_event_is_applied_once() {
    let env = TestEnv::new(1000).await;
    sqlx::query("CREATE TABLE applied (event_id uuid NOT NULL)").execute(&env.pool).await.unwrap();
    let dlq = cim_streams::streams::ensure_dlq_stream(&env.js, &env.prefix, 1).await.unwrap();

    let tenant = TenantId::new();
    let id = AggregateId::new();
    let mut events: Vec<_> = (1..=20).map(event).collect();
    events[9].payload["poison"] = true.into();
    let done = env
        .store
        .append(Append { context: context(tenant, id), expected: Expected::NoStream, events, idempotency_key: None })
        .await
        .unwrap();
    let poison_id = done.event_ids[9];
    let relay = Relay::new(env.store.clone(), env.js.clone(), env.prefix.clone(), RelayConfig::default());
    while relay.publish_batch().await.unwrap() > 0 {}

    let mut config = ConsumerConfig::new("recorder", &env.stream, &env.prefix.domain_events(cim_core::Domain::Graph));
    config.max_deliver = 3;
    config.retry_delay = Duration::from_millis(50);
    let recorder = Arc::new(Recorder { poison_attempts: Default::default() });
    let consumer =
        Consumer::new(env.pool.clone(), env.js.clone(), env.prefix.clone(), config, recorder.clone()).unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(consumer.run(stop.clone()));

    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(&env).await.len() < 19 {
        assert!(Instant::now() < deadline, "only {} applied", applied(&env).await.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = loop {
        let dead = read_stream(&env.js, &dlq).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "nothing reached the DLQ");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1);
    // Tried exactly max_deliver times before it was given up.
    assert_eq!(recorder.poison_attempts.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(dead[0].event.event_id, poison_id);
    assert_eq!(dead[0].subject, format!("{}.dlq.recorder", env.prefix));
    assert_eq!(dead[0].headers["Cim-Dlq-Reason"], "poison pill");
    assert!(dead[0].headers["Cim-Dlq-Original-Subject"].ends_with(".counted"));

    // The same event published again (past the duplicate window, as after a restore) is
    // delivered a second time and acknowledged without being applied again.
    let again = read_stream(&env.js, &env.stream).await.into_iter().find(|p| p.event.sequence == 1).unwrap();
    env.js
        .publish(again.subject.clone(), serde_json::to_vec(&again.event).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let after_republish = Instant::now() + Duration::from_secs(2);
    while Instant::now() < after_republish {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = applied(&env).await;
    assert_eq!(counts.len(), 19);
    assert!(counts.iter().all(|(_, n)| *n == 1), "{counts:?}");
    assert!(counts.iter().all(|(e, _)| *e != poison_id.as_uuid()));
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE consumer = 'recorder'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 19);
    // The consumer acknowledged everything: nothing pending.
    let stream = env.js.get_stream(&env.stream).await.unwrap();
    let info = stream.consumer_info("recorder").await.unwrap();
    // The republished copy (stream sequence 21) was delivered and acknowledged.
    assert_eq!(info.delivered.stream_sequence, 21);
    assert_eq!(info.ack_floor.stream_sequence, 21);
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.num_ack_pending, 0);
    stop.trigger();
    task.await.unwrap();
    env.cleanup().await;
}
