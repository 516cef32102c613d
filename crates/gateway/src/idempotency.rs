//! `Idempotency-Key` on POST/PUT/PATCH/DELETE: the first response is kept in Redis for a day and
//! replayed to retries of the same request; the same key on a different request is refused.
//! The key also travels to the domain service as the command's idempotency key, so a retry is
//! applied once even while Redis is down.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cim_auth::Principal;
use cim_core::ErrorCode;
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;

pub const HEADER: &str = "idempotency-key";
const KEEP_SECS: u64 = 24 * 3600;

/// Where replies are kept, and which requests are fingerprinted.
#[derive(Debug, Clone)]
pub struct IdempotencyState {
    pub redis: cim_runtime::redis::Pool,
    /// The most a fingerprinted body may hold (the gateway's body limit).
    pub max_body_bytes: usize,
    /// Routes whose bodies are streams of any size: not held in memory to fingerprint them;
    /// the key still reaches the service, where a retried upload of the same content changes
    /// nothing.
    pub streamed: &'static [&'static str],
}

#[derive(Serialize, Deserialize)]
enum Slot {
    Pending { fingerprint: String },
    Done { fingerprint: String, status: u16, content_type: String, body: String },
}

pub async fn middleware(State(state): State<IdempotencyState>, req: Request, next: Next) -> Response {
    let key = match req.headers().get(HEADER).map(|v| v.to_str().map(str::to_owned)) {
        None => return next.run(req).await,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 200 => k,
        Some(_) => return ApiError::invalid("Idempotency-Key", "1 to 200 visible ASCII characters").into_response(),
    };
    if !matches!(*req.method(), http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::DELETE) {
        return next.run(req).await;
    }
    let route = req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned());
    if route.is_some_and(|r| state.streamed.contains(&r.as_str())) {
        return next.run(req).await;
    }
    let Some(p) = req.extensions().get::<Principal>().cloned() else { return next.run(req).await };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(ErrorCode::PayloadTooLarge, "request body too large").into_response(),
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(parts.uri.to_string().as_bytes());
    hasher.update(&bytes);
    let fingerprint = hasher.finalize().to_hex().to_string();
    let slot_key = format!("cim:gw:idem:{}:{}:{key}", p.tenant, p.subject);
    let req = Request::from_parts(parts, Body::from(bytes));

    let Ok(mut conn) = state.redis.get().await else {
        // Without Redis the domain's own idempotency key still makes the command apply once.
        return next.run(req).await;
    };
    let pending = serde_json::to_string(&Slot::Pending { fingerprint: fingerprint.clone() }).unwrap_or_default();
    let claimed: Result<bool, _> = deadpool_redis::redis::cmd("SET")
        .arg(&slot_key)
        .arg(&pending)
        .arg("NX")
        .arg("EX")
        .arg(60)
        .query_async::<Option<String>>(&mut conn)
        .await
        .map(|r| r.is_some());
    match claimed {
        Ok(true) => {}
        Ok(false) => {
            let existing: Option<String> = conn.get(&slot_key).await.ok().flatten();
            return match existing.and_then(|e| serde_json::from_str::<Slot>(&e).ok()) {
                Some(Slot::Done { fingerprint: f, status, content_type, body }) if f == fingerprint => {
                    let mut res = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
                    if let Ok(ct) = HeaderValue::from_str(&content_type) {
                        res.headers_mut().insert(http::header::CONTENT_TYPE, ct);
                    }
                    res.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
                    res
                }
                Some(Slot::Pending { fingerprint: f }) if f == fingerprint => {
                    ApiError::new(ErrorCode::Conflict, "a request with this Idempotency-Key is still running")
                        .into_response()
                }
                _ => ApiError::new(
                    ErrorCode::FailedPrecondition,
                    "this Idempotency-Key was used for a different request",
                )
                .into_response(),
            };
        }
        Err(_) => return next.run(req).await,
    }
    let res = next.run(req).await;
    if res.status().is_server_error() {
        let _: Result<(), _> = conn.del(&slot_key).await;
        return res;
    }
    let (parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let content_type =
        parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let done = Slot::Done { fingerprint, status: parts.status.as_u16(), content_type, body: text.clone() };
    let _: Result<(), _> = conn.set_ex(&slot_key, serde_json::to_string(&done).unwrap_or_default(), KEEP_SECS).await;
    Response::from_parts(parts, Body::from(text))
}
