//! NATS secured, each test against private nats-server processes started on free ports: TLS with
//! client certificates from a CA made in the test and NKEY users; operator mode (decentralized
//! authentication) with a `.creds` file whose JWTs the test signs; and files rotated on disk —
//! the CA, the client certificate, the creds — taken at the next reconnection without a restart.

#[path = "support/ca.rs"]
mod ca;
#[path = "support/nats_jwt.rs"]
mod nats_jwt;
#[path = "support/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Client;
use ca::{Ca, TempDir, Validity};
use cim_runtime::nats::{NatsSecurity, NatsSettings};
use cim_runtime::tls::CertFiles;
use futures::StreamExt;
use nats_jwt::Operator;
use server::{Server, free_port, wait_for};

/// A private nats-server on `port` with `config` (which says where it listens).
fn start_nats(dir: &Path, name: &str, port: u16, config: &str) -> Server {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, config).unwrap();
    let mut server = Server(
        Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    wait_for(port, &mut server, "nats-server");
    server
}

/// Listening on `port` for TLS only, verifying client certificates from `ca`.
fn tls_config(port: u16, served: &CertFiles, ca: &Path) -> String {
    format!(
        "listen: \"127.0.0.1:{port}\"\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
        served.cert.display(),
        served.key.display(),
        ca.display()
    )
}

async fn connect(url: &str, security: NatsSecurity) -> Result<Client, String> {
    let settings = NatsSettings {
        url: url.to_owned(),
        client_name: "cim-nats-test".into(),
        connect_timeout: Duration::from_secs(2),
        security,
    };
    cim_runtime::nats::connect(&settings).await.map_err(|e| e.to_string())
}

async fn nats_connect(url: String, security: NatsSecurity) -> Result<(), String> {
    let client = connect(&url, security).await?;
    client.flush().await.map_err(|e| e.to_string())
}

/// A message published and received back: the connection is up and the user may use it.
async fn round_trip(client: &Client) -> Result<(), String> {
    let subject = format!("cim.test.{}", uuid::Uuid::now_v7().simple());
    let work = async {
        let mut sub = client.subscribe(subject.clone()).await.map_err(|e| e.to_string())?;
        client.publish(subject, "ping".into()).await.map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        let message = sub.next().await.ok_or("subscription ended")?;
        Ok::<_, String>(message.payload)
    };
    match tokio::time::timeout(Duration::from_secs(2), work).await {
        Ok(Ok(payload)) if payload.as_ref() == b"ping" => Ok(()),
        Ok(Ok(payload)) => Err(format!("got {payload:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no message back within 2 s".into()),
    }
}

/// Waits until the client connected `n` times in all (the first connection counts).
async fn until_connected(client: &Client, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.statistics().connects.load(Ordering::Relaxed) < n {
        assert!(tokio::time::Instant::now() < deadline, "no reconnection within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces `path` whole by a rename, the way a mounted Kubernetes Secret changes.
fn replace(path: &Path, contents: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test]
async fn nats_over_tls_with_client_certificates_and_an_nkey() {
    let dir = TempDir::new();
    let bus = Ca::new(dir.path(), "bus");
    let stranger = Ca::new(dir.path(), "stranger");
    let user = nkeys::KeyPair::new_user();
    let seed = cim_runtime::config::Secret::new(user.seed().unwrap());
    let nkey_users = format!("authorization {{ users: [ {{ nkey: \"{}\" }} ] }}\n", user.public_key());
    let (port, old_port) = (free_port(), free_port());
    let served = bus.issue("server", &["localhost"], Validity::Now);
    let _server = start_nats(dir.path(), "now", port, &(tls_config(port, &served, &bus.file()) + &nkey_users));
    let expired = bus.issue("old-server", &["localhost"], Validity::Expired);
    let _old = start_nats(dir.path(), "old", old_port, &(tls_config(old_port, &expired, &bus.file()) + &nkey_users));
    let client = bus.issue("client", &["graph"], Validity::Now);
    let security = |ca: &Ca, identity: Option<&CertFiles>| NatsSecurity {
        ca: Some(ca.file()),
        identity: identity.cloned(),
        creds_file: None,
        nkey_seed: Some(seed.clone()),
    };

    nats_connect(format!("tls://localhost:{port}"), security(&bus, Some(&client))).await.unwrap();
    let expired_client = bus.issue("old-client", &["graph"], Validity::Expired);
    let without_nkey = NatsSecurity { nkey_seed: None, ..security(&bus, Some(&client)) };
    let refused = [
        (
            "no TLS",
            format!("nats://localhost:{port}"),
            NatsSecurity { nkey_seed: Some(seed.clone()), ..Default::default() },
        ),
        ("no client certificate", format!("tls://localhost:{port}"), security(&bus, None)),
        ("a wrong CA", format!("tls://localhost:{port}"), security(&stranger, Some(&client))),
        ("a wrong name", format!("tls://127.0.0.1:{port}"), security(&bus, Some(&client))),
        ("an expired client certificate", format!("tls://localhost:{port}"), security(&bus, Some(&expired_client))),
        ("an expired server certificate", format!("tls://localhost:{old_port}"), security(&bus, Some(&client))),
        ("no NKEY", format!("tls://localhost:{port}"), without_nkey),
    ];
    for (case, url, security) in refused {
        let outcome = nats_connect(url, security).await;
        assert!(outcome.is_err(), "{case}: {outcome:?}");
    }
}

/// A creds file at `dir/name` with `text`, as the settings name it.
fn creds_at(dir: &Path, name: &str, text: String) -> NatsSecurity {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).unwrap();
    NatsSecurity { creds_file: Some(path), ..Default::default() }
}

/// Operator mode: the server trusts an operator and knows its accounts from their JWTs; a user
/// logs in with a JWT its account signed and proves it holds the seed by signing the server's
/// nonce (`CIM_NATS_CREDS_FILE`).
#[tokio::test]
async fn nats_operator_mode_with_a_creds_file() {
    let dir = TempDir::new();
    let operator = Operator::new();
    let account = operator.account();
    let port = free_port();
    let config = operator.server_config(dir.path(), &format!("127.0.0.1:{port}"), &[&account]);
    let _server = start_nats(dir.path(), "operator", port, &config);
    let url = format!("nats://localhost:{port}");
    let user = account.user(None);

    let client = connect(&url, creds_at(dir.path(), "user.creds", user.creds())).await.unwrap();
    round_trip(&client).await.unwrap();

    let now = chrono::Utc::now().timestamp();
    let unknown = Operator::new().account();
    let refused = [
        ("no credentials", NatsSecurity::default()),
        ("a user of an account another operator signed", creds_at(dir.path(), "a.creds", unknown.user(None).creds())),
        (
            "a seed that is not the JWT's user's",
            creds_at(dir.path(), "b.creds", user.creds_with_seed_of(&account.user(None))),
        ),
        ("an expired user JWT", creds_at(dir.path(), "c.creds", account.user(Some(now - 60)).creds())),
    ];
    for (case, security) in refused {
        let outcome = connect(&url, security).await;
        assert!(outcome.is_err(), "{case}: connected");
    }
    // A creds file that is not one stops the start, naming the file.
    let error = connect(&url, creds_at(dir.path(), "d.creds", "not creds".into())).await.unwrap_err();
    assert!(error.contains("d.creds: holds no NATS user JWT"), "{error}");
}

/// Short-lived user JWTs, renewed on disk: when the server ends the first user's connection at
/// its JWT's expiry, the client reconnects with the creds file as it is then.
#[tokio::test]
async fn a_creds_file_rotated_on_disk_is_read_at_the_reconnection() {
    let dir = TempDir::new();
    let operator = Operator::new();
    let account = operator.account();
    let port = free_port();
    let config = operator.server_config(dir.path(), &format!("127.0.0.1:{port}"), &[&account]);
    let _server = start_nats(dir.path(), "operator", port, &config);
    let expires = chrono::Utc::now().timestamp() + 5;
    let security = creds_at(dir.path(), "service.creds", account.user(Some(expires)).creds());
    let path = security.creds_file.clone().unwrap();
    let client = connect(&format!("nats://localhost:{port}"), security).await.unwrap();
    round_trip(&client).await.unwrap();

    replace(&path, account.user(None).creds().as_bytes());
    until_connected(&client, 2).await;
    assert!(chrono::Utc::now().timestamp() >= expires, "reconnected before the first JWT expired");
    round_trip(&client).await.unwrap();
}

/// NATS moves to a certificate from a new CA and wants client certificates from that CA only:
/// the client's reconnections are refused until its CA and certificate files are rotated on
/// disk, then it reconnects with them, the same client.
#[tokio::test]
async fn nats_ca_and_client_certificate_rotated_on_disk_are_read_at_the_reconnection() {
    let dir = TempDir::new();
    let (old, new) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let client_files = old.issue("client", &["graph"], Validity::Now);
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::copy(old.file(), &ca_file).unwrap();
    let port = free_port();
    let served = old.issue("server", &["localhost"], Validity::Now);
    let first = start_nats(dir.path(), "old", port, &tls_config(port, &served, &old.file()));
    let security =
        NatsSecurity { ca: Some(ca_file.clone()), identity: Some(client_files.clone()), ..Default::default() };
    let client = connect(&format!("tls://localhost:{port}"), security).await.unwrap();
    round_trip(&client).await.unwrap();

    drop(first);
    server::wait_closed(port);
    let served = new.issue("new-server", &["localhost"], Validity::Now);
    let _second = start_nats(dir.path(), "new", port, &tls_config(port, &served, &new.file()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(client.statistics().connects.load(Ordering::Relaxed), 1, "reconnected with the old files");

    replace(&ca_file, &std::fs::read(new.file()).unwrap());
    ca::rotate(&new.issue("new-client", &["graph"], Validity::Now), &client_files);
    until_connected(&client, 2).await;
    round_trip(&client).await.unwrap();
}
