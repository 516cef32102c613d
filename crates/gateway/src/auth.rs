//! Who is calling, from a bearer token, an API key or a console session (roles: [`crate::authz`]).
//!
//! API keys and sessions live in Redis (keys stored as BLAKE3 hashes, never in clear). Without
//! Redis, bearer tokens keep working; keys and sessions answer 503 until it is back.
//!
//! A session never outlives the credential it was started with (a token's `exp`, an API key's
//! expiry), a session cannot start another one, and a session started with an API key ends
//! when the key is revoked: each use of such a session checks that its key still exists.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use cim_auth::{Method, Principal, Verifier};
use cim_core::ErrorCode;
use deadpool_redis::redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::client::Proxies;
use crate::limits::RateLimit;
use crate::lockout::Lockout;
use crate::problem::{ApiError, ApiResult};

pub const SESSION_COOKIE: &str = "cim_session";

/// Where API keys and console sessions are kept.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub redis: cim_runtime::redis::Pool,
    pub session_ttl: Duration,
    /// Whether the session cookie is `Secure` (sent over HTTPS only).
    pub cookie_secure: bool,
    /// Where the console's browser reaches the websocket server; `None`: `/ws` on its origin.
    pub websocket_url: Option<String>,
}

/// What the auth middleware needs: the token keys, the stored credentials, the lockout of
/// addresses that keep failing, and the rate limit it applies once the caller is known.
#[derive(Debug)]
pub struct AuthState {
    pub verifier: Verifier,
    pub credentials: Credentials,
    pub rate_limit: RateLimit,
    pub lockout: Lockout,
    pub proxies: Proxies,
}

/// The API key a request authenticated with (its store entry), for the session it may start.
#[derive(Debug, Clone)]
pub struct ApiKeyRef(String);

/// What Redis holds for an API key or a session.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    principal: Principal,
    /// A session's API key entry: the session ends when the key is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
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

pub(crate) fn redis_down(e: impl std::fmt::Display) -> ApiError {
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

/// The record at `entry`, unless it is missing or past its end. A session whose API key is gone
/// is deleted and not found.
async fn stored(store: &Credentials, entry: &str, method: Method) -> ApiResult<Option<Principal>> {
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let raw: Option<String> = conn.get(entry).await.map_err(redis_down)?;
    let Some(record) = raw.and_then(|r| serde_json::from_str::<Record>(&r).ok()) else { return Ok(None) };
    if record.principal.expires_at.is_some_and(|end| end <= cim_auth::now_secs()) {
        return Ok(None);
    }
    if let Some(key) = &record.api_key {
        let alive: bool = conn.exists(key).await.map_err(redis_down)?;
        if !alive {
            let _: () = conn.del(entry).await.map_err(redis_down)?;
            return Ok(None);
        }
    }
    Ok(Some(Principal { method, ..record.principal }))
}

/// Whether the request carries any credentials at all (a failure with none is not an attempt).
fn presents_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key("x-api-key")
        || cookie(headers, SESSION_COOKIE).is_some()
}

/// Resolves the caller. Bearer JWT first, then `X-Api-Key` / `Authorization: ApiKey`, then the
/// session cookie.
pub async fn authenticate(state: &AuthState, headers: &HeaderMap) -> ApiResult<(Principal, Option<ApiKeyRef>)> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return Ok((state.verifier.verify(token.trim())?, None));
    }
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| authorization.and_then(|a| a.strip_prefix("ApiKey ")));
    if let Some(key) = api_key {
        let entry = api_key_entry(key.trim());
        let found = stored(&state.credentials, &entry, Method::ApiKey).await?;
        let principal =
            found.ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "unknown, expired or revoked API key"))?;
        return Ok((principal, Some(ApiKeyRef(entry))));
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let found = stored(&state.credentials, &session_entry(&id), Method::Session).await?;
        let principal = found.ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "session expired or ended"))?;
        return Ok((principal, None));
    }
    if authorization.is_some() {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "use `Authorization: Bearer <jwt>` or an API key"));
    }
    Err(ApiError::new(ErrorCode::Unauthenticated, "credentials required"))
}

/// Refuses a locked-out address, authenticates (counting a failure against the address),
/// rate-limits, and hands the principal to the handler.
pub async fn middleware(
    State(state): State<Arc<AuthState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client: IpAddr = state.proxies.client(&req);
    state.lockout.check(client)?;
    let (principal, api_key) = match authenticate(&state, req.headers()).await {
        Ok(found) => found,
        Err(e) if e.code == ErrorCode::Unauthenticated && presents_credentials(req.headers()) => {
            return Err(state.lockout.failed(client, e).await);
        }
        Err(e) => return Err(e),
    };
    crate::limits::rate_limit(&state.rate_limit, &principal).await?;
    req.extensions_mut().insert(principal);
    if let Some(key) = api_key {
        req.extensions_mut().insert(key);
    }
    Ok(next.run(req).await)
}

fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A new API key for `owner`'s tenant, ending at `owner.expires_at` if set; returns (id, key).
/// The key is shown once.
pub async fn create_api_key(store: &Credentials, owner: Principal) -> ApiResult<(String, String)> {
    let id = uuid::Uuid::now_v7().to_string();
    let key = format!("cim_{}", random_token());
    let entry = api_key_entry(&key);
    let tenant = owner.tenant;
    let ttl = owner.expires_at.map(|end| end.saturating_sub(cim_auth::now_secs()).max(1));
    let record = Record { principal: owner, api_key: None };
    let body = serde_json::to_string(&record).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let by_id = format!("{tenant}|{entry}");
    let mut pipe = deadpool_redis::redis::pipe();
    pipe.atomic();
    match ttl {
        // Redis drops an expired key by itself; the stored end is checked on every use too.
        Some(ttl) => pipe.set_ex(&entry, body, ttl).set_ex(api_key_id_entry(&id), by_id, ttl),
        None => pipe.set(&entry, body).set(api_key_id_entry(&id), by_id),
    };
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let _: () = pipe.query_async(&mut conn).await.map_err(redis_down)?;
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

fn session_cookie(store: &Credentials, value: &str, max_age: u64) -> String {
    let secure = if store.cookie_secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={value}; HttpOnly{secure}; SameSite=Strict; Path=/; Max-Age={max_age}")
}

/// Starts a console session with a bearer token or an API key (never with another session, or
/// sessions could be renewed forever); it ends with the credential at the latest. Returns the
/// `Set-Cookie` value.
pub async fn login(store: &Credentials, principal: &Principal, api_key: Option<ApiKeyRef>) -> ApiResult<String> {
    if !matches!(principal.method, Method::Jwt | Method::ApiKey) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "a session cannot start another session: sign in with a bearer token or an API key",
        ));
    }
    let now = cim_auth::now_secs();
    let ttl = match principal.expires_at {
        Some(end) => end.saturating_sub(now).min(store.session_ttl.as_secs()),
        None => store.session_ttl.as_secs(),
    };
    if ttl == 0 {
        return Err(ApiError::new(ErrorCode::Unauthenticated, "the credential has expired"));
    }
    let id = random_token();
    let record = Record {
        principal: Principal { expires_at: Some(now + ttl), ..principal.clone() },
        api_key: api_key.map(|k| k.0),
    };
    let body = serde_json::to_string(&record).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let mut conn = store.redis.get().await.map_err(redis_down)?;
    let _: () = conn.set_ex(session_entry(&id), body, ttl).await.map_err(redis_down)?;
    Ok(session_cookie(store, &id, ttl))
}

/// Ends the session named by the cookie; returns the clearing `Set-Cookie` value.
pub async fn logout(store: &Credentials, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let mut conn = store.redis.get().await.map_err(redis_down)?;
        let _: () = conn.del(session_entry(&id)).await.map_err(redis_down)?;
    }
    Ok(session_cookie(store, "", 0))
}
