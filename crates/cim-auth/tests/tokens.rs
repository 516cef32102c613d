//! HS256 tokens and the rules every token meets: issuer, audience, expiry, `nbf`, the maximum
//! lifetime with its leeway, `alg: none`, and an asymmetric public key passed off as an HMAC
//! secret while both key types are configured.

use std::path::PathBuf;
use std::time::Duration;

use cim_auth::{AuthError, Claims, Role, Verifier, issue_hs256, now_secs};
use cim_core::{ErrorCode, TenantId};
use cim_runtime::config::AuthSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn keys(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
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

/// Any claims, signed HS256 with `secret`.
fn hs256(secret: &[u8], header: Header, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn claims_json(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::to_value(claims(&["reader"])).unwrap();
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

async fn verifier() -> Verifier {
    Verifier::from_settings(&AuthSettings::hs256(SECRET)).await.unwrap()
}

#[tokio::test]
async fn a_valid_token_yields_its_principal() {
    let v = verifier().await;
    let c = claims(&["writer"]);
    let p = v.verify(&issue_hs256(SECRET, &c).unwrap()).unwrap();
    assert_eq!(p.subject, "alice");
    assert_eq!(p.tenant.to_string(), c.tenant);
    assert_eq!(p.expires_at, Some(c.exp));
    assert!(p.can(Role::Reader) && p.can(Role::Writer) && !p.can(Role::Admin));
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_the_reason() {
    let v = verifier().await;
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

#[tokio::test]
async fn no_key_configured_is_a_clear_error() {
    let s = AuthSettings { hs256_secret: None, ..AuthSettings::hs256(SECRET) };
    let err = Verifier::from_settings(&s).await.unwrap_err();
    assert!(matches!(err, AuthError::Config(m) if m.contains("CIM_JWT_HS256_SECRET")));
}

/// An unsigned token (`alg: none`, with or without a signature part) is refused, whatever
/// its claims say.
#[tokio::test]
async fn alg_none_is_refused() {
    let v = verifier().await;
    let b64 = |v: serde_json::Value| {
        use std::fmt::Write;
        // base64url without padding, by hand: the test should not trust the library it tests.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let body = b64(serde_json::to_value(claims(&["admin"])).unwrap());
    for alg in ["none", "None", "NONE"] {
        let head = b64(json!({"alg": alg, "typ": "JWT"}));
        for token in [format!("{head}.{body}."), format!("{head}.{body}")] {
            assert!(matches!(v.verify(&token), Err(AuthError::Malformed(_))), "{alg}: {token}");
        }
        // Even a valid HMAC over the unsigned header does not help.
        let signed = hs256(SECRET.as_bytes(), Header::new(Algorithm::HS256), json!({}));
        let sig = signed.rsplit('.').next().unwrap();
        assert!(v.verify(&format!("{head}.{body}.{sig}")).is_err());
    }
}

/// Both key types configured: RS256 and HS256 tokens each verify with their own key, and an HS256
/// token whose "secret" is the RS256 public key (the classic algorithm confusion) is refused,
/// with or without the key's id.
#[tokio::test]
async fn an_rs256_public_key_is_never_an_hmac_secret() {
    let settings = AuthSettings { public_key_files: vec![keys("rs256-public.pem")], ..AuthSettings::hs256(SECRET) };
    let v = Verifier::from_settings(&settings).await.unwrap();
    let private = EncodingKey::from_rsa_pem(&std::fs::read(keys("rs256-private.pem")).unwrap()).unwrap();
    let rs = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(&["reader"]), &private).unwrap();
    assert_eq!(v.verify(&rs).unwrap().subject, "alice");
    let with_kid = Header { kid: Some("rs256-public".into()), ..Header::new(Algorithm::RS256) };
    assert!(v.verify(&jsonwebtoken::encode(&with_kid, &claims(&[]), &private).unwrap()).is_ok());
    assert!(v.verify(&issue_hs256(SECRET, &claims(&[])).unwrap()).is_ok());
    // The secret has no key id: an issuer's label on an HS256 token names nothing, and the
    // secret still decides; an RS256 token naming a key nobody has is refused as such.
    let labelled = Header { kid: Some("hs-2026".into()), ..Header::new(Algorithm::HS256) };
    let c = serde_json::to_value(claims(&["reader"])).unwrap();
    assert!(v.verify(&hs256(SECRET.as_bytes(), labelled, c)).is_ok());
    let unknown = Header { kid: Some("rs-2031".into()), ..Header::new(Algorithm::RS256) };
    let r = v.verify(&jsonwebtoken::encode(&unknown, &claims(&[]), &private).unwrap());
    assert!(matches!(&r, Err(AuthError::Rejected(m)) if m.contains("unknown key id")), "{r:?}");

    let public_pem = std::fs::read(keys("rs256-public.pem")).unwrap();
    let c = serde_json::to_value(claims(&["admin"])).unwrap();
    let forged = hs256(&public_pem, Header::new(Algorithm::HS256), c.clone());
    assert!(matches!(v.verify(&forged), Err(AuthError::Rejected(r)) if r == "bad signature"), "{forged}");
    let forged_kid =
        hs256(&public_pem, Header { kid: Some("rs256-public".into()), ..Header::new(Algorithm::HS256) }, c);
    assert!(matches!(v.verify(&forged_kid), Err(AuthError::Rejected(r)) if r.contains("no key for algorithm")));
}

#[tokio::test]
async fn nbf_and_iat_are_checked_with_the_leeway() {
    let settings = AuthSettings { leeway: Duration::from_secs(30), ..AuthSettings::hs256(SECRET) };
    let v = Verifier::from_settings(&settings).await.unwrap();
    let now = now_secs();
    let sign = |extra| hs256(SECRET.as_bytes(), Header::new(Algorithm::HS256), claims_json(extra));
    let later = sign(json!({"nbf": now + 120}));
    assert!(matches!(v.verify(&later), Err(AuthError::Rejected(r)) if r.contains("nbf")));
    // A clock 10 s behind the issuer's is within the leeway.
    assert!(v.verify(&sign(json!({"nbf": now + 10, "iat": now + 10}))).is_ok());
    assert!(v.verify(&sign(json!({"nbf": now - 10}))).is_ok());
    let future = sign(json!({"iat": now + 120}));
    assert!(matches!(v.verify(&future), Err(AuthError::Rejected(r)) if r.contains("iat")));
    // Expired, but by less than the leeway: still accepted.
    assert!(v.verify(&sign(json!({"exp": now - 10}))).is_ok());
    assert_eq!(v.verify(&sign(json!({"exp": now - 60}))), Err(AuthError::Expired));
}

#[tokio::test]
async fn no_token_lives_longer_than_the_maximum() {
    let settings = AuthSettings { max_lifetime: Duration::from_secs(3600), ..AuthSettings::hs256(SECRET) };
    let v = Verifier::from_settings(&settings).await.unwrap();
    let now = now_secs();
    let sign = |extra| hs256(SECRET.as_bytes(), Header::new(Algorithm::HS256), claims_json(extra));
    assert!(v.verify(&sign(json!({"iat": now, "exp": now + 3600}))).is_ok());
    let long = sign(json!({"iat": now, "exp": now + 3601}));
    assert!(matches!(v.verify(&long), Err(AuthError::Rejected(r)) if r.contains("longer than 3600")));
    // Issued long ago with a long life, still inside its exp: its lifetime is too long anyway.
    let old = sign(json!({"iat": now - 7000, "exp": now + 60}));
    assert!(matches!(v.verify(&old), Err(AuthError::Rejected(r)) if r.contains("longer than")));
    // Without iat the lifetime counts from now.
    assert!(v.verify(&sign(json!({"exp": now + 3000}))).is_ok());
    let far = sign(json!({"exp": now + 2 * 86_400}));
    assert!(matches!(v.verify(&far), Err(AuthError::Rejected(r)) if r.contains("longer than")));
}
