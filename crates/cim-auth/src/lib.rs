//! Who is calling: bearer tokens (JWT) verified into a [`Principal`] with a tenant and roles.
//!
//! Tokens are HS256 (a shared secret) or RS256/ES256/EdDSA (public keys from PEM files or JWKS
//! documents, in files or at a URL, selected by the token's `kid`; [`Verifier`]); issuer,
//! audience, expiry, `nbf` and a maximum lifetime are always checked, with a clock-skew leeway.
//! Claims: `sub`, `tenant` (a UUID), `roles` (any of `reader`, `writer`, `admin`), `exp`, `iss`,
//! `aud`, optionally `nbf` and `iat`. The gateway and the websocket server use the same
//! [`Verifier`], so a token that works for one works for the other.

mod keys;
pub mod ticket;
mod verifier;

pub use verifier::Verifier;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use cim_core::{ErrorCode, TenantId};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// What a caller may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Reader, Role::Writer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AuthError::Malformed(format!("unknown role {s:?}; expected reader, writer or admin")))
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Jwt,
    ApiKey,
    Session,
    /// A signed download link: read access to one content version until it expires.
    Link,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub subject: String,
    pub tenant: TenantId,
    pub roles: BTreeSet<Role>,
    pub method: Method,
    /// When the credential ends (seconds since the Unix epoch): a token's `exp`, an API key's
    /// or a session's end; long-lived connections (websocket) end when it passes, and a console
    /// session started with it ends then at the latest. `None`: an API key that does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Principal {
    /// Whether the caller holds `role` or a higher one.
    pub fn can(&self, role: Role) -> bool {
        self.roles.iter().any(|r| *r >= role)
    }

    /// The actor recorded on events (`user:<sub>`).
    pub fn actor(&self) -> String {
        format!("user:{}", self.subject)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(String),
    #[error("token expired")]
    Expired,
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("authentication is not configured: {0}")]
    Config(String),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Forbidden(_) => ErrorCode::PermissionDenied,
            AuthError::Config(_) => ErrorCode::Internal,
            _ => ErrorCode::Unauthenticated,
        }
    }
}

/// The claims CIM reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

pub(crate) fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let tenant = TenantId::from_str(&claims.tenant).map_err(|e| AuthError::Malformed(format!("claim tenant: {e}")))?;
    if claims.sub.is_empty() || claims.sub.len() > 200 || claims.sub.chars().any(char::is_control) {
        return Err(AuthError::Malformed("claim sub: 1 to 200 printable characters".into()));
    }
    let roles = claims.roles.iter().map(|r| r.parse()).collect::<Result<BTreeSet<Role>, _>>()?;
    Ok(Principal { subject: claims.sub, tenant, roles, method: Method::Jwt, expires_at: Some(claims.exp) })
}

/// Signs an HS256 token: for tests, local development (`cim token`) and trusted issuers.
pub fn issue_hs256(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| AuthError::Config(e.to_string()))
}

/// Seconds since the Unix epoch, for `exp`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
