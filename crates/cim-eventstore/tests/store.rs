//! The event store against the real Postgres (and NATS for what reaches the stream).

#[path = "support/helpers.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use cim_core::{AggregateId, EventEnvelope, TenantId};
use cim_eventstore::relay::Relay;
use cim_eventstore::{Aggregate, Append, Expected, RelayConfig, StoreError};
use serde::{Deserialize, Serialize};
use support::*;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    count: u64,
    last_n: u64,
}

impl Aggregate for Counter {
    const AGGREGATE_TYPE: &'static str = "counter";
    fn apply(&mut self, event: &EventEnvelope) -> Result<(), String> {
        self.count += 1;
        self.last_n = event.payload["n"].as_u64().ok_or("no n")?;
        Ok(())
    }
}

fn append(tenant: TenantId, id: AggregateId, expected: Expected, n: u64) -> Append {
    Append { context: context(tenant, id), expected, events: vec![event(n)], idempotency_key: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_racing_on_one_version_one_wins_and_the_stream_has_one_copy() {
    let env = TestEnv::new(100).await;
    let tenant = TenantId::new();
    for _ in 0..20 {
        let id = AggregateId::new();
        env.store.append(append(tenant, id, Expected::NoStream, 0)).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let racers: Vec<_> = (1..=2)
            .map(|n| {
                let (store, barrier) = (env.store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.append(append(tenant, id, Expected::Version(1), n)).await
                })
            })
            .collect();
        let mut wins = 0;
        let mut conflicts = 0;
        for r in racers {
            match r.await.unwrap() {
                Ok(done) => {
                    assert_eq!(done.version, 2);
                    wins += 1;
                }
                Err(e @ StoreError::Conflict { .. }) => {
                    assert_eq!(e.code(), cim_core::ErrorCode::Conflict);
                    assert_eq!(format!("{:?}", e.code().grpc()), "Aborted");
                    conflicts += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!((wins, conflicts), (1, 1));
        assert_eq!(env.store.verify(tenant, id).await.unwrap(), 2);
    }
    let relay = Relay::new(env.store.clone(), env.js.clone(), env.prefix.clone(), RelayConfig::default());
    while relay.publish_batch().await.unwrap() > 0 {}
    let published = read_stream(&env.js, &env.stream).await;
    assert_eq!(published.len(), 40);
    assert_exactly_once_in_order(&published, &env.stored_ids().await);
    env.cleanup().await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_result_and_appends_nothing() {
    let env = TestEnv::new(100).await;
    let tenant = TenantId::new();
    let id = AggregateId::new();
    let mut cmd = append(tenant, id, Expected::Any, 1);
    cmd.idempotency_key = Some("req-1".into());
    let first = env.store.append(cmd.clone()).await.unwrap();
    assert!(!first.replayed);
    let again = env.store.append(cmd.clone()).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.version, &again.event_ids), (first.version, &first.event_ids));
    // Concurrent retries of one key: still exactly one append.
    let mut cmd2 = append(tenant, id, Expected::Any, 2);
    cmd2.idempotency_key = Some("req-2".into());
    let results = futures::future::join_all((0..8).map(|_| env.store.append(cmd2.clone()))).await;
    let fresh = results.iter().filter(|r| matches!(r, Ok(a) if !a.replayed)).count();
    assert_eq!(fresh, 1, "{results:?}");
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|a| a.version == 2)));
    assert_eq!(env.store.verify(tenant, id).await.unwrap(), 2);
    // Keys are per tenant.
    let other = env.store.append(append(TenantId::new(), AggregateId::new(), Expected::NoStream, 1)).await.unwrap();
    assert!(!other.replayed);
    env.cleanup().await;
}

#[tokio::test]
async fn load_folds_from_snapshots_and_the_chain_catches_tampering() {
    let env = TestEnv::new(10).await;
    let tenant = TenantId::new();
    let id = AggregateId::new();
    let mut expected = Expected::NoStream;
    for n in 1..=25 {
        let done = env.store.append(append(tenant, id, expected, n)).await.unwrap();
        expected = done.expected();
    }
    let loaded = env.store.load::<Counter>(tenant, id).await.unwrap();
    assert_eq!((loaded.state.count, loaded.state.last_n, loaded.version), (25, 25, 25));
    assert_eq!(loaded.snapshot_version, None);
    // The snapshot is written in the background.
    let mut snap = None;
    for _ in 0..100 {
        snap = sqlx::query_scalar::<_, i64>("SELECT sequence FROM snapshots WHERE aggregate_id = $1")
            .bind(id.as_uuid())
            .fetch_optional(&env.pool)
            .await
            .unwrap();
        if snap.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(snap, Some(25));
    // Appending after the load with its expectation (fast path), then loading from the snapshot.
    env.store.append(append(tenant, id, loaded.expected(), 26)).await.unwrap();
    let again = env.store.load::<Counter>(tenant, id).await.unwrap();
    assert_eq!(again.snapshot_version, Some(25));
    assert_eq!((again.state.count, again.version), (26, 26));
    // A stale expectation is a conflict.
    let stale = env.store.append(append(tenant, id, loaded.expected(), 99)).await.unwrap_err();
    assert!(matches!(stale, StoreError::Conflict { .. }), "{stale}");
    // Another tenant sees nothing.
    assert!(matches!(env.store.load::<Counter>(TenantId::new(), id).await, Err(StoreError::NotFound(_))));
    assert!(matches!(
        env.store.append(append(TenantId::new(), id, Expected::Any, 1)).await,
        Err(StoreError::NotFound(_))
    ));
    // Rewriting a stored payload breaks the chain at that event.
    sqlx::query("UPDATE events SET payload = '{\"n\": 7}' WHERE aggregate_id = $1 AND sequence = 7")
        .bind(id.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    match env.store.verify(tenant, id).await {
        Err(StoreError::Chain(brk)) => assert_eq!(brk.sequence, 7),
        other => panic!("tampering not detected: {other:?}"),
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_foreign_tenant_cannot_append_and_a_bad_head_is_caught_by_verify() {
    let env = TestEnv::new(100).await;
    let tenant = TenantId::new();
    let id = AggregateId::new();
    let done = env.store.append(append(tenant, id, Expected::NoStream, 1)).await.unwrap();
    // Another tenant naming the aggregate's version does not find it.
    let foreign = env.store.append(append(TenantId::new(), id, Expected::Version(1), 2)).await;
    assert!(matches!(foreign, Err(StoreError::NotFound(_))), "{foreign:?}");
    let next = env.store.append(append(tenant, id, done.expected(), 2)).await.unwrap();
    assert_eq!(env.store.verify(tenant, id).await.unwrap(), 2);
    // Payloads that could never be published are refused up front.
    let mut huge = append(tenant, id, next.expected(), 3);
    huge.events[0].payload = serde_json::json!({"blob": "x".repeat(cim_eventstore::store::MAX_PAYLOAD_BYTES)});
    assert!(matches!(env.store.append(huge).await, Err(StoreError::Invalid(_))));
    // A head token is trusted without a lookup; one minted from wrong values (which only a
    // broken projection could do) is chained in, and verification names the event.
    let forged = Expected::Head(cim_eventstore::HeadToken::from_projection(2, cim_core::EventHash([7; 32])));
    env.store.append(append(tenant, id, forged, 3)).await.unwrap();
    match env.store.verify(tenant, id).await {
        Err(StoreError::Chain(brk)) => {
            assert_eq!(brk.sequence, 3);
            assert_eq!(brk.kind, cim_core::ChainBreakKind::PrevHashMismatch);
        }
        other => panic!("a bad head went unnoticed: {other:?}"),
    }
    env.cleanup().await;
}

#[tokio::test]
async fn stored_payloads_round_trip_exactly() {
    let env = TestEnv::new(100).await;
    let tenant = TenantId::new();
    let id = AggregateId::new();
    let done = env.store.append(append(tenant, id, Expected::NoStream, 3)).await.unwrap();
    let stored = env.store.events(tenant, id, 0).await.unwrap();
    assert_eq!(stored, done.events);
    // The stored text is exactly what was hashed (jsonb would rewrite 1e20 and reorder keys).
    let text: String = sqlx::query_scalar("SELECT payload::text FROM events WHERE aggregate_id = $1")
        .bind(id.as_uuid())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(text, serde_json::to_string(&done.events[0].payload).unwrap());
    assert_eq!(env.store.verify(tenant, id).await.unwrap(), 1);
    env.cleanup().await;
}

/// A guard for the group-commit test: a command is written if its head is the aggregate's
/// current head. (Services lock a projection row instead; this one has none to lock.)
static GROUP_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    cim_eventstore::guarded_append_many_sql(
        "guard AS (SELECT c.aggregate_id FROM cmd c \
         WHERE c.head = (SELECT e.hash FROM events e WHERE e.aggregate_id = c.aggregate_id AND e.sequence = c.version) \
           AND NOT EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = c.aggregate_id AND e.sequence > c.version))",
        "",
    )
});

#[tokio::test]
async fn a_group_of_commands_is_written_in_one_statement_except_those_its_guard_turns_down() {
    let env = TestEnv::new(100).await;
    let tenant = TenantId::new();
    let mut heads = Vec::new();
    for n in 0..5 {
        let id = AggregateId::new();
        heads.push((id, env.store.append(append(tenant, id, Expected::NoStream, n)).await.unwrap().expected()));
    }
    // Aggregate 2's command names a head it does not have.
    heads[2].1 = Expected::Head(cim_eventstore::HeadToken::from_projection(1, cim_core::EventHash([7; 32])));
    let group: Vec<_> = heads
        .iter()
        .map(|(id, expected)| {
            let mut cmd = append(tenant, *id, *expected, 10);
            cmd.events.extend([event(11), event(12)]);
            env.store.seal_guarded(&cmd).unwrap()
        })
        .collect();
    assert_eq!(group[0].version_after(), 4);
    let results = env.store.append_guarded_many(GROUP_SQL.as_str(), group, |q| q).await.unwrap();
    for (i, ((id, _), result)) in heads.iter().zip(&results).enumerate() {
        if i == 2 {
            assert!(result.is_none(), "a stale head was written");
            assert_eq!(env.store.verify(tenant, *id).await.unwrap(), 1, "nothing of it was written");
        } else {
            let done = result.as_ref().expect("written");
            assert_eq!((done.version, done.events.len()), (4, 3));
            assert_eq!(env.store.verify(tenant, *id).await.unwrap(), 4, "chained onto the head");
            assert_eq!(env.store.events(tenant, *id, 1).await.unwrap(), done.events);
        }
    }
    // Each aggregate at most once per group; a command without a head token is refused.
    let dup: Vec<_> = [0, 0]
        .iter()
        .map(|&i| {
            let expected = results[i].as_ref().unwrap().expected();
            env.store.seal_guarded(&append(tenant, heads[i].0, expected, 20)).unwrap()
        })
        .collect();
    let refused = env.store.append_guarded_many(GROUP_SQL.as_str(), dup, |q| q).await;
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    assert!(matches!(
        env.store.seal_guarded(&append(tenant, heads[0].0, Expected::Any, 1)),
        Err(StoreError::Invalid(_))
    ));
    // The relay publishes them like any other: once each, each aggregate in order.
    let relay = Relay::new(env.store.clone(), env.js.clone(), env.prefix.clone(), RelayConfig::default());
    while relay.publish_batch().await.unwrap() > 0 {}
    let published = read_stream(&env.js, &env.stream).await;
    assert_eq!(published.len(), 5 + 4 * 3);
    assert_exactly_once_in_order(&published, &env.stored_ids().await);
    env.cleanup().await;
}

/// The gauge line of `schema` in the process's `/metrics` text, once it is there.
async fn backup_gauge(schema: &str) -> f64 {
    let prefix = format!("cim_backup_last_success_timestamp_seconds{{schema=\"{schema}\"}} ");
    for _ in 0..100 {
        let text = cim_runtime::metrics::handle().render();
        if let Some(value) = text.lines().find_map(|l| l.strip_prefix(&prefix)) {
            return value.trim().parse().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no {prefix}in /metrics");
}

#[tokio::test]
async fn a_recorded_backup_is_exported_as_the_time_of_the_newest() {
    use cim_eventstore::archive::record::{BackupRecord, export_last_success, last_success, record};
    cim_runtime::metrics::handle();
    let env = TestEnv::new(0).await;
    // Never backed up: 0, the oldest time there is, so a stale-backup alert fires.
    let stop = cim_runtime::Shutdown::new();
    let exporter = tokio::spawn(export_last_success(env.pool.clone(), env.schema.clone(), stop.clone()));
    assert_eq!(backup_gauge(&env.schema).await, 0.0);
    stop.trigger();
    exporter.await.unwrap();
    assert_eq!(last_success(&env.pool, &env.schema).await.unwrap(), None);

    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);
    let backup = |id: &str, when: &str| BackupRecord {
        backup_id: id.into(),
        completed_at: at(when),
        target: "s3://cim-backups/cim".into(),
        position: 42,
        events: 42,
    };
    record(&env.pool, &env.schema, &backup("b1", "2030-01-01T00:00:00.250Z")).await.unwrap();
    record(&env.pool, &env.schema, &backup("b2", "2030-01-01T01:00:00.500Z")).await.unwrap();
    // A backup recorded twice (a retried job) is one row.
    record(&env.pool, &env.schema, &backup("b2", "2030-01-01T01:00:00.500Z")).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM backups").fetch_one(&env.pool).await.unwrap();
    assert_eq!(rows, 2);
    assert_eq!(last_success(&env.pool, &env.schema).await.unwrap(), Some(at("2030-01-01T01:00:00.500Z")));

    // A service starting (or its next tick) exports the newest.
    let stop = cim_runtime::Shutdown::new();
    let exporter = tokio::spawn(export_last_success(env.pool.clone(), env.schema.clone(), stop.clone()));
    let want = at("2030-01-01T01:00:00.500Z").timestamp_millis() as f64 / 1000.0;
    for _ in 0..100 {
        if backup_gauge(&env.schema).await == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(backup_gauge(&env.schema).await, want);
    stop.trigger();
    exporter.await.unwrap();
    env.cleanup().await;
}
