//! One-time websocket tickets: how a console session (which may have started from an API key,
//! so it holds no JWT to offer) opens a websocket connection.
//!
//! The gateway issues a ticket to an authenticated caller ([`issue`]): a random 256-bit string
//! whose BLAKE3 hash names a Redis entry holding the caller's principal (subject, tenant, roles)
//! for [`TICKET_TTL_SECS`]. The websocket server redeems it ([`redeem`]) with `GETDEL`, so a
//! ticket opens (or renews) at most one connection, and only until it expires. The connection
//! then lives at most [`CONNECTION_SECS`] (and never past the credential's own end) unless the
//! client hands in a fresh ticket: a session that signs out or is revoked can get no new ticket,
//! so its live feed ends within that span.
//!
//! Why not a JWT minted by the gateway: the gateway can sign only when it holds the HS256
//! secret; with RS256/ES256/EdDSA it has public keys only. Redis is already where sessions and
//! API keys live, and both servers reach it.

use cim_runtime::redis::Pool;
use deadpool_redis::redis::AsyncCommands;

use crate::{AuthError, Method, Principal, now_secs};

/// How long an issued ticket can be redeemed.
pub const TICKET_TTL_SECS: u64 = 30;
/// How long a connection opened (or renewed) with a ticket lives without a fresh one.
pub const CONNECTION_SECS: u64 = 300;

/// Under the gateway's key space (`cim:gw:*`, which its Redis user may write); the websocket
/// server's user needs only `GETDEL` on `cim:gw:ws-ticket:*`.
fn entry(ticket: &str) -> String {
    format!("cim:gw:ws-ticket:{}", blake3::hash(ticket.as_bytes()).to_hex())
}

/// Stores a ticket for `principal` and answers it (shown once). The principal's end becomes the
/// sooner of its own end and [`CONNECTION_SECS`] from now.
pub async fn issue(redis: &Pool, principal: &Principal) -> Result<String, String> {
    issue_for(redis, principal, TICKET_TTL_SECS).await
}

/// [`issue`] with a ticket that can be redeemed for `ttl_secs` (tests use a short one).
pub async fn issue_for(redis: &Pool, principal: &Principal, ttl_secs: u64) -> Result<String, String> {
    let ticket = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let span_end = now_secs() + CONNECTION_SECS;
    let expires_at = Some(principal.expires_at.map_or(span_end, |end| end.min(span_end)));
    let stored = Principal { method: Method::Session, expires_at, ..principal.clone() };
    let body = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
    let mut conn = redis.get().await.map_err(|e| e.to_string())?;
    let _: () = conn.set_ex(entry(&ticket), body, ttl_secs).await.map_err(|e| e.to_string())?;
    Ok(ticket)
}

/// The principal a ticket was issued for, once: the entry is taken in the same command that
/// reads it, so two connections presenting one ticket cannot both succeed.
pub async fn redeem(redis: &Pool, ticket: &str) -> Result<Principal, AuthError> {
    if ticket.is_empty() || ticket.len() > 128 {
        return Err(AuthError::Malformed("a ticket is 64 hex characters".into()));
    }
    let mut conn =
        redis.get().await.map_err(|e| AuthError::Rejected(format!("ticket store unavailable ({e}); retry")))?;
    let raw: Option<String> = deadpool_redis::redis::cmd("GETDEL")
        .arg(entry(ticket))
        .query_async(&mut conn)
        .await
        .map_err(|e| AuthError::Rejected(format!("ticket store unavailable ({e}); retry")))?;
    let principal: Principal = raw
        .and_then(|r| serde_json::from_str(&r).ok())
        .ok_or_else(|| AuthError::Rejected("unknown, used or expired ticket".into()))?;
    if principal.expires_at.is_some_and(|end| end <= now_secs()) {
        return Err(AuthError::Expired);
    }
    Ok(principal)
}
