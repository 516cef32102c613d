//! The keys tokens are verified with, and where they come from: the HS256 secret, PEM public
//! keys and JWKS documents in files, a JWKS URL. Each key states the one algorithm it verifies,
//! so a token cannot pick a weaker use of a key (an RS256 public key taken as an HS256 secret).

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    /// `None` only for the HS256 secret and JWKS entries without one: such keys are tried for
    /// tokens that name no key.
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl Key {
    pub fn secret(secret: &str) -> Self {
        Self { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(secret.as_bytes()) }
    }
}

/// A key file: a JWKS document (JSON) or one PEM RSA or EC public key, whose key id is the
/// file name without its extension (`2026-01.pem` → `2026-01`).
pub(crate) fn read_file(path: &Path) -> Result<Vec<Key>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.trim_ascii_start().starts_with(b"{") {
        return jwks(&bytes).map_err(|e| format!("{}: {e}", path.display()));
    }
    let kid = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if let Ok(key) = DecodingKey::from_rsa_pem(&bytes) {
        return Ok(vec![Key { kid, alg: Algorithm::RS256, key }]);
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
        return Ok(vec![Key { kid, alg: Algorithm::ES256, key }]);
    }
    Err(format!("{}: neither a PEM RSA or EC public key nor a JWKS document", path.display()))
}

/// The signing keys of a JWKS document. Symmetric keys are refused: a JWKS is public, and a
/// shared secret in it would let anyone sign.
pub(crate) fn jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("keys[{i}]"));
        keys.push(jwk_key(jwk).map_err(|e| format!("key {name}: {e}"))?);
    }
    Ok(keys)
}

fn jwk_key(jwk: &Jwk) -> Result<Key, String> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not accepted from a JWKS".into()),
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            ref other => return Err(format!("unsupported curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
    };
    let alg = match jwk.common.key_algorithm {
        Some(a) => a.to_string().parse().map_err(|_| format!("unsupported alg {a}"))?,
        None => by_type,
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    if key.family() != alg.family() {
        return Err(format!("alg {alg:?} does not fit the key type"));
    }
    Ok(Key { kid: jwk.common.key_id.clone(), alg, key })
}

/// Fetches a JWKS URL.
pub(crate) async fn fetch(client: &reqwest::Client, url: &str, timeout: Duration) -> Result<Vec<Key>, String> {
    let fetched = async {
        let response = client.get(url).timeout(timeout).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        jwks(&body)
    };
    fetched.await.map_err(|e| format!("{url}: {e}"))
}
