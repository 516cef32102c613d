//! Webhook delivery benchmark (issue 23): deliveries/s to a local receiver at concurrency 64
//! beside the raw JetStream consumer rate of the same run, and event → delivery latency. Real
//! Postgres and NATS; the service, the receiver and the publisher in this process. Prints one
//! JSON document:
//! - **raw**: the operation underneath: the same events published (pipelined, as the relay
//!   publishes) to a stream of their own and read by a plain durable pull consumer that acks each
//!   message, one at a time;
//! - **cim**: the webhook service (its own schema and subject prefix, the deployments' settings
//!   but `CIM_WEBHOOK_CONCURRENCY=64`) with one active subscription on the graph stream, sending
//!   to a receiver that answers 200 at once (axum on 127.0.0.1);
//! - per side, a **burst** (N events published at once: events/s until all N arrived) and a
//!   **paced** run (open loop at half the CIM burst rate, or CIM_BENCH_WEBHOOK_RATE, for
//!   CIM_BENCH_SECONDS): publish → arrival p50/p99/p999, and for CIM where the time went: publish →
//!   the delivery row committed by the intake (its `created_at`), and row → the receiver.
//!
//! Events are the relay's envelopes and headers (`graph.evt.graph.<id>.node_added`), round robin
//! over CIM_BENCH_WEBHOOK_AGGREGATES aggregates (sequences 1, 2, … each: the sender keeps their
//! order). `cargo bench -p cim-webhook --bench webhook` (CIM_BENCH_WEBHOOK_EVENTS, default 2,000;
//! CIM_BENCH_DB_CONNECTIONS, default 72: more than the 64 calls, see [`DB_CONNECTIONS`]).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, context::PublishAckFuture, message::PublishMessage};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use cim_core::{
    AggregateId, CausationId, CorrelationId, Domain, EventContext, EventEnvelope, EventHash, EventSubject, NewEvent,
    SubjectPrefix, TenantId, headers,
};
use cim_proto::webhook as pb;
use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};
use cim_webhook::app::{WebhookOptions, prepare_with};
use futures::StreamExt;

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONCURRENCY: usize = 64;
/// The service's pool: one connection per call and a few for the intake and the claims, so the
/// pool is never what the run measures. (The deployed 16 no longer stalls the sender since each
/// call became its own task; docs/benchmarks.md, "Webhook delivery", has runs with both.)
const DB_CONNECTIONS: &str = "72";
/// How long one phase may take before the bench calls events lost.
const PATIENCE: Duration = Duration::from_secs(120);
/// Publishes awaited together: async-nats holds at most 5,000 unacknowledged per context.
const PUBLISH_BATCH: usize = 1000;
const FILTER: &str = "graph.evt.graph.*.node_added";

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50/p99/p999 (ms) of durations in seconds.
fn latency(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let q = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        round3(samples[((samples.len() as f64 - 1.0) * q).round() as usize] * 1000.0)
    };
    serde_json::json!({"samples": samples.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)})
}

/// A moment on both clocks: `Instant` for durations here, the wall clock to compare with
/// Postgres' `now()` (same machine).
#[derive(Debug, Clone, Copy)]
struct Stamp {
    at: Instant,
    wall: DateTime<Utc>,
}

fn stamp() -> Stamp {
    Stamp { at: Instant::now(), wall: Utc::now() }
}

/// Where each event (by id) arrived, on the receiver or the raw consumer.
#[derive(Default)]
struct Arrivals {
    seen: Mutex<HashMap<String, Stamp>>,
    duplicates: AtomicU64,
}

impl Arrivals {
    fn arrive(&self, id: &str) {
        let now = stamp();
        if self.seen.lock().expect("arrivals").insert(id.to_owned(), now).is_some() {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every id of `events` arrived; answers their arrivals.
    async fn all_of(&self, events: &[EventEnvelope], what: &str) -> Vec<Stamp> {
        let until = Instant::now() + PATIENCE;
        loop {
            {
                let seen = self.seen.lock().expect("arrivals");
                let got: Vec<Stamp> =
                    events.iter().filter_map(|e| seen.get(&e.event_id.to_string()).copied()).collect();
                if got.len() == events.len() {
                    return got;
                }
                assert!(Instant::now() < until, "{what}: {} of {} events arrived", got.len(), events.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The receiver: answers the validation handshake and every POST with 200 at once, noting the
/// event's `ce-id` as it arrives.
async fn receiver(arrivals: Arc<Arrivals>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let handler = move |method: Method, headers: HeaderMap| {
        let arrivals = arrivals.clone();
        async move {
            if method == Method::OPTIONS {
                return (StatusCode::OK, [("webhook-allowed-origin", "*")]).into_response();
            }
            if let Some(id) = headers.get("ce-id").and_then(|v| v.to_str().ok()) {
                arrivals.arrive(id);
            }
            StatusCode::OK.into_response()
        }
    };
    let app = axum::Router::new().fallback(handler);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

/// The raw side: a durable pull consumer on `stream`, explicit acks, one message at a time.
async fn raw_consumer(js: &jetstream::Context, stream: &str, arrivals: Arc<Arrivals>) -> tokio::task::JoinHandle<()> {
    let stream = js.get_stream(stream).await.expect("raw stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench-raw".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("raw consumer");
    let mut messages = consumer.messages().await.expect("pulling");
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let _ = message.ack().await;
            if let Some(id) = message.headers.as_ref().and_then(|h| h.get(headers::MSG_ID)) {
                arrivals.arrive(id.as_str());
            }
        }
    })
}

/// `n` graph events of `tenant`, round robin over `aggregates` new aggregates (each in sequence).
fn events(tenant: TenantId, n: usize, aggregates: usize, first: usize) -> Vec<EventEnvelope> {
    let aggregates = aggregates.clamp(1, n.max(1));
    let per: Vec<Vec<EventEnvelope>> = (0..aggregates)
        .map(|a| {
            let ctx = EventContext {
                domain: Domain::Graph,
                aggregate_type: "graph".parse().expect("type"),
                aggregate_id: AggregateId::new(),
                tenant_id: tenant,
                actor: "user:bench".parse().expect("actor"),
                correlation_id: CorrelationId::new(),
                causation_id: CausationId::new(),
            };
            let count = n / aggregates + usize::from(a < n % aggregates);
            let made = (0..count).map(|k| NewEvent {
                event_type: "node_added".parse().expect("event type"),
                schema_version: 1,
                payload: serde_json::json!({"node_id": format!("n{}", first + k * aggregates + a), "labels": ["bench"], "props": {"weight": k}}),
            });
            EventEnvelope::seal_all(&ctx, made, 1, EventHash::GENESIS, Utc::now())
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for k in 0..=n / aggregates {
        out.extend(per.iter().filter_map(|events| events.get(k).cloned()));
    }
    out
}

/// The relay's message for `e`: subject and headers as `cim-eventstore` publishes them.
fn message(prefix: &SubjectPrefix, e: &EventEnvelope) -> (String, PublishMessage) {
    let subject = EventSubject {
        domain: e.domain,
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id,
        event_type: e.event_type.clone(),
    }
    .to_subject(prefix);
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, e.event_id.to_string().as_str());
    h.insert(headers::EVENT_TYPE, e.event_type.as_str());
    h.insert(headers::AGGREGATE_ID, e.aggregate_id.to_string().as_str());
    h.insert(headers::SEQUENCE, e.sequence.to_string().as_str());
    h.insert(headers::CORRELATION_ID, e.correlation_id.to_string().as_str());
    h.insert(headers::CAUSATION_ID, e.causation_id.to_string().as_str());
    h.insert(headers::TENANT_ID, e.tenant_id.to_string().as_str());
    let payload = serde_json::to_vec(e).expect("envelope");
    (subject, PublishMessage::build().payload(payload.into()).headers(h))
}

/// Publishes `events` in order: all at once (acks awaited per batch, as the relay does), or
/// open loop at `rate` per second. Answers when each was handed to the client, and the seconds
/// the publishing took.
async fn publish(
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    events: &[EventEnvelope],
    rate: Option<f64>,
) -> (Vec<Stamp>, f64) {
    let started = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(events.len());
    let mut acks: Vec<PublishAckFuture> = Vec::new();
    let mut paced_acks = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(rate) = rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        let (subject, publish) = message(prefix, e);
        sent.push(stamp());
        let ack = js.send_publish(subject, publish).await.expect("publish");
        if rate.is_some() {
            paced_acks.push(tokio::spawn(ack.into_future()));
        } else {
            acks.push(ack);
            if acks.len() == PUBLISH_BATCH {
                for ack in acks.drain(..) {
                    ack.await.expect("publish acknowledged");
                }
            }
        }
    }
    for ack in acks {
        ack.await.expect("publish acknowledged");
    }
    for ack in paced_acks {
        ack.await.expect("ack task").expect("publish acknowledged");
    }
    (sent, started.elapsed().as_secs_f64())
}

/// One phase: `events` published (at once, or at `rate`) until every one arrived.
struct Phase {
    events: Vec<EventEnvelope>,
    sent: Vec<Stamp>,
    arrived: Vec<Stamp>,
    publish_secs: f64,
}

impl Phase {
    async fn run(
        js: &jetstream::Context,
        prefix: &SubjectPrefix,
        arrivals: &Arrivals,
        events: Vec<EventEnvelope>,
        rate: Option<f64>,
        what: &str,
    ) -> Phase {
        let (sent, publish_secs) = publish(js, prefix, &events, rate).await;
        let arrived = arrivals.all_of(&events, what).await;
        Phase { events, sent, arrived, publish_secs }
    }

    /// Events per second from the first publish until the last arrival.
    fn per_s(&self) -> f64 {
        let first = self.sent.iter().map(|s| s.at).min().expect("events");
        let last = self.arrived.iter().map(|s| s.at).max().expect("events");
        self.events.len() as f64 / (last - first).as_secs_f64()
    }

    fn json(&self) -> serde_json::Value {
        let waits = self.sent.iter().zip(&self.arrived).map(|(s, a)| (a.at - s.at).as_secs_f64()).collect();
        serde_json::json!({
            "events": self.events.len(),
            "per_s": self.per_s().round(),
            "published_per_s": (self.events.len() as f64 / self.publish_secs).round(),
            "publish_to_arrival": latency(waits),
        })
    }

    /// For CIM: publish → the delivery row committed, and the row → the receiver, from the rows'
    /// `created_at` (Postgres' clock, this machine's); and the intake's and sender's own rates.
    async fn stages(&self, pool: &sqlx::PgPool, schema: &str) -> serde_json::Value {
        let ids: Vec<uuid::Uuid> = self.events.iter().map(|e| e.event_id.as_uuid()).collect();
        let sql = format!("SELECT event_id, created_at FROM {schema}.webhook_deliveries WHERE event_id = ANY($1)");
        let rows: Vec<(uuid::Uuid, DateTime<Utc>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&ids).fetch_all(pool).await.expect("delivery rows");
        let created: HashMap<uuid::Uuid, DateTime<Utc>> = rows.into_iter().collect();
        let secs = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1e6;
        let (mut taken, mut sent_on) = (Vec::new(), Vec::new());
        for ((e, s), a) in self.events.iter().zip(&self.sent).zip(&self.arrived) {
            if let Some(c) = created.get(&e.event_id.as_uuid()) {
                taken.push(secs(*c - s.wall));
                sent_on.push(secs(a.wall - *c));
            }
        }
        let first = self.sent.iter().map(|s| s.wall).min().expect("events");
        let intake_done = created.values().max().copied().unwrap_or(first);
        serde_json::json!({
            "publish_to_row_committed": latency(taken),
            "row_committed_to_arrival": latency(sent_on),
            "intake_per_s": (created.len() as f64 / secs(intake_done - first)).round(),
        })
    }
}

/// `cim_webhook_delivery_duration_seconds` sum / count (ms): one HTTP call as the sender times it.
fn mean_call_ms() -> f64 {
    let rendered = cim_runtime::metrics::handle().render();
    let value = |name: &str| {
        rendered
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (sum, count) =
        (value("cim_webhook_delivery_duration_seconds_sum"), value("cim_webhook_delivery_duration_seconds_count"));
    round3(sum / count * 1000.0)
}

/// CPU seconds this process used so far (user + system), from /proc.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main]
async fn main() {
    let n: usize = env("CIM_BENCH_WEBHOOK_EVENTS", "2000").parse().expect("CIM_BENCH_WEBHOOK_EVENTS");
    let aggregates: usize = env("CIM_BENCH_WEBHOOK_AGGREGATES", "500").parse().expect("CIM_BENCH_WEBHOOK_AGGREGATES");
    let secs: f64 = env("CIM_BENCH_SECONDS", "5").parse().expect("CIM_BENCH_SECONDS");
    let load_before = load();
    let (schema, prefix, raw_prefix) = (unique("bench_webhook"), unique("bw"), unique("bwraw"));
    let vars = [
        ("CIM_WEBHOOK_CONCURRENCY", CONCURRENCY.to_string()),
        ("CIM_DATABASE_MAX_CONNECTIONS", env("CIM_BENCH_DB_CONNECTIONS", DB_CONNECTIONS)),
        ("CIM_LOG", "error".to_owned()),
    ];
    let config = config(ServiceKind::Webhook, &prefix, &vars);
    let nats = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: cim_testkit::domain::nats_url(),
        client_name: "bench".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .expect("nats");
    let js = cim_runtime::nats::jetstream(nats);
    let (p, raw_p): (SubjectPrefix, SubjectPrefix) =
        (prefix.parse().expect("prefix"), raw_prefix.parse().expect("prefix"));
    // The graph streams as the graph service creates them: one the intake reads, one for raw.
    let stream = cim_streams::streams::ensure_domain_stream(&js, &p, Domain::Graph, 1).await.expect("graph stream");
    let raw_stream =
        cim_streams::streams::ensure_domain_stream(&js, &raw_p, Domain::Graph, 1).await.expect("raw stream");

    let shutdown = Shutdown::new();
    let options = WebhookOptions { schema: schema.clone(), settings: config.webhook.clone() };
    let prepared = prepare_with(&config, &shutdown, options).await.expect("prepare");
    let running = Running::spawn(prepared, schema.clone(), prefix.clone(), shutdown);
    let (received, raw_received) = (Arc::new(Arrivals::default()), Arc::new(Arrivals::default()));
    let url = receiver(received.clone()).await;
    let raw_task = raw_consumer(&js, &raw_stream, raw_received.clone()).await;

    let tenant = TenantId::new();
    let mut client = WebhookServiceClient::new(running.channel().await);
    let create = pb::CreateSubscriptionRequest {
        subscription_id: AggregateId::new().to_string(),
        name: "bench".into(),
        filter: FILTER.into(),
        url,
        ..Default::default()
    };
    let made = client.create_subscription(req(tenant, create)).await.expect("subscribe").into_inner();
    assert_eq!(made.state, "active", "{made:?}");

    // Warm-up: connections opened, the intake's consumer bound, a batch through each side.
    let warm = events(tenant, CONCURRENCY * 2, CONCURRENCY, 0);
    Phase::run(&js, &raw_p, &raw_received, warm.clone(), None, "raw warm-up").await;
    Phase::run(&js, &p, &received, warm, None, "webhook warm-up").await;

    // (1) Bursts: N events at once; raw first, then CIM (the same events, to its own stream).
    let burst = events(tenant, n, aggregates, 1_000_000);
    let raw_burst = Phase::run(&js, &raw_p, &raw_received, burst.clone(), None, "raw burst").await;
    let cpu = cpu_secs();
    let cim_burst = Phase::run(&js, &p, &received, burst, None, "webhook burst").await;
    let cim_cpu_per_delivery_ms = (cpu_secs() - cpu) / n as f64 * 1000.0;
    let call_ms = mean_call_ms();

    // (2) Paced: open loop at half the CIM burst rate; the raw side at the same rate.
    let rate = match std::env::var("CIM_BENCH_WEBHOOK_RATE") {
        Ok(rate) => rate.parse::<f64>().expect("CIM_BENCH_WEBHOOK_RATE: events per second").max(1.0),
        Err(_) => (cim_burst.per_s() / 2.0).max(1.0),
    };
    let count = ((rate * secs).round() as usize).max(1);
    let paced = events(tenant, count, aggregates, 2_000_000);
    let cim_paced = Phase::run(&js, &p, &received, paced.clone(), Some(rate), "webhook paced").await;
    let raw_paced = Phase::run(&js, &raw_p, &raw_received, paced, Some(rate), "raw paced").await;

    let ratio = round3(cim_burst.per_s() / raw_burst.per_s());
    let (mut cim_burst_json, mut cim_paced_json) = (cim_burst.json(), cim_paced.json());
    cim_burst_json["stages"] = cim_burst.stages(&running.pool, &schema).await;
    cim_paced_json["stages"] = cim_paced.stages(&running.pool, &schema).await;
    let p99 = cim_paced_json["publish_to_arrival"]["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let report = serde_json::json!({
        "bench": "webhook",
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "shared": true,
            "load_before": load_before,
            "load_after": load(),
        },
        "events_per_burst": n,
        "aggregates": aggregates,
        "concurrency": CONCURRENCY,
        "db_connections": env("CIM_BENCH_DB_CONNECTIONS", DB_CONNECTIONS),
        "paced_rate_per_s": rate.round(),
        "raw_jetstream": {
            "burst": raw_burst.json(),
            "paced": raw_paced.json(),
            "duplicates": raw_received.duplicates.load(Ordering::Relaxed),
        },
        "cim": {
            "burst": cim_burst_json,
            "paced": cim_paced_json,
            "duplicates": received.duplicates.load(Ordering::Relaxed),
            "mean_http_call_ms": call_ms,
            "process_cpu_ms_per_delivery": round3(cim_cpu_per_delivery_ms),
        },
        "deliveries_over_raw": ratio,
        "event_to_delivery_p99_ms_paced": p99,
    });

    raw_task.abort();
    running.stop().await;
    let _ = js.delete_stream(&stream).await;
    let _ = js.delete_stream(&raw_stream).await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
