//! Request limits and accounting: per-principal rate limits (Redis), the request deadline,
//! JSON bodies with field paths in errors, and RED metrics per route.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cim_auth::Principal;
use cim_core::ErrorCode;
use tracing::Instrument;

use crate::problem::ApiError;

pub const HTTP_REQUESTS_TOTAL: &str = "cim_gateway_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "cim_gateway_http_request_duration_seconds";
pub const RATE_LIMITED_TOTAL: &str = "cim_gateway_rate_limited_total";

pub fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests, by route, method and status");
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request duration, by route, method and status"
    );
    metrics::describe_counter!(RATE_LIMITED_TOTAL, "Requests refused with 429");
}

/// Per-principal request counts in fixed one-minute windows, shared by all gateway instances
/// through Redis. Requests are counted in memory and flushed to Redis every
/// [`FLUSH_EVERY`] with one pipelined INCRBY per principal; a decision uses the last global
/// count Redis returned plus what this instance has not flushed yet. So a request costs no
/// Redis round trip, and several instances can overshoot the limit by at most what they serve
/// in one flush interval.
#[derive(Debug, Default)]
pub struct RateLimiter {
    counts: std::sync::Mutex<std::collections::HashMap<String, Window>>,
    /// Whether the last flush (or ping) reached Redis; decides fail-open or fail-closed.
    redis_ok: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    minute: u64,
    /// This instance's requests not yet added in Redis.
    pending: u64,
    /// The window's total in Redis at the last flush (all instances).
    global: u64,
}

pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

fn window_key(principal: &str, minute: u64) -> String {
    format!("cim:gw:rl:{principal}:{minute}")
}

impl RateLimiter {
    fn count(&self, principal: String, minute: u64) -> u64 {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let w = counts.entry(principal).or_default();
        if w.minute != minute {
            *w = Window { minute, ..Window::default() };
        }
        w.pending += 1;
        w.global + w.pending
    }

    /// Adds the pending counts to Redis and learns the global totals.
    pub async fn flush(&self, redis: &cim_runtime::redis::Pool) {
        let batch: Vec<(String, Window)> = {
            let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = cim_auth::now_secs() / 60;
            // Windows that ended are forgotten; Redis expires its copies.
            counts.retain(|_, w| w.minute + 1 >= now);
            counts.iter_mut().filter(|(_, w)| w.pending > 0).map(|(k, w)| (k.clone(), *w)).collect()
        };
        let result: Result<Vec<u64>, String> = async {
            let mut conn = redis.get().await.map_err(|e| e.to_string())?;
            if batch.is_empty() {
                return deadpool_redis::redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| vec![])
                    .map_err(|e| e.to_string());
            }
            let mut pipe = deadpool_redis::redis::pipe();
            for (principal, w) in &batch {
                let key = window_key(principal, w.minute);
                pipe.incr(&key, w.pending).expire(&key, 61).ignore();
            }
            pipe.query_async(&mut conn).await.map_err(|e| e.to_string())
        }
        .await;
        let ok = result.is_ok();
        self.redis_ok.store(ok, std::sync::atomic::Ordering::Release);
        match result {
            Ok(totals) => {
                let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for ((principal, sent), total) in batch.iter().zip(totals) {
                    if let Some(w) = counts.get_mut(principal).filter(|w| w.minute == sent.minute) {
                        w.pending -= sent.pending.min(w.pending);
                        w.global = total;
                    }
                }
            }
            // Unflushed counts stay pending and go with the next flush.
            Err(e) => tracing::debug!(error = %e, "rate-limit counts not flushed: redis unavailable"),
        }
    }

    /// Flushes until `stop`.
    pub async fn run(self: std::sync::Arc<Self>, redis: cim_runtime::redis::Pool, stop: cim_runtime::Shutdown) {
        loop {
            self.flush(&redis).await;
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => {}
                () = stop.wait() => return,
            }
        }
    }
}

/// The rate limit as configured, over this instance's counts.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub limiter: Arc<RateLimiter>,
    /// Requests per principal per minute; 0: no limit.
    pub per_minute: u64,
    /// Tenants whose principals have their own limit instead (`CIM_GATEWAY_RATE_LIMIT_TENANTS`).
    pub per_tenant: Arc<std::collections::HashMap<cim_core::TenantId, u64>>,
    /// Whether requests pass uncounted while Redis is unreachable.
    pub fail_open: bool,
}

/// Refuses a principal past its per-minute limit (429 + Retry-After).
pub async fn rate_limit(rate: &RateLimit, p: &Principal) -> Result<(), ApiError> {
    let limit = rate.per_tenant.get(&p.tenant).copied().unwrap_or(rate.per_minute);
    if limit == 0 {
        return Ok(());
    }
    let limiter = &rate.limiter;
    if !limiter.redis_ok.load(std::sync::atomic::Ordering::Acquire) && !rate.fail_open {
        tracing::warn!("rate limit not counted: redis unavailable (failing closed)");
        let mut err = ApiError::new(ErrorCode::Unavailable, "rate limiter unavailable; retry later");
        err.retry_after = Some(1);
        return Err(err);
    }
    let now = cim_auth::now_secs();
    let n = limiter.count(format!("{}:{}", p.tenant, p.subject), now / 60);
    if n > limit {
        metrics::counter!(RATE_LIMITED_TOTAL).increment(1);
        let mut e = ApiError::new(ErrorCode::RateLimited, format!("more than {limit} requests this minute"));
        e.retry_after = Some(60 - now % 60);
        return Err(e);
    }
    Ok(())
}

/// How long a request may take, and the routes no deadline applies to.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub timeout: Duration,
    /// Routes whose bodies take as long as their bytes take (the connection's own timeouts and
    /// the client still bound them).
    pub unbounded: &'static [&'static str],
}

/// The request deadline (504 after) and RED metrics labelled by the route's template.
pub async fn deadline_and_metrics(State(deadline): State<Deadline>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    // The request's span continues the caller's trace; outgoing gRPC calls inject it.
    let span = tracing::info_span!(
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
    );
    cim_runtime::telemetry::continue_http(&span, req.headers());
    let res = if deadline.unbounded.contains(&route.as_str()) {
        next.run(req).instrument(span).await
    } else {
        let handled = tokio::time::timeout(deadline.timeout, next.run(req)).instrument(span);
        match handled.await {
            Ok(res) => res,
            Err(_) => ApiError::new(ErrorCode::DeadlineExceeded, "the request took too long").into_response(),
        }
    };
    let status = res.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    res
}
