//! The caller's own routes: who am I, console sessions, and (admin) API keys.

use axum::Json;
use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use cim_auth::{Principal, Role};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{ApiKeyRef, Credentials};
use crate::extract::ApiJson;
use crate::operations::Operators;
use crate::problem::ApiResult;
use crate::routes::{DomainRoutes, Purpose, routes};

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<String>,
    /// jwt, api_key or session.
    pub method: String,
    /// Whether the caller may read the operations view (an admin of an operator tenant).
    pub operator: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// Roles the key grants; at most the creator's own.
    pub roles: Vec<String>,
    /// The key's subject (who it acts as), e.g. `ci-bot`.
    pub subject: String,
    /// Seconds until the key expires (at most ten years); absent: until revoked.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: String,
    /// Shown once; only its hash is stored.
    pub key: String,
    /// When the key expires (seconds since the Unix epoch); absent: until revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A one-time ticket that opens a websocket connection as the caller (`cim_auth::ticket`).
#[derive(Debug, Serialize, ToSchema)]
pub struct WsTicket {
    /// Send it as the websocket's first message: `{"type": "auth", "ticket": "<ticket>"}`;
    /// it works once, within `expires_in_secs`.
    pub ticket: String,
    pub expires_in_secs: u64,
    /// The websocket server's URL as configured for the console; absent: `/ws` on this origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The longest an API key may be given to live.
const MAX_API_KEY_SECS: u64 = 10 * 365 * 86_400;

/// Who am I
///
/// The caller as the gateway sees it: subject, tenant, roles, how they authenticated, and whether
/// they are an operator (the operations view).
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", responses((status = 200, body = Me)))]
pub async fn me(State(operators): State<Operators>, Extension(p): Extension<Principal>) -> Json<Me> {
    Json(Me {
        operator: operators.admits(&p),
        subject: p.subject,
        tenant: p.tenant.to_string(),
        roles: p.roles.iter().map(|r| r.to_string()).collect(),
        method: serde_json::to_value(p.method).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
    })
}

/// Start a console session
///
/// Exchanges the caller's bearer token or API key for an HttpOnly session cookie that ends
/// when the credential does (at the latest after the session lifetime). A session cannot start
/// another session; a session started with an API key ends when the key is revoked.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    responses((status = 204, description = "session cookie set")))]
pub async fn login(
    State(store): State<Credentials>,
    Extension(p): Extension<Principal>,
    api_key: Option<Extension<ApiKeyRef>>,
) -> ApiResult<impl IntoResponse> {
    let cookie = crate::auth::login(&store, &p, api_key.map(|Extension(k)| k)).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]))
}

/// End the console session
///
/// Revokes the session named by the cookie and clears it.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204, description = "session revoked")))]
pub async fn logout(State(store): State<Credentials>, headers: HeaderMap) -> ApiResult<impl IntoResponse> {
    let cookie = crate::auth::logout(&store, &headers).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]))
}

/// Get a websocket ticket
///
/// A one-time ticket for the caller's subject, tenant and roles that the websocket server
/// accepts once, within 30 seconds, as `{"type": "auth", "ticket": ...}`: how the console, whose
/// session may come from an API key, opens its live feed. A connection opened with a ticket lives
/// at most five minutes (never past the session) unless renewed with a fresh ticket.
#[utoipa::path(post, path = "/api/v1/auth/ws-ticket", tag = "auth", responses((status = 201, body = WsTicket)))]
pub async fn ws_ticket(
    State(store): State<Credentials>,
    Extension(p): Extension<Principal>,
) -> ApiResult<(StatusCode, Json<WsTicket>)> {
    let ticket = cim_auth::ticket::issue(&store.redis, &p).await.map_err(crate::auth::redis_down)?;
    let expires_in_secs = cim_auth::ticket::TICKET_TTL_SECS;
    Ok((StatusCode::CREATED, Json(WsTicket { ticket, expires_in_secs, url: store.websocket_url.clone() })))
}

/// Create an API key
///
/// A key for a subject of the caller's tenant with the given roles, optionally expiring; the key is shown once. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/admin/api-keys", tag = "admin", request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey)))]
pub async fn create_api_key(
    State(store): State<Credentials>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<NewApiKey>,
) -> ApiResult<impl IntoResponse> {
    let roles = body
        .roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.parse::<Role>().map_err(|e| crate::problem::ApiError::invalid(format!("roles[{i}]"), e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if body.subject.is_empty() || body.subject.len() > 200 || body.subject.chars().any(char::is_control) {
        return Err(crate::problem::ApiError::invalid("subject", "1 to 200 printable characters"));
    }
    let expires_at = match body.expires_in_secs {
        Some(secs) if (1..=MAX_API_KEY_SECS).contains(&secs) => Some(cim_auth::now_secs() + secs),
        Some(_) => {
            return Err(crate::problem::ApiError::invalid(
                "expires_in_secs",
                format!("from 1 to {MAX_API_KEY_SECS} seconds"),
            ));
        }
        None => None,
    };
    let owner =
        Principal { subject: body.subject, tenant: p.tenant, roles, method: cim_auth::Method::ApiKey, expires_at };
    let (id, key) = crate::auth::create_api_key(&store, owner).await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKey { id, key, expires_at })))
}

/// Revoke an API key
///
/// Revokes a key of the caller's tenant. Needs the admin role.
#[utoipa::path(delete, path = "/api/v1/admin/api-keys/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "revoked")))]
pub async fn revoke_api_key(
    State(store): State<Credentials>,
    Extension(p): Extension<Principal>,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
) -> ApiResult<StatusCode> {
    crate::auth::revoke_api_key(&store, p.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The account routes. Logging out is public: a session that has already expired can still be
/// logged out of (its cookie cleared).
pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Credentials: FromRef<S>,
    Operators: FromRef<S>,
{
    DomainRoutes::new(purpose)
        .signed_in(routes!(me))
        .signed_in(routes!(login))
        .reader(routes!(ws_ticket))
        .admin(routes!(create_api_key))
        .admin(routes!(revoke_api_key))
        .public(routes!(logout))
}
