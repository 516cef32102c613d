//! RS256 and ES256 tokens verified with a public key read from a PEM file (test-only key pairs in
//! `tests/keys/`, generated with openssl for this test and used nowhere else).

use std::path::PathBuf;

use cim_auth::{AuthError, Claims, Verifier, now_secs};
use cim_core::TenantId;
use cim_runtime::config::AuthSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

fn keys(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
}

fn claims() -> Claims {
    Claims {
        sub: "svc".into(),
        tenant: TenantId::new().to_string(),
        roles: vec!["reader".into()],
        exp: now_secs() + 60,
        iss: "cim".into(),
        aud: "cim".into(),
    }
}

fn verifier(public: &str) -> Verifier {
    Verifier::from_settings(&AuthSettings {
        hs256_secret: None,
        public_key_file: Some(keys(public)),
        issuer: "cim".into(),
        audience: "cim".into(),
    })
    .unwrap()
}

fn sign(alg: Algorithm, private: &str, claims: &Claims) -> String {
    let pem = std::fs::read(keys(private)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

#[test]
fn es256_and_rs256_tokens_verify_against_their_public_keys() {
    for (alg, private, public) in [
        (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
        (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
    ] {
        let v = verifier(public);
        let c = claims();
        let p = v.verify(&sign(alg, private, &c)).unwrap();
        assert_eq!((p.subject.as_str(), p.tenant.to_string()), ("svc", c.tenant.clone()));
        // Expired, and signed by the other key type: rejected.
        let expired = Claims { exp: now_secs() - 600, ..claims() };
        assert_eq!(v.verify(&sign(alg, private, &expired)), Err(AuthError::Expired));
    }
    let es = verifier("es256-public.pem");
    assert!(es.verify(&sign(Algorithm::RS256, "rs256-private.pem", &claims())).is_err());
    // An HS256 token cannot pass as an asymmetric one when no secret is configured.
    let hs = cim_auth::issue_hs256("0123456789abcdef0123456789abcdef", &claims()).unwrap();
    assert!(matches!(es.verify(&hs), Err(AuthError::Rejected(_))));
}

#[test]
fn a_missing_key_file_is_a_clear_error() {
    let err = Verifier::from_settings(&AuthSettings {
        hs256_secret: None,
        public_key_file: Some(keys("missing.pem")),
        issuer: "cim".into(),
        audience: "cim".into(),
    })
    .unwrap_err();
    assert!(matches!(err, AuthError::Config(m) if m.contains("CIM_JWT_PUBLIC_KEY_FILE")));
}
