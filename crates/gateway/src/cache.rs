//! Cached GETs in Redis, invalidated by the domain's events.
//!
//! Each graph has one Redis hash: a `gen` counter and the cached responses of its GET routes,
//! each tagged with the `gen` it was computed under. An event for the graph (consumed from
//! JetStream by one durable consumer shared by all gateway instances) bumps `gen`; a response
//! computed before the bump is never served after it, even if it was written late: the write
//! only lands when `gen` is still what the reader saw (a Lua check-and-set).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cim_auth::Principal;
use cim_core::{Domain, SubjectPrefix};
use serde::{Deserialize, Serialize};

pub const CACHE_REQUESTS_TOTAL: &str = "cim_gateway_cache_requests_total";
pub const CACHE_INVALIDATIONS_TOTAL: &str = "cim_gateway_cache_invalidations_total";

pub fn describe() {
    metrics::describe_counter!(CACHE_REQUESTS_TOTAL, "Cacheable GETs, by result (hit, miss, unavailable)");
    metrics::describe_counter!(CACHE_INVALIDATIONS_TOTAL, "Graphs whose cached responses were invalidated");
}

/// First level, in this instance's memory: validated by per-graph generations that this
/// instance bumps itself, from its own ordered subscription to the events and its own writes.
/// Filled only with responses computed here (never from Redis, which may lag this instance's
/// subscription), so a hit needs no Redis round trip and is never older than an event this
/// instance has seen.
#[derive(Debug, Default)]
pub struct Local {
    inner: std::sync::Mutex<LocalInner>,
    live: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct LocalInner {
    gens: std::collections::HashMap<String, u64>,
    entries: std::collections::HashMap<(String, String), (u64, bytes::Bytes)>,
}

const LOCAL_ENTRIES: usize = 10_000;
const LOCAL_GRAPHS: usize = 100_000;

impl Local {
    fn lock(&self) -> std::sync::MutexGuard<'_, LocalInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generation(&self, graph: &str) -> u64 {
        self.lock().gens.get(graph).copied().unwrap_or(0)
    }

    fn get(&self, graph: &str, field: &str) -> Option<bytes::Bytes> {
        let inner = self.lock();
        let current = inner.gens.get(graph).copied().unwrap_or(0);
        let (generation, body) = inner.entries.get(&(graph.to_owned(), field.to_owned()))?;
        (*generation == current).then(|| body.clone())
    }

    fn put(&self, graph: &str, field: &str, generation: u64, body: bytes::Bytes) {
        let mut inner = self.lock();
        if inner.gens.get(graph).copied().unwrap_or(0) != generation {
            return;
        }
        if inner.entries.len() >= LOCAL_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert((graph.to_owned(), field.to_owned()), (generation, body));
    }

    /// Makes this instance's cached responses of `graph` stale.
    pub fn bump(&self, graph: &str) {
        let mut inner = self.lock();
        if inner.gens.len() >= LOCAL_GRAPHS {
            // Forgetting generations would revive old entries: forget those too.
            inner.gens.clear();
            inner.entries.clear();
        }
        *inner.gens.entry(graph.to_owned()).or_default() += 1;
    }

    fn reset(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
    }
}

fn entry(graph: &str) -> String {
    format!("cim:gw:cache:{graph}")
}

#[derive(Serialize, Deserialize)]
struct Cached {
    g: i64,
    b: String,
}

const STORE_IF_CURRENT: &str = r"
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return gen";

type Bump = (String, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Generation bumps sent to Redis in batches: bumps asked for while a batch is in flight go
/// together in the next pipeline, one round trip for all (every write through the gateway and
/// every event the shared consumer sees asks for one). Each caller still waits until its bump
/// is in Redis, so a response computed before it is never served after.
#[derive(Debug, Clone)]
pub struct Bumps {
    queue: tokio::sync::mpsc::Sender<Bump>,
}

/// At most this many graphs per pipeline.
const MAX_BUMPS: usize = 256;

impl Bumps {
    /// Starts the sender; it ends when the last handle is dropped.
    pub fn start(redis: deadpool_redis::Pool, ttl: Duration) -> Self {
        let (queue, rx) = tokio::sync::mpsc::channel(MAX_BUMPS * 4);
        tokio::spawn(send_bumps(redis, ttl, rx));
        Self { queue }
    }

    pub async fn bump(&self, graph: &str) -> Result<(), String> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.queue.send((graph.to_owned(), reply)).await.map_err(|_| "cache bumps stopped".to_owned())?;
        done.await.map_err(|_| "cache bumps stopped".to_owned())?
    }
}

async fn send_bumps(redis: deadpool_redis::Pool, ttl: Duration, mut rx: tokio::sync::mpsc::Receiver<Bump>) {
    let ttl = ttl.as_secs().max(1) as i64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BUMPS {
            let Ok(next) = rx.try_recv() else { break };
            batch.push(next);
        }
        let graphs: std::collections::BTreeSet<&str> = batch.iter().map(|(g, _)| g.as_str()).collect();
        let mut pipe = deadpool_redis::redis::pipe();
        for graph in &graphs {
            let key = entry(graph);
            pipe.hincr(&key, "gen", 1).ignore().expire(&key, ttl).ignore();
        }
        let sent: Result<(), String> = async {
            let mut conn = redis.get().await.map_err(|e| e.to_string())?;
            pipe.query_async(&mut conn).await.map_err(|e| e.to_string())
        }
        .await;
        if sent.is_ok() {
            metrics::counter!(CACHE_INVALIDATIONS_TOTAL).increment(graphs.len() as u64);
        }
        for (_, reply) in batch {
            let _ = reply.send(sent.clone());
        }
    }
}

/// The graph id of a cacheable GET: `/api/v1/graphs/{id}` and everything below it.
fn cacheable(req: &Request) -> Option<String> {
    if req.method() != http::Method::GET {
        return None;
    }
    let rest = req.uri().path().strip_prefix("/api/v1/graphs/")?;
    let graph = rest.split('/').next()?;
    uuid::Uuid::parse_str(graph).ok().map(|_| graph.to_owned())
}

fn json_response(body: String, hit: bool) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert("x-cache", HeaderValue::from_static(if hit { "hit" } else { "miss" }));
    res
}

/// What the cache middleware reads and fills.
#[derive(Debug)]
pub struct CacheState {
    pub redis: deadpool_redis::Pool,
    /// Zero: no caching.
    pub ttl: Duration,
    pub local: Arc<Local>,
    /// Whether the event consumer that invalidates the cache is running; without it the cache
    /// could serve a stale read, so it is bypassed.
    pub invalidator_live: Arc<AtomicBool>,
}

pub async fn middleware(State(state): State<Arc<CacheState>>, req: Request, next: Next) -> Response {
    let ttl = state.ttl;
    let (Some(graph), false) = (cacheable(&req), ttl.is_zero()) else { return next.run(req).await };
    if !state.invalidator_live.load(Ordering::Acquire) {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "unavailable").increment(1);
        return next.run(req).await;
    }
    let Some(tenant) = req.extensions().get::<Principal>().map(|p| p.tenant) else { return next.run(req).await };
    let key = entry(&graph);
    let field = format!("{tenant}|{}", req.uri());
    let local_live = state.local.live.load(Ordering::Acquire);
    let local_gen = state.local.generation(&graph);
    if local_live && let Some(body) = state.local.get(&graph, &field) {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "hit").increment(1);
        return json_response(String::from_utf8_lossy(&body).into_owned(), true);
    }
    let looked: Result<(Option<i64>, Option<String>), String> = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("HMGET")
            .arg(&key)
            .arg("gen")
            .arg(&field)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let Ok((gen_seen, cached)) = looked else {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "unavailable").increment(1);
        return next.run(req).await;
    };
    let gen_seen = gen_seen.unwrap_or(0);
    if let Some(c) = cached.and_then(|c| serde_json::from_str::<Cached>(&c).ok()).filter(|c| c.g == gen_seen) {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "hit").increment(1);
        return json_response(c.b, true);
    }
    metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "miss").increment(1);
    let res = next.run(req).await;
    if res.status() != StatusCode::OK {
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if local_live {
        state.local.put(&graph, &field, local_gen, bytes.clone());
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let store = serde_json::to_string(&Cached { g: gen_seen, b: text.clone() }).unwrap_or_default();
    if let Ok(mut conn) = state.redis.get().await {
        let _: Result<i64, _> = deadpool_redis::redis::cmd("EVAL")
            .arg(STORE_IF_CURRENT)
            .arg(1)
            .arg(&key)
            .arg(gen_seen)
            .arg(&field)
            .arg(store)
            .arg(ttl.as_secs())
            .query_async(&mut conn)
            .await;
    }
    let mut res = Response::from_parts(parts, Body::from(text));
    res.headers_mut().insert("x-cache", HeaderValue::from_static("miss"));
    res
}

/// What the shared invalidator works with: the graph events' subjects, the generations it bumps,
/// and the flag telling the middleware it runs.
#[derive(Debug)]
pub struct Invalidator {
    pub prefix: SubjectPrefix,
    pub bumps: Bumps,
    pub live: Arc<AtomicBool>,
}

/// Consumes the graph domain's events and invalidates the cache of each graph they touch. One
/// durable consumer for all gateway instances: the cache is shared, so one invalidation is enough.
pub async fn invalidator(state: Invalidator, js: async_nats::jetstream::Context, stop: cim_runtime::Shutdown) {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let prefix = &state.prefix;
    let durable = "gateway-cache".to_owned();
    let metrics = cim_streams::ConsumerMetrics::new(&durable);
    let consumer = cim_streams::PullLoop {
        name: durable.clone(),
        stream: prefix.stream_name(Domain::Graph),
        binding: cim_streams::Binding::Durable(pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: prefix.domain_events(Domain::Graph),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(10),
            ..Default::default()
        }),
        // Several events at once, so that their bumps share a Redis round trip (bumps commute;
        // each message is acked after its own).
        concurrency: MAX_BUMPS,
        metrics: Some(metrics.clone()),
    };
    // Until the consumer is back after a loss, changes made elsewhere would go unnoticed.
    let live = |bound: bool| state.live.store(bound, Ordering::Release);
    consumer
        .run(&js, &stop, live, |msg| async {
            handle(&state, &js, &durable, &metrics, msg).await;
            Ok(())
        })
        .await;
}

/// The graph an event touches: the aggregate-id header the relay sets, else the envelope's own
/// `aggregate_id` (a message published by other means).
fn touched_graph(msg: &async_nats::jetstream::Message) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Aggregate {
        aggregate_id: cim_core::AggregateId,
    }
    let header = msg.headers.as_ref().and_then(|h| h.get(cim_core::subject::headers::AGGREGATE_ID));
    match header.map(|v| v.as_str().parse::<cim_core::AggregateId>()) {
        Some(Ok(id)) => Some(id.to_string()),
        _ => serde_json::from_slice::<Aggregate>(&msg.payload).ok().map(|a| a.aggregate_id.to_string()),
    }
}

async fn handle(
    state: &Invalidator,
    js: &async_nats::jetstream::Context,
    consumer: &str,
    metrics: &cim_streams::ConsumerMetrics,
    msg: async_nats::jetstream::Message,
) {
    use async_nats::jetstream::AckKind;
    let Some(graph) = touched_graph(&msg) else {
        // No graph to invalidate, now or on any redelivery: kept in the dead-letter stream for
        // an operator instead of silently leaving some graph's cache stale.
        let reason = "gateway-cache: no readable aggregate id in the headers or the payload";
        match cim_streams::publish_dead_letter(js, &state.prefix, consumer, &msg, reason).await {
            Ok(()) => {
                tracing::error!(subject = %msg.subject, "{reason}; sent to the dead-letter stream");
                let _ = msg.ack_with(AckKind::Term).await;
                metrics.dead_letters.increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter publish failed; will be redelivered");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                metrics.retried.increment(1);
            }
        }
        return;
    };
    match state.bumps.bump(&graph).await {
        Ok(()) => {
            let _ = msg.ack().await;
            metrics.applied.increment(1);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cache invalidation failed; will be redelivered");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            metrics.retried.increment(1);
        }
    }
}

/// This instance's own ordered subscription to the graph events, for the first-level cache.
pub async fn local_invalidator(
    local: Arc<Local>,
    prefix: SubjectPrefix,
    js: async_nats::jetstream::Context,
    stop: cim_runtime::Shutdown,
) {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let consumer = cim_streams::PullLoop {
        name: "gateway-local-cache".into(),
        stream: prefix.stream_name(Domain::Graph),
        binding: cim_streams::Binding::Ordered(pull::OrderedConfig {
            filter_subject: prefix.domain_events(Domain::Graph),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        }),
        concurrency: 1,
        metrics: None,
    };
    let live = |bound: bool| {
        if bound {
            // Events may have been missed while the subscription was down.
            local.reset();
        }
        local.live.store(bound, Ordering::Release);
    };
    consumer
        .run(&js, &stop, live, |msg| {
            if let Some(g) = msg.headers.as_ref().and_then(|h| h.get(cim_core::subject::headers::AGGREGATE_ID)) {
                local.bump(g.as_str());
            }
            std::future::ready(Ok(()))
        })
        .await;
}
