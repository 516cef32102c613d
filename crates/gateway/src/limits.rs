//! Request limits and accounting: per-principal rate limits (Redis), the request deadline,
//! JSON bodies with field paths in errors, and RED metrics per route.

use std::time::Instant;

use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cim_auth::Principal;
use cim_core::ErrorCode;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::app::AppState;
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

/// Fixed one-minute windows per principal: one pipelined INCR + EXPIRE per request.
pub async fn rate_limit(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    let limit = state.settings.rate_limit_per_minute;
    if limit == 0 {
        return Ok(());
    }
    let now = cim_auth::now_secs();
    let window = now / 60;
    let key = format!("cim:gw:rl:{}:{}:{window}", p.tenant, p.subject);
    let counted: Result<(u64,), String> = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::pipe()
            .incr(&key, 1u64)
            .expire(&key, 61)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match counted {
        Ok((n,)) if n > limit => {
            metrics::counter!(RATE_LIMITED_TOTAL).increment(1);
            let mut e = ApiError::new(ErrorCode::RateLimited, format!("more than {limit} requests this minute"));
            e.retry_after = Some(60 - now % 60);
            Err(e)
        }
        Ok(_) => Ok(()),
        Err(e) if state.settings.rate_limit_fail_open => {
            tracing::debug!(error = %e, "rate limit not counted: redis unavailable (failing open)");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "rate limit not counted: redis unavailable (failing closed)");
            let mut err = ApiError::new(ErrorCode::Unavailable, "rate limiter unavailable; retry later");
            err.retry_after = Some(1);
            Err(err)
        }
    }
}

/// The request deadline (504 after) and RED metrics labelled by the route's template.
pub async fn deadline_and_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    // The request's span continues the caller's trace; outgoing gRPC calls inject it.
    let span = tracing::info_span!("http", %method, %route, otel.kind = "server");
    cim_runtime::telemetry::continue_http(&span, req.headers());
    let handled = tokio::time::timeout(state.settings.request_timeout, next.run(req)).instrument(span);
    let res = match handled.await {
        Ok(res) => res,
        Err(_) => ApiError::new(ErrorCode::DeadlineExceeded, "the request took too long").into_response(),
    };
    let status = res.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    res
}

/// A JSON body: 413 past the size limit, 400 naming the offending field's path.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !is_json {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "expected Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
            } else {
                ApiError::new(ErrorCode::InvalidArgument, format!("unreadable body: {e}"))
            }
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(ApiJson).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::invalid(field, e.inner().to_string())
        })
    }
}

/// Query parameters whose parse errors are problem+json (axum's own answer is plain text).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("query: {}", e.body_text())))
    }
}

/// Path parameters whose parse errors are problem+json.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("path: {}", e.body_text())))
    }
}
