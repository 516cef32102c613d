//! Signed download links: a URL that reads one content version of one document until it
//! expires, with no bearer token, for browsers (`<a href>`, `<img src>`) and other services.
//! The tenant, document, version and expiry are in the link and under its HMAC-SHA256, so none
//! can be changed; the key is `CIM_GATEWAY_LINK_SECRET`, or derived from the HS256 token secret
//! (every gateway replica derives the same one).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use cim_core::{ErrorCode, TenantId};
use cim_runtime::config::AuthSettings;
use cim_runtime::config::GatewaySettings;

use crate::problem::ApiError;

/// The longest a link may live, and the default.
pub const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;

/// What a link grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: TenantId,
    pub document_id: String,
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(..)")
    }
}

impl LinkSigner {
    /// The configured signer, or `None` when neither secret is set (links are then refused).
    pub fn from_settings(gateway: &GatewaySettings, auth: &AuthSettings) -> Option<Self> {
        if let Some(secret) = &gateway.link_secret {
            return Some(Self { key: secret.expose().as_bytes().to_vec() });
        }
        // A key of its own, so a link's MAC can never be replayed as a token signature.
        let derived =
            blake3::derive_key("cim gateway download links v1", auth.hs256_secret.as_ref()?.expose().as_bytes());
        Some(Self { key: derived.to_vec() })
    }

    fn mac(&self, message: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(message.as_bytes());
        mac
    }

    /// The link's token: `<tenant>.<document>.<version>.<expiry>.<mac>`, URL-safe as it is.
    pub fn sign(&self, grant: &Grant) -> String {
        let message = format!("{}.{}.{}.{}", grant.tenant, grant.document_id, grant.version, grant.expires_at);
        let mac = self.mac(&message).finalize().into_bytes();
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        format!("{message}.{hex}")
    }

    /// The grant of a token whose signature holds and which has not expired at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Grant, ApiError> {
        let refused = || ApiError::new(ErrorCode::NotFound, "no such link (it may have been altered)");
        let (message, hex) = token.rsplit_once('.').ok_or_else(refused)?;
        let signature = (0..hex.len())
            .step_by(2)
            .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(refused)?;
        self.mac(message).verify_slice(&signature).map_err(|_| refused())?;
        let parts: Vec<&str> = message.split('.').collect();
        let [tenant, document_id, version, expires_at] = parts[..] else { return Err(refused()) };
        let grant = Grant {
            tenant: tenant.parse().map_err(|_| refused())?,
            document_id: document_id.to_owned(),
            version: version.parse().map_err(|_| refused())?,
            expires_at: expires_at.parse().map_err(|_| refused())?,
        };
        if grant.expires_at <= now {
            return Err(ApiError::new(ErrorCode::PermissionDenied, "this link has expired; ask for a new one"));
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_reads_back_and_every_change_breaks_it() {
        let signer = LinkSigner { key: b"k".repeat(32) };
        let grant = Grant {
            tenant: TenantId::new(),
            document_id: "0190a5b2-7c3e-7000-8000-000000000001".into(),
            version: 3,
            expires_at: 2_000,
        };
        let token = signer.sign(&grant);
        assert_eq!(signer.verify(&token, 1_999).unwrap(), grant);
        assert_eq!(signer.verify(&token, 2_000).unwrap_err().status(), 403);
        // Another version, tenant or expiry under the same signature: not found.
        let other_version = token.replacen(".3.", ".4.", 1);
        assert_eq!(signer.verify(&other_version, 1_000).unwrap_err().status(), 404);
        let later = token.replacen(".2000.", ".9999.", 1);
        assert_eq!(signer.verify(&later, 1_000).unwrap_err().status(), 404);
        let other_tenant = token.replacen(&grant.tenant.to_string(), &TenantId::new().to_string(), 1);
        assert_eq!(signer.verify(&other_tenant, 1_000).unwrap_err().status(), 404);
        // Another key does not accept it.
        let stranger = LinkSigner { key: b"j".repeat(32) };
        assert!(stranger.verify(&token, 1_000).is_err());
        assert!(signer.verify("garbage", 1_000).is_err());
        assert!(signer.verify(&format!("{token}zz"), 1_000).is_err());
    }
}
