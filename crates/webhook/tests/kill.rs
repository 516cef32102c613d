//! The delivery component SIGKILLed mid-batch: the service runs as a child process (this test
//! binary run again, as the ignored test `child_service`) and is killed with calls in flight to a
//! slow receiver, or with a batch of stream messages taken by its intake and not acknowledged;
//! a new instance over the same schema and streams finishes the work. Every event arrives, each
//! aggregate's in order; the only events that arrive twice are ones whose call was in flight at
//! the kill, with the same `ce-id` (at least once, deduplicable).

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
#[ignore = "the child process of the tests below that kill it; runs only when started by them"]
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
    let (mut child, mut client) = Child::start(&schema, &prefix).await;

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
    let killed_at = child.kill();

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

    at_least_once_in_order(&calls, killed_at);
    running.stop().await;
}

/// The intake killed holding a batch: events of many aggregates wait on a domain stream, the
/// service is killed as soon as its first rows commit, with messages delivered to its intake and
/// not acknowledged (taken and not yet committed, or committed and not yet acknowledged). A new
/// instance takes in the rest and, after the ack wait, those: every event arrives, each
/// aggregate's in order, none twice but calls in flight at the kill, one row per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_intake_killed_mid_batch_loses_nothing_and_keeps_order() {
    use async_nats::jetstream::{self, consumer::pull};
    use cim_core::{Domain, SubjectPrefix};

    const AGGREGATES: usize = 100;
    const PER_AGGREGATE: usize = 30;
    let (schema, prefix) = (unique("w"), unique("p"));
    let parsed: SubjectPrefix = prefix.parse().unwrap();
    let js = jetstream::new(async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap());
    let graph = cim_streams::streams::ensure_domain_stream(&js, &parsed, Domain::Graph, 1).await.unwrap();
    let (mut child, mut client) = Child::start(&schema, &prefix).await;
    let tenant = TenantId::new();
    let receiver = Receiver::start().await;
    let made = subscribe(&mut client, tenant, AggregateId::new(), "graph.evt.graph.*.*", "", &receiver.url()).await;
    assert_eq!(made.state, "active");

    let events = graph_events(tenant, AGGREGATES, PER_AGGREGATE);
    publish(&js, &parsed, &events).await;
    let pool = sqlx::PgPool::connect(&cim_testkit::domain::database_url()).await.unwrap();
    let rows = |pool: sqlx::PgPool| {
        let count = format!("SELECT count(*) FROM {schema}.webhook_deliveries");
        async move { sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count)).fetch_one(&pool).await.unwrap() }
    };
    let until = Instant::now() + Duration::from_secs(60);
    while rows(pool.clone()).await == 0 {
        assert!(Instant::now() < until, "nothing was taken in");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = child.kill();
    let taken_before = rows(pool.clone()).await;
    let intake = js.get_stream(&graph).await.unwrap().get_consumer::<pull::Config>("webhook-intake-graph").await;
    let held = intake.unwrap().info().await.unwrap().num_ack_pending;
    assert!(
        (taken_before as usize) < events.len() && held > 0,
        "killed after {taken_before} of {} rows, {held} messages held: not mid-batch",
        events.len()
    );

    let running = Service::instance(&schema, &prefix, fast()).await;
    let expected: HashSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let received = |calls: &[Call]| calls.iter().map(|c| c.header("ce-id").to_owned()).collect::<HashSet<_>>();
    receiver
        .wait("every event after the restart", Duration::from_secs(180), |c| received(c).is_superset(&expected))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = receiver.calls();
    assert_eq!(received(&calls), expected, "every event, and nothing else");
    at_least_once_in_order(&calls, killed_at);
    assert_eq!(rows(pool.clone()).await as usize, events.len(), "one row per event");
    running.stop().await;
    let _ = js.delete_stream(&graph).await;
}

/// `per` events of each of `aggregates` new graph aggregates of `tenant`, in the order the relay
/// of a busy graph service would publish them: round robin, each aggregate's in sequence.
fn graph_events(tenant: TenantId, aggregates: usize, per: usize) -> Vec<cim_core::EventEnvelope> {
    use cim_core::{CausationId, CorrelationId, Domain, EventContext, EventEnvelope, EventHash, NewEvent};
    let per_aggregate: Vec<Vec<EventEnvelope>> = (0..aggregates)
        .map(|_| {
            let ctx = EventContext {
                domain: Domain::Graph,
                aggregate_type: "graph".parse().unwrap(),
                aggregate_id: AggregateId::new(),
                tenant_id: tenant,
                actor: "user:test".parse().unwrap(),
                correlation_id: CorrelationId::new(),
                causation_id: CausationId::new(),
            };
            let made = (0..per).map(|k| NewEvent {
                event_type: "node_added".parse().unwrap(),
                schema_version: 1,
                payload: serde_json::json!({"node_id": format!("n{k}")}),
            });
            EventEnvelope::seal_all(&ctx, made, 1, EventHash::GENESIS, chrono::Utc::now())
        })
        .collect();
    (0..per).flat_map(|k| per_aggregate.iter().map(move |events| events[k].clone())).collect()
}

/// Publishes `events` as the relay does (its subjects and message ids), acks awaited per 1,000.
async fn publish(
    js: &async_nats::jetstream::Context,
    prefix: &cim_core::SubjectPrefix,
    events: &[cim_core::EventEnvelope],
) {
    use cim_core::{EventSubject, headers};
    for chunk in events.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for e in chunk {
            let subject = EventSubject {
                domain: e.domain,
                aggregate_type: e.aggregate_type.clone(),
                aggregate_id: e.aggregate_id,
                event_type: e.event_type.clone(),
            }
            .to_subject(prefix);
            let mut h = async_nats::HeaderMap::new();
            h.insert(headers::MSG_ID, e.event_id.to_string().as_str());
            let payload = serde_json::to_vec(e).unwrap();
            acks.push(js.publish_with_headers(subject, h, payload.into()).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// The service as a child process (this binary's ignored `child_service`), and a client of it.
struct Child(std::process::Child);

impl Child {
    async fn start(schema: &str, prefix: &str) -> (Child, WebhookServiceClient<tonic::transport::Channel>) {
        let addr_file = std::env::temp_dir().join(format!("{schema}.addr"));
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_service", "--ignored", "--nocapture"])
            .env(SCHEMA_VAR, schema)
            .env(PREFIX_VAR, prefix)
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
        let client = WebhookServiceClient::connect(format!("http://{addr}")).await.unwrap();
        (Child(child), client)
    }

    /// SIGKILL; answers when.
    fn kill(&mut self) -> Instant {
        self.0.kill().unwrap();
        let killed_at = Instant::now();
        let _ = self.0.wait();
        killed_at
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each event at most twice, and twice only if its first call was before the kill (in flight
/// then), no more of them than the calls a sender makes at once; each aggregate's events in order.
fn at_least_once_in_order(calls: &[Call], killed_at: Instant) {
    let mut seen: HashMap<&str, Vec<Instant>> = HashMap::new();
    let mut per_aggregate: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for call in calls {
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
}

/// The crash case made certain: an event's message is held unacknowledged (as by an intake that
/// died holding it) while the next event of the same aggregate reaches a new instance at once.
/// The later event is taken in but not sent until the earlier one has been taken in and sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_event_waits_for_an_earlier_one_the_intake_has_not_acknowledged() {
    use async_nats::jetstream::{AckKind, consumer::pull};
    use cim_core::subject::EventSubject;
    use cim_core::{Domain, EventId, SubjectPrefix};
    use futures::StreamExt;

    let (schema, prefix) = (unique("w"), unique("p"));
    let first = Service::instance(&schema, &prefix, fast()).await;
    let mut client = WebhookServiceClient::new(first.channel().await);
    let tenant = TenantId::new();
    let (receiver, sink) = (Receiver::start().await, Receiver::start().await);
    let source_id = AggregateId::new();
    let made = subscribe(
        &mut client,
        tenant,
        AggregateId::new(),
        "webhook.evt.subscription.*.*",
        &format!("event.aggregate_id == '{source_id}'"),
        &receiver.url(),
    )
    .await;
    assert_eq!(made.state, "active");
    let made = subscribe(&mut client, tenant, source_id, "graph.evt.none.*.*", "", &sink.url()).await;
    assert_eq!(made.state, "active");
    receiver.wait("the source's two events", Duration::from_secs(60), |c| c.len() >= 2).await;
    let history = first.store.history(tenant, source_id).await.unwrap();
    let last = history.last().unwrap().clone();
    first.stop_replica().await;

    // Two more events of the source, published as its relay would; the first one held.
    let prefix_parsed: SubjectPrefix = prefix.parse().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap());
    let next = |sequence: u64| {
        let mut event = last.clone();
        event.event_id = EventId::new();
        event.sequence = sequence;
        event
    };
    let (held, later) = (next(last.sequence + 1), next(last.sequence + 2));
    let subject = EventSubject {
        domain: Domain::Webhook,
        aggregate_type: last.aggregate_type.clone(),
        aggregate_id: last.aggregate_id,
        event_type: last.event_type.clone(),
    }
    .to_subject(&prefix_parsed);
    let publish = |event: cim_core::EventEnvelope| {
        let (js, subject) = (js.clone(), subject.clone());
        async move { js.publish(subject, serde_json::to_vec(&event).unwrap().into()).await.unwrap().await.unwrap() }
    };
    publish(held.clone()).await;
    let intake = js
        .get_stream(prefix_parsed.stream_name(Domain::Webhook))
        .await
        .unwrap()
        .get_consumer::<pull::Config>("webhook-intake-webhook")
        .await
        .unwrap();
    let mut fetched = intake.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
    let holding = fetched.next().await.unwrap().unwrap();
    let taken: cim_core::EventEnvelope = serde_json::from_slice(&holding.payload).unwrap();
    assert_eq!(taken.event_id, held.event_id, "the test holds the earlier event");
    publish(later.clone()).await;

    let second = Service::instance(&schema, &prefix, fast()).await;
    let row_of = |event: EventId| {
        let (pool, schema) = (second.pool.clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT state FROM {schema}.webhook_deliveries WHERE event_id = $1"
            )))
            .bind(event.as_uuid())
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let until = Instant::now() + Duration::from_secs(60);
    while row_of(later.event_id).await.is_none() {
        assert!(Instant::now() < until, "the later event was never taken in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Taken in, and held back: several sender polls and floor refreshes pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(row_of(later.event_id).await.as_deref(), Some("pending"));
    assert_eq!(receiver.calls().len(), 2, "nothing sent while the earlier event is not taken in");

    // The holder lets go (as the ack wait would): both go out, the earlier first.
    holding.ack_with(AckKind::Nak(None)).await.unwrap();
    let calls = receiver.wait("both events", Duration::from_secs(60), |c| c.len() >= 4).await;
    let ids: Vec<&str> = calls[2..].iter().map(|c| c.header("ce-id")).collect();
    assert_eq!(ids, [held.event_id.to_string(), later.event_id.to_string()]);
    second.stop().await;
}
