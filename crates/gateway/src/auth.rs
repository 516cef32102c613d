//! Who is calling, from a bearer token, an API key or a console session (roles: [`crate::authz`]).
//!
//! API keys and sessions live in Redis (keys stored as BLAKE3 hashes, never in clear). Without
//! Redis, bearer tokens keep working; keys and sessions answer 503 until it is back.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use cim_auth::{Method, Principal, Verifier};
use cim_core::ErrorCode;
use deadpool_redis::redis::AsyncCommands;

use crate::limits::RateLimit;
use crate::problem::{ApiError, ApiResult};

pub const SESSION_COOKIE: &str = "cim_session";

/// Where API keys and console sessions are kept.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub redis: deadpool_redis::Pool,
    pub session_ttl: Duration,
}

/// What the auth middleware needs: the token keys, the stored credentials, and the rate limit
/// it applies once the caller is known.
#[derive(Debug)]
pub struct AuthState {
    pub verifier: Verifier,
    pub credentials: Credentials,
    pub rate_limit: RateLimit,
}

fn api_key_entry(key: &str) -> String {
    format!("cim:gw:apikey:{}", blake3::hash(key.as_bytes()).to_hex())
}

fn api_key_id_entry(id: &str) -> String {
    format!("cim:gw:apikey-id:{id}")
}

fn session_entry(id: &str) -> String {
    format!("cim:gw:session:{id}")
}

fn redis_down(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "redis unavailable");
    let mut err = ApiError::new(ErrorCode::Unavailable, "credential store unavailable; bearer tokens still work");
    err.retry_after = Some(1);
    err
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

async fn stored(store: &Credentials, entry: &str, method: Method) -> ApiResult<Option<Principal>> {
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let raw: Option<String> = conn.get(entry).await.map_err(redis_down)?;
    Ok(raw.and_then(|r| serde_json::from_str::<Principal>(&r).ok()).map(|p| Principal {
        method,
        expires_at: None,
        ..p
    }))
}

/// Resolves the caller. Bearer JWT first, then `X-Api-Key` / `Authorization: ApiKey`, then the
/// session cookie.
pub async fn authenticate(state: &AuthState, headers: &HeaderMap) -> ApiResult<Principal> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return Ok(state.verifier.verify(token.trim())?);
    }
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| authorization.and_then(|a| a.strip_prefix("ApiKey ")));
    if let Some(key) = api_key {
        return stored(&state.credentials, &api_key_entry(key.trim()), Method::ApiKey)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "unknown or revoked API key"));
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        return stored(&state.credentials, &session_entry(&id), Method::Session)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "session expired or logged out"));
    }
    if authorization.is_some() {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "use `Authorization: Bearer <jwt>` or an API key"));
    }
    Err(ApiError::new(ErrorCode::Unauthenticated, "credentials required"))
}

/// Authenticates, rate-limits, and hands the principal to the handler.
pub async fn middleware(
    State(state): State<Arc<AuthState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, req.headers()).await?;
    crate::limits::rate_limit(&state.rate_limit, &principal).await?;
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A new API key for `principal`'s tenant; returns (id, key). The key is shown once.
pub async fn create_api_key(store: &Credentials, owner: Principal) -> ApiResult<(String, String)> {
    let id = uuid::Uuid::now_v7().to_string();
    let key = format!("cim_{}", random_token());
    let entry = api_key_entry(&key);
    let body = serde_json::to_string(&owner).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let _: () = deadpool_redis::redis::pipe()
        .atomic()
        .set(&entry, body)
        .set(api_key_id_entry(&id), format!("{}|{entry}", owner.tenant))
        .query_async(&mut conn)
        .await
        .map_err(redis_down)?;
    Ok((id, key))
}

/// Revokes a key of the caller's tenant. Another tenant's key id is not found.
pub async fn revoke_api_key(store: &Credentials, tenant: cim_core::TenantId, id: &str) -> ApiResult<()> {
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let found: Option<String> = conn.get(api_key_id_entry(id)).await.map_err(redis_down)?;
    let Some((owner, entry)) = found.as_deref().and_then(|f| f.split_once('|')) else {
        return Err(ApiError::new(ErrorCode::NotFound, "no such API key"));
    };
    if owner != tenant.to_string() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such API key"));
    }
    let _: () = deadpool_redis::redis::pipe()
        .atomic()
        .del(entry)
        .del(api_key_id_entry(id))
        .query_async(&mut conn)
        .await
        .map_err(redis_down)?;
    Ok(())
}

/// Starts a console session; returns the `Set-Cookie` value.
pub async fn login(store: &Credentials, principal: &Principal) -> ApiResult<String> {
    let id = random_token();
    let ttl = store.session_ttl.as_secs();
    let body = serde_json::to_string(principal).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let _: () = conn.set_ex(session_entry(&id), body, ttl).await.map_err(redis_down)?;
    Ok(format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={ttl}"))
}

/// Ends the session named by the cookie; returns the clearing `Set-Cookie` value.
pub async fn logout(store: &Credentials, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let mut conn = store.redis.get().await.map_err(redis_down)?;
        let _: () = conn.del(session_entry(&id)).await.map_err(redis_down)?;
    }
    Ok(format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"))
}
