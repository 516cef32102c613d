//! Who is calling: bearer tokens (JWT) verified into a [`Principal`] with a tenant and roles.
//!
//! Tokens are HS256 (a shared secret) or RS256/ES256 (a public key from a PEM file); issuer,
//! audience and expiry are always checked. Claims: `sub`, `tenant` (a UUID), `roles` (any of
//! `reader`, `writer`, `admin`), `exp`, `iss`, `aud`. The gateway and the websocket server use
//! the same [`Verifier`], so a token that works for one works for the other.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use cim_core::{ErrorCode, TenantId};
use cim_runtime::config::AuthSettings;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
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
    /// The token's `exp` (seconds since the Unix epoch): long-lived connections (websocket) end
    /// when it passes. `None` for API keys and sessions, which are checked per request.
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

/// Verifies bearer tokens against the configured keys, issuer and audience.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(DecodingKey, Validation)>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.keys.len()).finish()
    }
}

fn validation(alg: Algorithm, settings: &AuthSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&settings.issuer]);
    v.set_audience(&[&settings.audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = 5;
    v
}

impl Verifier {
    /// Reads the keys named by the settings; at least one is required.
    pub fn from_settings(settings: &AuthSettings) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = &settings.hs256_secret {
            keys.push((DecodingKey::from_secret(secret.expose().as_bytes()), validation(Algorithm::HS256, settings)));
        }
        if let Some(path) = &settings.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| AuthError::Config(format!("CIM_JWT_PUBLIC_KEY_FILE {}: {e}", path.display())))?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((key, validation(Algorithm::RS256, settings)));
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                keys.push((key, validation(Algorithm::ES256, settings)));
            } else {
                return Err(AuthError::Config(format!(
                    "CIM_JWT_PUBLIC_KEY_FILE {}: not a PEM RSA or EC public key",
                    path.display()
                )));
            }
        }
        if keys.is_empty() {
            return Err(AuthError::Config("set CIM_JWT_HS256_SECRET or CIM_JWT_PUBLIC_KEY_FILE".into()));
        }
        Ok(Self { keys })
    }

    /// Verifies a compact JWT and reads its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let mut last = AuthError::Rejected(format!("no key for algorithm {:?}", header.alg));
        for (key, validation) in &self.keys {
            if !validation.algorithms.contains(&header.alg) {
                continue;
            }
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return principal(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => AuthError::Expired,
                        K::InvalidIssuer => AuthError::Rejected("wrong issuer".into()),
                        K::InvalidAudience => AuthError::Rejected("wrong audience".into()),
                        K::InvalidSignature => AuthError::Rejected("bad signature".into()),
                        K::MissingRequiredClaim(c) => AuthError::Malformed(format!("missing claim {c}")),
                        other => AuthError::Malformed(format!("{other:?}")),
                    };
                }
            }
        }
        Err(last)
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use cim_runtime::config::Secret;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> AuthSettings {
        AuthSettings {
            hs256_secret: Some(Secret::new(SECRET)),
            public_key_file: None,
            issuer: "cim".into(),
            audience: "cim".into(),
        }
    }

    fn claims(roles: &[&str]) -> Claims {
        Claims {
            sub: "alice".into(),
            tenant: TenantId::new().to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            exp: now_secs() + 60,
            iss: "cim".into(),
            aud: "cim".into(),
        }
    }

    #[test]
    fn a_valid_token_yields_its_principal() {
        let v = Verifier::from_settings(&settings()).unwrap();
        let c = claims(&["writer"]);
        let p = v.verify(&issue_hs256(SECRET, &c).unwrap()).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.tenant.to_string(), c.tenant);
        assert!(p.can(Role::Reader) && p.can(Role::Writer) && !p.can(Role::Admin));
    }

    #[test]
    fn bad_tokens_are_rejected_with_the_reason() {
        let v = Verifier::from_settings(&settings()).unwrap();
        let expired = Claims { exp: now_secs() - 600, ..claims(&[]) };
        assert_eq!(v.verify(&issue_hs256(SECRET, &expired).unwrap()), Err(AuthError::Expired));
        let foreign = issue_hs256("another-secret-another-secret-xx", &claims(&[])).unwrap();
        assert!(matches!(v.verify(&foreign), Err(AuthError::Rejected(r)) if r == "bad signature"));
        let wrong_aud = Claims { aud: "other".into(), ..claims(&[]) };
        assert!(matches!(v.verify(&issue_hs256(SECRET, &wrong_aud).unwrap()), Err(AuthError::Rejected(_))));
        let wrong_iss = Claims { iss: "other".into(), ..claims(&[]) };
        assert!(matches!(v.verify(&issue_hs256(SECRET, &wrong_iss).unwrap()), Err(AuthError::Rejected(_))));
        let bad_tenant = Claims { tenant: "acme".into(), ..claims(&[]) };
        assert!(matches!(v.verify(&issue_hs256(SECRET, &bad_tenant).unwrap()), Err(AuthError::Malformed(_))));
        let bad_role = claims(&["root"]);
        assert!(matches!(v.verify(&issue_hs256(SECRET, &bad_role).unwrap()), Err(AuthError::Malformed(_))));
        assert!(matches!(v.verify("not.a.token"), Err(AuthError::Malformed(_))));
        assert_eq!(AuthError::Expired.code(), ErrorCode::Unauthenticated);
    }

    #[test]
    fn no_key_configured_is_a_clear_error() {
        let s = AuthSettings { hs256_secret: None, ..settings() };
        assert!(matches!(Verifier::from_settings(&s), Err(AuthError::Config(m)) if m.contains("CIM_JWT_HS256_SECRET")));
    }
}
