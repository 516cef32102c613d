//! Cached GETs, invalidated by the domains' events: one table ([`CACHED`]) says which routes
//! are cached and whose events make them stale, so adding a domain is one row.
//!
//! A cached route's responses belong to its aggregate (the id after the table's prefix: ids are
//! UUIDs, unique across domains). Two levels: this instance's memory ([`local`]), then Redis
//! ([`shared`]): per aggregate, a generation and the responses computed under it. An event of
//! the aggregate's domain (from the domain's consumers, [`invalidate`]) bumps the generation, and
//! so does a successful write through this gateway before its response leaves (read-your-writes,
//! with no code in the domain's routes). A response computed before a bump is never served after
//! it, even if it was written late: the write only lands when the generation is still what the
//! reader saw. A domain whose consumer is not running is not cached until it is again; the
//! others are. After Redis was unreachable nothing is served until every entry was bumped
//! ([`outage`]): a write's bump may have been lost meanwhile.

mod invalidate;
mod local;
mod outage;
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cim_auth::{Principal, Role};
use cim_core::Domain;

pub use invalidate::{DURABLE, Invalidator, invalidator, local_invalidator};
pub use local::Local;
pub use outage::Outages;
pub use shared::Bumps;
use shared::{Cached, STORE_IF_CURRENT, entry, fresh_generation};

pub const CACHE_REQUESTS_TOTAL: &str = "cim_gateway_cache_requests_total";
pub const CACHE_INVALIDATIONS_TOTAL: &str = "cim_gateway_cache_invalidations_total";

pub fn describe() {
    metrics::describe_counter!(CACHE_REQUESTS_TOTAL, "Cacheable GETs, by result (hit, miss, unavailable)");
    metrics::describe_counter!(
        CACHE_INVALIDATIONS_TOTAL,
        "Aggregates (graphs, documents, agents, tasks, workflows) whose cached responses were invalidated"
    );
}

/// What is cached: GETs of a path below each prefix (the aggregate's id, then anything below
/// it), made stale by the events of the domain beside it.
pub const CACHED: &[(&str, Domain)] = &[
    ("/api/v1/graphs/", Domain::Graph),
    ("/api/v1/documents/", Domain::Document),
    ("/api/v1/agents/", Domain::Agent),
    ("/api/v1/tasks/", Domain::Agent),
    ("/api/v1/workflow-definitions/", Domain::Workflow),
    ("/api/v1/workflows/", Domain::Workflow),
];

/// The domains [`CACHED`] names, each once.
pub fn cached_domains() -> Vec<Domain> {
    let mut domains: Vec<Domain> = Vec::new();
    for (_, d) in CACHED {
        if !domains.contains(d) {
            domains.push(*d);
        }
    }
    domains
}

/// An aggregate id as events name it (a hyphenated lower-case UUID), so that `/graphs/ABC…`
/// and the events of `abc…` share one cache entry.
fn canonical_id(s: &str) -> Option<String> {
    (s.len() == 36).then(|| uuid::Uuid::try_parse(s).ok()).flatten().map(|u| u.to_string())
}

/// The cached domain and aggregate of a path.
fn aggregate_of(path: &str) -> Option<(Domain, String)> {
    CACHED.iter().find_map(|(prefix, domain)| {
        let id = path.strip_prefix(prefix)?.split('/').next()?;
        canonical_id(id).map(|id| (*domain, id))
    })
}

/// One cached domain: its first level and whether its shared invalidator runs.
#[derive(Debug)]
pub struct DomainCache {
    pub domain: Domain,
    pub local: Local,
    /// Whether the domain's shared invalidator is bound; without it a change made elsewhere
    /// would go unnoticed and the cache could serve a stale read, so it is bypassed.
    shared_live: AtomicBool,
}

impl DomainCache {
    pub fn new(domain: Domain) -> Self {
        Self { domain, local: Local::default(), shared_live: AtomicBool::new(false) }
    }

    fn set_shared_live(&self, bound: bool) {
        self.shared_live.store(bound, Ordering::Release);
    }
}

/// What the cache middleware reads and fills.
#[derive(Debug)]
pub struct CacheState {
    pub redis: cim_runtime::redis::Pool,
    /// Zero: no caching.
    pub ttl: Duration,
    pub bumps: Bumps,
    /// One per domain of [`cached_domains`].
    pub domains: Vec<Arc<DomainCache>>,
    /// Routes whose bodies are streams of any size (bytes, `Range`): never held in memory to be
    /// cached.
    pub streamed: &'static [&'static str],
    /// The role each route needs: a route the reader role may call changes nothing (a query
    /// with a body, such as a traverse), so its success bumps nothing.
    pub roles: crate::authz::Rules,
    /// Whether Redis was away since every entry was last bumped: then nothing cached is served.
    pub outages: Arc<Outages>,
}

pub async fn middleware(State(state): State<Arc<CacheState>>, req: Request, next: Next) -> Response {
    let Some((domain, aggregate)) = aggregate_of(req.uri().path()) else { return next.run(req).await };
    let Some(cache) = state.domains.iter().find(|c| c.domain == domain).cloned() else {
        return next.run(req).await;
    };
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    if !req.method().is_safe() {
        return write(&state, &cache, &aggregate, route.as_deref(), req, next).await;
    }
    let streamed = route.is_some_and(|r| state.streamed.contains(&r.as_str()));
    if req.method() != Method::GET || state.ttl.is_zero() || streamed {
        return next.run(req).await;
    }
    read(&state, &cache, &aggregate, req, next).await
}

/// A write: once it succeeded, its aggregate's cached reads are dropped (here, and in Redis for
/// every instance) before the response leaves, so its caller reads what it wrote even before
/// the event arrives. Whatever the TTL: another instance may cache.
async fn write(
    state: &CacheState,
    cache: &DomainCache,
    aggregate: &str,
    route: Option<&str>,
    req: Request,
    next: Next,
) -> Response {
    let reads = route.is_some_and(|r| matches!(state.roles.rule(req.method(), r), Ok(Some(Some(Role::Reader)))));
    let res = next.run(req).await;
    if res.status().is_success() && !reads {
        cache.local.bump(aggregate);
        if let Err(e) = state.bumps.bump(aggregate).await {
            tracing::debug!(error = %e, "cache not invalidated (redis unavailable)");
            state.outages.bump_lost(&state.redis, &state.bumps);
        }
    }
    res
}

fn json_response(body: String, hit: bool) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert("x-cache", HeaderValue::from_static(if hit { "hit" } else { "miss" }));
    res
}

/// Only JSON is kept: a hit answers `application/json`.
fn is_json(res: &Response) -> bool {
    let content_type = res.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A cacheable GET: from this instance's memory, else from Redis, else computed and kept in both.
async fn read(state: &CacheState, cache: &DomainCache, aggregate: &str, req: Request, next: Next) -> Response {
    if !cache.shared_live.load(Ordering::Acquire) || !state.outages.trusted(&state.redis, &state.bumps) {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "unavailable").increment(1);
        return next.run(req).await;
    }
    let Some(tenant) = req.extensions().get::<Principal>().map(|p| p.tenant) else { return next.run(req).await };
    let key = entry(aggregate);
    let field = format!("{tenant}|{}", req.uri());
    let local_live = cache.local.is_live();
    let local_gen = cache.local.generation(aggregate);
    let local_hit = local_live.then(|| cache.local.get(aggregate, &field)).flatten();
    // One round trip either way: the shared generation alone when this instance holds the body
    // (another gateway's acknowledged write may have bumped it before this one saw the event),
    // else the generation and Redis's copy.
    let looked: Result<Vec<Option<String>>, String> = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        let mut lookup = deadpool_redis::redis::cmd("HMGET");
        lookup.arg(&key).arg("gen");
        if local_hit.is_none() {
            lookup.arg(&field);
        }
        lookup.query_async(&mut conn).await.map_err(|e| e.to_string())
    }
    .await;
    let Ok(mut looked) = looked else {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "unavailable").increment(1);
        return next.run(req).await;
    };
    let cached = looked.get_mut(1).and_then(Option::take);
    // No generation: nothing may be served from memory or Redis (an entry kept before Redis lost
    // its data could otherwise match a count that started again).
    let gen_seen = looked.first().cloned().flatten().and_then(|g| g.parse::<i64>().ok());
    if let Some((_, body)) = local_hit.filter(|(shared, _)| Some(*shared) == gen_seen) {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "hit").increment(1);
        return json_response(String::from_utf8_lossy(&body).into_owned(), true);
    }
    if let Some(c) = cached.and_then(|c| serde_json::from_str::<Cached>(&c).ok()).filter(|c| Some(c.g) == gen_seen) {
        metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "hit").increment(1);
        return json_response(c.b, true);
    }
    metrics::counter!(CACHE_REQUESTS_TOTAL, "result" => "miss").increment(1);
    let res = next.run(req).await;
    if res.status() != StatusCode::OK || !is_json(&res) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let kept_under = gen_seen.unwrap_or_else(fresh_generation);
    let store = serde_json::to_string(&Cached { g: kept_under, b: text.clone() }).unwrap_or_default();
    let kept = match state.redis.get().await {
        Ok(mut conn) => deadpool_redis::redis::cmd("EVAL")
            .arg(STORE_IF_CURRENT)
            .arg(1)
            .arg(&key)
            .arg(gen_seen.map(|g| g.to_string()).unwrap_or_default())
            .arg(&field)
            .arg(store)
            .arg(state.ttl.as_secs())
            .arg(kept_under)
            .query_async::<i64>(&mut conn)
            .await
            .is_ok_and(|kept| kept == 1),
        Err(_) => false,
    };
    // In memory only under a generation Redis holds: a hit is checked against it.
    if kept && local_live {
        cache.local.put(aggregate, &field, local_gen, kept_under, bytes);
    }
    let mut res = Response::from_parts(parts, Body::from(text));
    res.headers_mut().insert("x-cache", HeaderValue::from_static("miss"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keys_each_cached_path_by_its_aggregate() {
        let id = "0190f5b2-7c1e-7a3b-8f00-0123456789ab";
        for (path, domain) in [
            (format!("/api/v1/graphs/{id}"), Domain::Graph),
            (format!("/api/v1/graphs/{id}/nodes/a"), Domain::Graph),
            (format!("/api/v1/documents/{id}/versions"), Domain::Document),
            (format!("/api/v1/agents/{id}"), Domain::Agent),
            (format!("/api/v1/tasks/{id}"), Domain::Agent),
            (format!("/api/v1/tasks/{}", id.to_uppercase()), Domain::Agent),
            (format!("/api/v1/workflows/{id}/history"), Domain::Workflow),
            (format!("/api/v1/workflow-definitions/{id}"), Domain::Workflow),
        ] {
            assert_eq!(aggregate_of(&path), Some((domain, id.to_owned())), "{path}");
        }
        for path in ["/api/v1/graphs", "/api/v1/tasks/route", "/api/v1/graphs/nope", "/api/v1/auth/me"] {
            assert_eq!(aggregate_of(path), None, "{path}");
        }
        assert_eq!(aggregate_of(&format!("/api/v1/graphs/{}", id.replace('-', ""))), None, "one spelling per id");
        assert_eq!(cached_domains(), [Domain::Graph, Domain::Document, Domain::Agent, Domain::Workflow]);
    }
}
