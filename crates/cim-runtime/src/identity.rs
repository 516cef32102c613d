//! Service identity: a domain service takes the caller metadata (tenant, actor, roles) as true
//! only from a caller that proves it holds the services' shared key (`CIM_SERVICE_TOKEN_SECRET`).
//! The caller signs exactly the metadata it sends, with an expiry:
//!
//! `x-cim-caller-signature: v1.<expiry, unix seconds>.<base64url HMAC-SHA256>` over
//! `v1 \n expiry \n tenant \n actor \n roles` (each as sent, empty when absent).
//!
//! The gateway and the workflow service sign every call they make for 5 minutes; an operator
//! signs a worker program's metadata for longer with `cim service-token`. Without the key set
//! (the local default) nothing is signed or checked, as before: the network is then the
//! boundary, and `cim doctor`/the startup log say so. With it, a process on the network cannot
//! act as any tenant: a call without a valid signature is `UNAUTHENTICATED`, before any handler
//! runs. Health and reflection stay open (probes and grpcurl's `list` carry no tenant).
//!
//! Why an HMAC over the metadata rather than mTLS alone: it binds the tenant to the call, not only
//! the peer to the connection, and works the same in one process, on a laptop and in a cluster.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use cim_core::ErrorCode;
use hmac::Mac;
use http::{Request, Response};
use tonic::metadata::MetadataMap;
use tower::{Layer, Service};

use crate::edge::{ACTOR_HEADER, ROLES_HEADER, TENANT_HEADER};

/// Where the signature travels.
pub const SIGNATURE_HEADER: &str = "x-cim-caller-signature";
/// How long the signature on one service-to-service call is good for.
pub const CALL_LIFETIME: Duration = Duration::from_secs(300);
/// The longest a signature may be good for (a worker program's, from `cim service-token`).
pub const MAX_LIFETIME: Duration = Duration::from_secs(31 * 24 * 3600);
/// Clocks of two hosts may disagree by this much.
const LEEWAY_SECS: u64 = 30;
/// Calls that carry no caller: probes and reflection.
const OPEN_PREFIXES: [&str; 3] = ["/grpc.health.", "/grpc.reflection.", "/grpc.channelz."];

type HmacSha256 = hmac::Hmac<sha2::Sha256>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The services' shared key.
#[derive(Clone)]
pub struct CallerKey(Arc<[u8]>);

impl std::fmt::Debug for CallerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallerKey(<redacted>)")
    }
}

/// Why a call's caller metadata was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no {SIGNATURE_HEADER}: this service takes tenant metadata only from a caller holding the service key")]
    Missing,
    #[error("{SIGNATURE_HEADER} is not v1.<expiry>.<signature>")]
    Malformed,
    #[error("{SIGNATURE_HEADER} expired")]
    Expired,
    #[error("{SIGNATURE_HEADER} is good for longer than the {} days allowed", MAX_LIFETIME.as_secs() / 86_400)]
    TooLong,
    #[error("{SIGNATURE_HEADER} does not match the tenant, actor and roles sent")]
    Mismatch,
}

impl CallerKey {
    pub fn new(secret: &str) -> Self {
        CallerKey(Arc::from(secret.as_bytes()))
    }

    fn mac(&self, expiry: u64, tenant: &str, actor: &str, roles: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(format!("v1\n{expiry}\n{tenant}\n{actor}\n{roles}").as_bytes());
        mac
    }

    /// The header value for this metadata, good until `expiry` (unix seconds).
    pub fn sign(&self, expiry: u64, tenant: &str, actor: &str, roles: &str) -> String {
        let tag = self.mac(expiry, tenant, actor, roles).finalize().into_bytes();
        format!("v1.{expiry}.{}", B64.encode(tag))
    }

    /// Signs the caller metadata already in `md` for [`CALL_LIFETIME`]: call it after the tenant,
    /// actor and roles are set.
    pub fn sign_metadata(&self, md: &mut MetadataMap) {
        let text = |name: &str| md.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let expiry = now_secs() + CALL_LIFETIME.as_secs();
        let value = self.sign(expiry, &text(TENANT_HEADER), &text(ACTOR_HEADER), &text(ROLES_HEADER));
        if let Ok(v) = value.parse() {
            md.insert(SIGNATURE_HEADER, v);
        }
    }

    /// Whether `headers` carry a good signature of their own caller metadata at `now`.
    pub fn verify(&self, headers: &http::HeaderMap, now: u64) -> Result<(), Refusal> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let signature = headers.get(SIGNATURE_HEADER).ok_or(Refusal::Missing)?;
        let signature = signature.to_str().map_err(|_| Refusal::Malformed)?;
        let mut parts = signature.splitn(3, '.');
        let (Some("v1"), Some(expiry), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refusal::Malformed);
        };
        let expiry: u64 = expiry.parse().map_err(|_| Refusal::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| Refusal::Malformed)?;
        // The tag first: what the dates say is worth reporting only for a genuine signature.
        self.mac(expiry, text(TENANT_HEADER), text(ACTOR_HEADER), text(ROLES_HEADER))
            .verify_slice(&tag)
            .map_err(|_| Refusal::Mismatch)?;
        if expiry + LEEWAY_SECS < now {
            return Err(Refusal::Expired);
        }
        if expiry > now + MAX_LIFETIME.as_secs() + LEEWAY_SECS {
            return Err(Refusal::TooLong);
        }
        Ok(())
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Refuses calls whose caller metadata is not signed with the key; with no key, passes all.
#[derive(Debug, Clone, Default)]
pub struct CallerIdentityLayer {
    pub key: Option<CallerKey>,
}

impl<S> Layer<S> for CallerIdentityLayer {
    type Service = CallerIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerIdentity { inner, key: self.key.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct CallerIdentity<S> {
    inner: S,
    key: Option<CallerKey>,
}

impl<S, B> Service<Request<B>> for CallerIdentity<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let open = OPEN_PREFIXES.iter().any(|p| req.uri().path().starts_with(p));
        if let Some(key) = self.key.as_ref().filter(|_| !open)
            && let Err(refusal) = key.verify(req.headers(), now_secs())
        {
            let status = cim_proto::status::error_status(ErrorCode::Unauthenticated, refusal.to_string(), &[]);
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(tenant: &str, actor: &str, roles: &str, signature: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(TENANT_HEADER, tenant.parse().unwrap());
        h.insert(ACTOR_HEADER, actor.parse().unwrap());
        h.insert(ROLES_HEADER, roles.parse().unwrap());
        if let Some(s) = signature {
            h.insert(SIGNATURE_HEADER, s.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_signature_holds_for_its_own_metadata_only_and_until_it_expires() {
        let key = CallerKey::new("0123456789abcdef0123456789abcdef");
        let now = 1_800_000_000;
        let good = key.sign(now + 300, "t1", "user:ada", "reader");
        assert_eq!(key.verify(&headers("t1", "user:ada", "reader", Some(&good)), now), Ok(()));
        // Another tenant, actor or role set with the same signature.
        for (t, a, r) in [("t2", "user:ada", "reader"), ("t1", "user:bob", "reader"), ("t1", "user:ada", "admin")] {
            assert_eq!(key.verify(&headers(t, a, r, Some(&good)), now), Err(Refusal::Mismatch));
        }
        // Another key.
        let other = CallerKey::new("another key of thirty-two bytes!");
        assert_eq!(other.verify(&headers("t1", "user:ada", "reader", Some(&good)), now), Err(Refusal::Mismatch));
        // The expiry is signed: moving it breaks the tag.
        let moved = good.replacen(&format!("v1.{}.", now + 300), &format!("v1.{}.", now + 9_999), 1);
        assert_eq!(key.verify(&headers("t1", "user:ada", "reader", Some(&moved)), now), Err(Refusal::Mismatch));
        // Expired, with leeway; and a lifetime past the maximum.
        assert_eq!(key.verify(&headers("t1", "user:ada", "reader", Some(&good)), now + 300 + 29), Ok(()));
        assert_eq!(
            key.verify(&headers("t1", "user:ada", "reader", Some(&good)), now + 300 + 31),
            Err(Refusal::Expired)
        );
        let long = key.sign(now + MAX_LIFETIME.as_secs() + 3_600, "t1", "user:ada", "reader");
        assert_eq!(key.verify(&headers("t1", "user:ada", "reader", Some(&long)), now), Err(Refusal::TooLong));
        // Missing and malformed.
        assert_eq!(key.verify(&headers("t1", "user:ada", "reader", None), now), Err(Refusal::Missing));
        for bad in ["v2.1.abc", "v1.soon.abc", "v1.1", "v1.1.!!!", ""] {
            assert_eq!(key.verify(&headers("t1", "a", "r", Some(bad)), now), Err(Refusal::Malformed), "{bad}");
        }
    }

    #[test]
    fn signing_metadata_covers_what_is_already_there() {
        let key = CallerKey::new("0123456789abcdef0123456789abcdef");
        let mut md = MetadataMap::new();
        md.insert(TENANT_HEADER, "t1".parse().unwrap());
        md.insert(ACTOR_HEADER, "service:workflow".parse().unwrap());
        key.sign_metadata(&mut md);
        let headers = md.clone().into_headers();
        assert_eq!(key.verify(&headers, now_secs()), Ok(()));
        let mut changed = headers;
        changed.insert(ROLES_HEADER, "admin".parse().unwrap());
        assert_eq!(key.verify(&changed, now_secs()), Err(Refusal::Mismatch));
    }
}
