use std::collections::HashMap;

use rcgen::{CertificateParams, KeyPair};

use super::*;

fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(&move |k| map.get(k).cloned())
}

/// A directory with a self-signed certificate `cert.pem` (usable as its own CA), its key
/// `key.pem` and the key of another certificate `other-key.pem`.
fn files(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cim-config-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["graph".to_owned()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("other-key.pem"), KeyPair::generate().unwrap().serialize_pem()).unwrap();
    dir
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

#[test]
fn tls_is_off_unless_a_certificate_is_set() {
    let c = from(&[]).unwrap();
    assert_eq!(c.tls, TlsSettings::default());
    assert!(c.tls.grpc_server().unwrap().is_none() && c.tls.http_server().unwrap().is_none());
    assert!(c.tls.client().is_none());
    assert!(c.redis_tls.ca.is_none() && c.nats_security.ca.is_none() && c.nats_security.creds_file.is_none());
}

#[test]
fn a_certificate_its_key_and_the_cas_are_read_and_checked_together() {
    let dir = files("ok");
    let c = from(&[
        (CIM_TLS_CERT_FILE, &path(&dir, "cert.pem")),
        (CIM_TLS_KEY_FILE, &path(&dir, "key.pem")),
        (CIM_TLS_CLIENT_CA_FILE, &path(&dir, "cert.pem")),
        (CIM_TLS_CA_FILE, &path(&dir, "cert.pem")),
        (CIM_TLS_RELOAD_SECS, "0"),
        (CIM_GATEWAY_GRAPH_URLS, "https://graph:50051"),
    ])
    .unwrap();
    assert!(c.tls.grpc_server().unwrap().is_some() && c.tls.http_server().unwrap().is_some());
    let client = c.tls.client().unwrap();
    assert_eq!(client.identity.as_ref().unwrap().key, dir.join("key.pem"));
    assert_eq!(c.tls.reload, Duration::ZERO);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn half_pairs_missing_files_and_wrong_keys_are_named_without_their_contents() {
    let dir = files("bad");
    // The variables set, the one named in the error, and why.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (&[(CIM_TLS_CERT_FILE, &path(&dir, "cert.pem"))], CIM_TLS_KEY_FILE, "set together with CIM_TLS_CERT_FILE"),
        (
            &[(CIM_TLS_CERT_FILE, "/nonexistent/cert.pem"), (CIM_TLS_KEY_FILE, &path(&dir, "key.pem"))],
            CIM_TLS_CERT_FILE,
            "/nonexistent/cert.pem",
        ),
        (
            &[(CIM_TLS_CERT_FILE, &path(&dir, "cert.pem")), (CIM_TLS_KEY_FILE, &path(&dir, "other-key.pem"))],
            CIM_TLS_KEY_FILE,
            "does not fit the certificate",
        ),
        (
            &[(CIM_TLS_CERT_FILE, &path(&dir, "key.pem")), (CIM_TLS_KEY_FILE, &path(&dir, "key.pem"))],
            CIM_TLS_CERT_FILE,
            "holds no PEM certificate",
        ),
        (&[(CIM_TLS_CLIENT_CA_FILE, &path(&dir, "cert.pem"))], CIM_TLS_CERT_FILE, "set together with"),
        (&[(CIM_WORKFLOW_AGENT_URLS, "https://agent:50054")], CIM_WORKFLOW_AGENT_URLS, "CIM_TLS_CA_FILE"),
    ];
    let key = std::fs::read_to_string(dir.join("key.pem")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    for (vars, var, why) in cases {
        let err = from(vars).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].var, var, "{err}");
        let text = err.to_string();
        assert!(text.contains(why), "{text}");
        assert!(!text.contains(key_body), "{text}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn redis_and_nats_certificates_and_credentials_are_checked() {
    let dir = files("deps");
    let ca = path(&dir, "cert.pem");
    let err = from(&[(CIM_REDIS_CA_FILE, &ca)]).unwrap_err();
    assert_eq!(err.0[0].var, CIM_REDIS_CA_FILE, "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");
    let c = from(&[
        (CIM_REDIS_URL, "rediss://redis:6380"),
        (CIM_REDIS_CA_FILE, &ca),
        (CIM_NATS_CA_FILE, &ca),
        (CIM_NATS_CERT_FILE, &ca),
        (CIM_NATS_KEY_FILE, &path(&dir, "key.pem")),
    ])
    .unwrap();
    assert_eq!(c.redis_tls.ca, Some(dir.join("cert.pem")));
    assert!(c.nats_security.identity.is_some());

    let seed = "SUAMK2FG4MI6UE3ACF3FK3OIQBCEIEZV7NSWFFEW63UXMRLFM2XLAXK4GY";
    let creds = dir.join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let err = from(&[(CIM_NATS_CREDS_FILE, creds.to_str().unwrap()), (CIM_NATS_NKEY_SEED, seed)]).unwrap_err();
    assert!(err.to_string().contains("not both"), "{err}");
    assert!(!err.to_string().contains(seed), "{err}");
    let err = from(&[(CIM_NATS_NKEY_SEED, "not-a-seed")]).unwrap_err();
    assert_eq!(err.0[0].got, "\"<redacted>\"", "{err}");
    let err = from(&[(CIM_NATS_CREDS_FILE, &ca)]).unwrap_err();
    assert!(err.to_string().contains("holds no NATS user JWT"), "{err}");

    // The seed is a secret: readable from a file, never shown.
    let seed_file = dir.join("seed");
    std::fs::write(&seed_file, seed).unwrap();
    let env = HashMap::from([(file_var(CIM_NATS_NKEY_SEED), seed_file.display().to_string())]);
    let lookup = |k: &str| env.get(k).cloned();
    assert_eq!(Config::from_lookup(&lookup).unwrap().nats_security.nkey_seed.unwrap().expose(), seed);
    assert!(Config::describe(&lookup).iter().all(|d| !d.shown.clone().unwrap_or_default().contains(seed)));
    std::fs::remove_dir_all(dir).unwrap();
}
