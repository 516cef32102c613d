//! The delivery component SIGKILLed mid-batch: the service runs as a child process (this test
//! binary run again, as the ignored test `child_service`), calls are in flight to a slow
//! receiver when it is killed, and a new instance over the same schema and streams finishes the
//! work. Every event arrives; the only events that arrive twice are ones whose call was in flight
//! at the kill, with the same `ce-id` (at least once, deduplicable).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use cim_core::{AggregateId, TenantId};
use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
use cim_testkit::domain::unique;
use support::*;

const SCHEMA_VAR: &str = "CIM_WEBHOOK_TEST_CHILD_SCHEMA";
const PREFIX_VAR: &str = "CIM_WEBHOOK_TEST_CHILD_PREFIX";
const ADDR_FILE_VAR: &str = "CIM_WEBHOOK_TEST_CHILD_ADDR_FILE";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the child process of the_sender_killed_mid_batch_loses_nothing; runs only when started by it"]
async fn child_service() {
    let (Ok(schema), Ok(prefix), Ok(addr_file)) =
        (std::env::var(SCHEMA_VAR), std::env::var(PREFIX_VAR), std::env::var(ADDR_FILE_VAR))
    else {
        return;
    };
    let running = Service::instance(&schema, &prefix, fast()).await;
    std::fs::write(addr_file, running.grpc.to_string()).unwrap();
    // Until the parent kills this process.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sender_killed_mid_batch_loses_nothing() {
    let (schema, prefix) = (unique("w"), unique("p"));
    let addr_file = std::env::temp_dir().join(format!("{schema}.addr"));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_service", "--ignored", "--nocapture"])
        .env(SCHEMA_VAR, &schema)
        .env(PREFIX_VAR, &prefix)
        .env(ADDR_FILE_VAR, &addr_file)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            break addr;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the child service did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = std::fs::remove_file(&addr_file);
    let mut client = WebhookServiceClient::connect(format!("http://{addr}")).await.unwrap();

    let tenant = TenantId::new();
    let (receiver, sink) = (Receiver::start().await, Receiver::start().await);
    // Slow answers: the killed process has calls in flight.
    receiver.otherwise(Answer::Slow(Duration::from_millis(400)));
    let w = AggregateId::new();
    let made = subscribe(
        &mut client,
        tenant,
        w,
        "webhook.evt.subscription.*.*",
        &format!("event.aggregate_id != '{w}'"),
        &receiver.url(),
    )
    .await;
    assert_eq!(made.state, "active");
    let mut sources = Vec::new();
    for _ in 0..6 {
        let id = source(&mut client, tenant, &sink.url()).await;
        cycle(&mut client, tenant, id).await;
        sources.push(id);
    }
    receiver.wait("calls before the kill", Duration::from_secs(60), |c| c.len() >= 6).await;
    child.kill().unwrap();
    let killed_at = Instant::now();
    let _ = child.wait();

    let running = Service::instance(&schema, &prefix, fast()).await;
    let expected: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>(sqlx::AssertSqlSafe(format!(
        "SELECT event_id FROM {schema}.events WHERE aggregate_id = ANY($1)"
    )))
    .bind(sources.iter().map(|s| s.as_uuid()).collect::<Vec<_>>())
    .fetch_all(&running.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|id| id.to_string())
    .collect();
    assert_eq!(expected.len(), sources.len() * 4);
    let received = |calls: &[Call]| calls.iter().map(|c| c.header("ce-id").to_owned()).collect::<HashSet<_>>();
    receiver
        .wait("every event after the restart", Duration::from_secs(180), |c| received(c).is_superset(&expected))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = receiver.calls();
    assert_eq!(received(&calls), expected, "every event, and nothing else");

    let mut seen: HashMap<&str, Vec<Instant>> = HashMap::new();
    let mut per_aggregate: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for call in &calls {
        seen.entry(call.header("ce-id")).or_default().push(call.at);
        per_aggregate
            .entry(call.header("ce-subject"))
            .or_default()
            .push(call.header("ce-cimsequence").parse().unwrap());
    }
    let twice: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).collect();
    for (id, at) in &twice {
        assert_eq!(at.len(), 2, "{id} more than once more");
        assert!(at[0] < killed_at, "{id} again, though its first call was after the kill");
    }
    assert!(twice.len() <= fast().concurrency, "{} again; at most the calls in flight", twice.len());
    for (aggregate, sequences) in &per_aggregate {
        assert!(sequences.is_sorted(), "in order for {aggregate}: {sequences:?}");
    }
    running.stop().await;
}
