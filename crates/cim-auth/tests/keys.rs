//! Public keys: RS256 and ES256 from PEM files and JWKS documents (test-only key pairs in
//! `tests/keys/`, generated with openssl for these tests and used nowhere else), selected by
//! `kid`, and rotated without a restart: a key file changed on disk and a JWKS URL serving new
//! keys are picked up by the running verifier.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_auth::{AuthError, Claims, Verifier, now_secs};
use cim_core::TenantId;
use cim_runtime::Shutdown;
use cim_runtime::config::AuthSettings;
use jsonwebtoken::jwk::{Jwk, JwkSet};
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

fn settings() -> AuthSettings {
    AuthSettings { hs256_secret: None, ..AuthSettings::hs256("unused-unused-unused-unused-unused") }
}

async fn verifier(files: &[PathBuf]) -> Verifier {
    Verifier::from_settings(&AuthSettings { public_key_files: files.to_vec(), ..settings() }).await.unwrap()
}

fn private(alg: Algorithm, name: &str) -> EncodingKey {
    let pem = std::fs::read(keys(name)).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn sign(alg: Algorithm, private_pem: &str, kid: Option<&str>, claims: &Claims) -> String {
    let header = Header { kid: kid.map(str::to_owned), ..Header::new(alg) };
    jsonwebtoken::encode(&header, claims, &private(alg, private_pem)).unwrap()
}

/// A JWKS document of the public halves of these private keys, each under its key id.
fn jwks(entries: &[(Algorithm, &str, &str)]) -> String {
    let keys = entries
        .iter()
        .map(|(alg, private_pem, kid)| {
            let mut jwk = Jwk::from_encoding_key(&private(*alg, private_pem), *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cim-auth-keys-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, text: &[u8]) {
    // Written beside and renamed, as a Secret volume or `mv` updates a file: never half-read.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

async fn eventually(mut ok: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn es256_and_rs256_tokens_verify_against_their_public_keys() {
    for (alg, private_pem, public) in [
        (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
        (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
    ] {
        let v = verifier(&[keys(public)]).await;
        let c = claims();
        let p = v.verify(&sign(alg, private_pem, None, &c)).unwrap();
        assert_eq!((p.subject.as_str(), p.tenant.to_string()), ("svc", c.tenant.clone()));
        let expired = Claims { exp: now_secs() - 600, ..claims() };
        assert_eq!(v.verify(&sign(alg, private_pem, None, &expired)), Err(AuthError::Expired));
    }
    // Signed by the other key type: rejected.
    let es = verifier(&[keys("es256-public.pem")]).await;
    assert!(es.verify(&sign(Algorithm::RS256, "rs256-private.pem", None, &claims())).is_err());
    // An HS256 token cannot pass as an asymmetric one when no secret is configured.
    let hs = cim_auth::issue_hs256("0123456789abcdef0123456789abcdef", &claims()).unwrap();
    assert!(matches!(es.verify(&hs), Err(AuthError::Rejected(_))));
}

#[tokio::test]
async fn a_missing_or_unreadable_key_file_is_a_clear_error() {
    let err = Verifier::from_settings(&AuthSettings { public_key_files: vec![keys("missing.pem")], ..settings() })
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Config(m) if m.contains("CIM_JWT_PUBLIC_KEY_FILE") && m.contains("missing.pem")));
    let dir = scratch();
    let garbage = dir.join("garbage.pem");
    write(&garbage, b"-----BEGIN PUBLIC KEY-----\nnope\n");
    let err =
        Verifier::from_settings(&AuthSettings { public_key_files: vec![garbage], ..settings() }).await.unwrap_err();
    assert!(matches!(err, AuthError::Config(m) if m.contains("garbage.pem")));
    // A JWKS is public: a shared secret in it would let anyone sign.
    let oct = dir.join("oct.json");
    write(&oct, br#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}"#);
    let err = Verifier::from_settings(&AuthSettings { public_key_files: vec![oct], ..settings() }).await.unwrap_err();
    assert!(matches!(&err, AuthError::Config(m) if m.contains("symmetric")), "{err:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Several keys at once: each token is verified by the key its `kid` names; a token naming a key
/// nobody has is refused as such, and a key id does not let a token pick another key's algorithm.
#[tokio::test]
async fn keys_are_selected_by_kid() {
    let dir = scratch();
    let set = dir.join("issuer.json");
    write(
        &set,
        jwks(&[(Algorithm::RS256, "rs256-b-private.pem", "b"), (Algorithm::ES256, "es256-private.pem", "e")])
            .as_bytes(),
    );
    let v = verifier(&[keys("rs256-public.pem"), set]).await;
    // The PEM file's key id is its name.
    assert!(v.verify(&sign(Algorithm::RS256, "rs256-private.pem", Some("rs256-public"), &claims())).is_ok());
    assert!(v.verify(&sign(Algorithm::RS256, "rs256-b-private.pem", Some("b"), &claims())).is_ok());
    assert!(v.verify(&sign(Algorithm::ES256, "es256-private.pem", Some("e"), &claims())).is_ok());
    // Signed by one key, naming another.
    let swapped = sign(Algorithm::RS256, "rs256-private.pem", Some("b"), &claims());
    assert!(matches!(v.verify(&swapped), Err(AuthError::Rejected(r)) if r == "bad signature"));
    let unknown = sign(Algorithm::RS256, "rs256-private.pem", Some("2031-01"), &claims());
    assert!(matches!(v.verify(&unknown), Err(AuthError::Rejected(r)) if r.contains("unknown key id \"2031-01\"")));
    // Key `e` is ES256 only.
    let wrong_alg = sign(Algorithm::RS256, "rs256-private.pem", Some("e"), &claims());
    assert!(matches!(v.verify(&wrong_alg), Err(AuthError::Rejected(r)) if r.contains("no key for algorithm")));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A key file replaced on disk is read again by the running verifier: the new key verifies,
/// the old one stops, without a restart. A broken file keeps the keys it had.
#[tokio::test]
async fn a_key_file_changed_on_disk_is_picked_up() {
    let dir = scratch();
    let current = dir.join("current.pem");
    write(&current, &std::fs::read(keys("rs256-public.pem")).unwrap());
    let every_second =
        AuthSettings { public_key_files: vec![current.clone()], keys_refresh: Duration::from_secs(1), ..settings() };
    let v = Verifier::from_settings(&every_second).await.unwrap();
    let stop = Shutdown::new();
    let running = tokio::spawn(v.clone().run(stop.clone()));
    let old = sign(Algorithm::RS256, "rs256-private.pem", Some("current"), &claims());
    let new = sign(Algorithm::RS256, "rs256-b-private.pem", Some("current"), &claims());
    assert!(v.verify(&old).is_ok());
    assert!(v.verify(&new).is_err());

    write(&current, &std::fs::read(keys("rs256-b-public.pem")).unwrap());
    assert!(eventually(|| v.verify(&new).is_ok()).await, "the new key was never picked up");
    assert!(v.verify(&old).is_err());
    // A half-finished edit: the key already loaded keeps working.
    write(&current, b"-----BEGIN PUBLIC KEY-----\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(v.verify(&new).is_ok());
    stop.trigger();
    running.await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// A JWKS URL (a small HTTP server in the test): its keys verify; a token naming a key the
/// issuer just added makes the verifier fetch again (no wait for the refresh interval); a key
/// the issuer dropped stops verifying at the next fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_cached_and_refreshed() {
    let served = Arc::new(Mutex::new(jwks(&[(Algorithm::RS256, "rs256-private.pem", "a")])));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = {
        let (served, fetches) = (served.clone(), fetches.clone());
        axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                async move { body }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let url = format!("http://{addr}/.well-known/jwks.json");
    let hourly = AuthSettings { jwks_url: Some(url.clone()), keys_refresh: Duration::from_secs(3600), ..settings() };
    let v = Verifier::from_settings(&hourly).await.unwrap();
    let stop = Shutdown::new();
    let running = tokio::spawn(v.clone().run(stop.clone()));
    let a = sign(Algorithm::RS256, "rs256-private.pem", Some("a"), &claims());
    let b = sign(Algorithm::RS256, "rs256-b-private.pem", Some("b"), &claims());
    // Cached: verifying many tokens fetches nothing more.
    for _ in 0..100 {
        assert!(v.verify(&a).is_ok());
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);

    *served.lock().unwrap() =
        jwks(&[(Algorithm::RS256, "rs256-private.pem", "a"), (Algorithm::RS256, "rs256-b-private.pem", "b")]);
    assert!(matches!(v.verify(&b), Err(AuthError::Rejected(r)) if r.contains("unknown key id")));
    // The refresh interval is an hour: only the unknown kid can make this fetch happen.
    assert!(eventually(|| v.verify(&b).is_ok()).await, "the issuer's new key was never fetched");
    // Many unknown key ids do not turn into many fetches.
    let fetched = fetches.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..50 {
        let bogus = sign(Algorithm::RS256, "rs256-private.pem", Some(&format!("x{i}")), &claims());
        assert!(v.verify(&bogus).is_err());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fetches.load(std::sync::atomic::Ordering::SeqCst) <= fetched + 1);

    *served.lock().unwrap() = jwks(&[(Algorithm::RS256, "rs256-b-private.pem", "b")]);
    assert!(v.refresh().await.is_empty());
    assert!(matches!(v.verify(&a), Err(AuthError::Rejected(r)) if r.contains("unknown key id")));
    assert!(v.verify(&b).is_ok());
    // The issuer down: the keys fetched last stay.
    *served.lock().unwrap() = "<html>maintenance</html>".into();
    assert_eq!(v.refresh().await.len(), 1);
    assert!(v.verify(&b).is_ok());
    stop.trigger();
    running.await.unwrap();

    // Unreachable at start-up: the service does not start without its keys.
    let gone = AuthSettings { jwks_url: Some("http://127.0.0.1:9/jwks.json".into()), ..settings() };
    let err = Verifier::from_settings(&gone).await.unwrap_err();
    assert!(matches!(&err, AuthError::Config(m) if m.contains("CIM_JWT_JWKS_URL")), "{err:?}");
}
