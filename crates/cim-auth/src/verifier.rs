//! [`Verifier`]: bearer tokens checked against a key set that can change while the service runs.
//!
//! The key set is the HS256 secret (fixed), each key file and the JWKS URL; [`Verifier::run`]
//! reads the files and the URL again every `CIM_JWT_KEYS_REFRESH_SECS`, and sooner when a token
//! names a key id nobody knows (a key just rotated in). A source that fails to load keeps its
//! previous keys, so a half-written file or an issuer briefly down does not lock everyone out.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cim_runtime::config::AuthSettings;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::keys::{self, Key};
use crate::{AuthError, Claims, Principal, principal};

/// The soonest an unknown key id fetches the keys again after the last fetch: a stream of
/// tokens with made-up key ids must not turn into a stream of requests to the issuer.
const EARLIEST_REFETCH: Duration = Duration::from_secs(5);

/// Verifies bearer tokens against the configured keys, issuer, audience and time rules.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    leeway: u64,
    max_lifetime: u64,
    secret: Option<Key>,
    files: Vec<PathBuf>,
    jwks: Option<(reqwest::Client, String)>,
    fetch_timeout: Duration,
    refresh: Duration,
    /// One entry per file, then the JWKS URL's keys.
    loaded: RwLock<Arc<Vec<Vec<Key>>>>,
    /// Set when a token named an unknown key id; [`Verifier::run`] refreshes soon.
    wake: tokio::sync::Notify,
    last_refresh: Mutex<Instant>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: usize = self.inner.loaded.read().map_or(0, |l| l.iter().map(Vec::len).sum());
        f.debug_struct("Verifier").field("secret", &self.inner.secret.is_some()).field("keys", &keys).finish()
    }
}

/// The time claims read besides [`Claims`].
#[derive(Deserialize)]
struct Verified {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    iat: Option<u64>,
}

impl Verifier {
    /// Reads every configured key; a key file that cannot be read or a JWKS URL that cannot be
    /// fetched is an error here (at start-up), unlike in later refreshes.
    pub async fn from_settings(settings: &AuthSettings) -> Result<Self, AuthError> {
        if !settings.has_keys() {
            return Err(AuthError::Config(
                "set CIM_JWT_HS256_SECRET, CIM_JWT_PUBLIC_KEY_FILE or CIM_JWT_JWKS_URL".into(),
            ));
        }
        let jwks = match &settings.jwks_url {
            Some(url) => {
                // reqwest's TLS is built without a crypto provider (see the workspace manifest).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client = reqwest::Client::builder()
                    .build()
                    .map_err(|e| AuthError::Config(format!("CIM_JWT_JWKS_URL: {e}")))?;
                Some((client, url.clone()))
            }
            None => None,
        };
        let inner = Inner {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway.as_secs(),
            max_lifetime: settings.max_lifetime.as_secs(),
            secret: settings.hs256_secret.as_ref().map(|s| Key::secret(s.expose())),
            files: settings.public_key_files.clone(),
            jwks,
            fetch_timeout: Duration::from_secs(10),
            refresh: settings.keys_refresh,
            loaded: RwLock::new(Arc::new(Vec::new())),
            wake: tokio::sync::Notify::new(),
            last_refresh: Mutex::new(Instant::now()),
        };
        let verifier = Self { inner: Arc::new(inner) };
        let errors = verifier.refresh().await;
        if let Some(first) = errors.into_iter().next() {
            let var = if first.starts_with("CIM_JWT_JWKS_URL") { "" } else { "CIM_JWT_PUBLIC_KEY_FILE " };
            return Err(AuthError::Config(format!("{var}{first}")));
        }
        Ok(verifier)
    }

    /// Whether any key comes from a file or a URL, i.e. whether [`Verifier::run`] has work.
    pub fn refreshes(&self) -> bool {
        !self.inner.files.is_empty() || self.inner.jwks.is_some()
    }

    /// Reads the key files and the JWKS URL again; a source that fails keeps its previous
    /// keys. Returns what failed.
    pub async fn refresh(&self) -> Vec<String> {
        *self.inner.last_refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        let previous = self.loaded();
        let mut errors = Vec::new();
        let mut next = Vec::with_capacity(self.inner.files.len() + 1);
        for (i, path) in self.inner.files.iter().enumerate() {
            match keys::read_file(path) {
                Ok(keys) => next.push(keys),
                Err(e) => {
                    errors.push(e);
                    next.push(previous.get(i).cloned().unwrap_or_default());
                }
            }
        }
        if let Some((client, url)) = &self.inner.jwks {
            match keys::fetch(client, url, self.inner.fetch_timeout).await {
                Ok(keys) => next.push(keys),
                Err(e) => {
                    errors.push(format!("CIM_JWT_JWKS_URL {e}"));
                    next.push(previous.get(self.inner.files.len()).cloned().unwrap_or_default());
                }
            }
        }
        *self.inner.loaded.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        errors
    }

    fn loaded(&self) -> Arc<Vec<Vec<Key>>> {
        self.inner.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Refreshes the keys every `CIM_JWT_KEYS_REFRESH_SECS`, and soon after a token named an
    /// unknown key id, until `stop`.
    pub async fn run(self, stop: cim_runtime::Shutdown) {
        if !self.refreshes() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.inner.refresh) => {}
                () = self.inner.wake.notified() => {
                    let last = *self.inner.last_refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let earliest = last + EARLIEST_REFETCH.min(self.inner.refresh);
                    tokio::select! {
                        () = tokio::time::sleep_until(earliest.into()) => {}
                        () = stop.wait() => return,
                    }
                }
                () = stop.wait() => return,
            }
            for e in self.refresh().await {
                tracing::warn!(error = %e, "bearer-token keys not refreshed; the previous ones stay");
            }
        }
    }

    /// Verifies a compact JWT and reads its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no such algorithm.
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let loaded = self.loaded();
        let named: Vec<&Key> = match &header.kid {
            Some(kid) => loaded.iter().flatten().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect(),
            None => Vec::new(),
        };
        let known = header.kid.is_none() || !named.is_empty();
        if !known {
            // Perhaps a key just rotated in: fetch soon.
            self.inner.wake.notify_one();
        }
        let candidates: Vec<&Key> = match &header.kid {
            Some(_) if !named.is_empty() => named,
            // The HS256 secret has no id, so an issuer's label on its tokens names nothing.
            Some(_) => self.inner.secret.iter().collect(),
            None => self.inner.secret.iter().chain(loaded.iter().flatten()).collect(),
        };
        // Each key verifies only its own algorithm, whatever the token's header asks for.
        let usable: Vec<&Key> = candidates.into_iter().filter(|k| k.alg == header.alg).collect();
        if usable.is_empty() {
            return Err(match &header.kid {
                Some(kid) if !known => AuthError::Rejected(format!("unknown key id {kid:?}")),
                _ => AuthError::Rejected(format!("no key for algorithm {:?}", header.alg)),
            });
        }
        let mut last = AuthError::Rejected("bad signature".into());
        for key in usable {
            match jsonwebtoken::decode::<Verified>(token, &key.key, &self.validation(key.alg)) {
                Ok(data) => return self.lifetime(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => AuthError::Expired,
                        K::ImmatureSignature => AuthError::Rejected("not valid yet (nbf)".into()),
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

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.inner.issuer]);
        v.set_audience(&[&self.inner.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.inner.leeway;
        v
    }

    /// No token may live longer than the maximum: counted from `iat` when it has one (which may
    /// not lie in the future), else from now.
    fn lifetime(&self, verified: Verified) -> Result<Principal, AuthError> {
        let (now, leeway, max) = (crate::now_secs(), self.inner.leeway, self.inner.max_lifetime);
        let exp = verified.claims.exp;
        if let Some(iat) = verified.iat {
            if iat > now + leeway {
                return Err(AuthError::Rejected("issued in the future (iat)".into()));
            }
            if exp.saturating_sub(iat) > max {
                return Err(AuthError::Rejected(format!("lives longer than {max} s (exp - iat)")));
            }
        }
        if exp.saturating_sub(now) > max + leeway {
            return Err(AuthError::Rejected(format!("lives longer than {max} s (exp)")));
        }
        principal(verified.claims)
    }
}
