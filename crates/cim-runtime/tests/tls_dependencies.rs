//! TLS to Postgres and Redis, each against a private server process started by the test on a
//! free port with certificates from a CA made in the test: Postgres (`sslmode=verify-full`, a
//! client certificate), Redis (`rediss://`, client certificates required). Each connects with the
//! right certificates and is refused with none, a wrong CA, an expired certificate or a wrong
//! name; Redis's CA and client certificate files, rotated on disk, reach new connections. NATS
//! is in `nats_security.rs`.

#[path = "support/ca.rs"]
mod ca;
#[path = "support/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ca::{Ca, TempDir, Validity};
use cim_runtime::postgres::PgSettings;
use cim_runtime::redis::{RedisSettings, RedisTls};
use cim_runtime::tls::CertFiles;
use server::{Server, free_port, wait_for};

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program` run as the postgres user when the test runs as root (Postgres refuses root);
/// `setpriv` execs it, so the child is the server itself and stopping it stops the server.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn postgres_bin(name: &str) -> PathBuf {
    let out = Command::new("pg_config").arg("--bindir").output().expect("pg_config (the Postgres server packages)");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join(name)
}

/// A private Postgres taking only TLS connections that present a client certificate from `ca`
/// whose common name is the user (`hostssl ... cert`).
fn start_postgres(dir: &Path, served: &CertFiles, ca: &Path) -> (Server, u16) {
    let data = dir.join("pg");
    if is_root() {
        let status = Command::new("chown").args(["-R", "postgres"]).arg(dir).status().unwrap();
        assert!(status.success());
    }
    let init = as_postgres(&postgres_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(init.success(), "initdb failed");
    std::fs::write(data.join("pg_hba.conf"), "hostssl all all 127.0.0.1/32 cert\nhostssl all all ::1/128 cert\n")
        .unwrap();
    let port = free_port();
    let mut server = Server(
        as_postgres(&postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
            .arg("-k")
            .arg(dir)
            .arg("-c")
            .arg(format!("ssl_cert_file={}", served.cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", served.key.display()))
            .arg("-c")
            .arg(format!("ssl_ca_file={}", ca.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(port, &mut server, "postgres");
    // Listening is not ready: it refuses connections while it starts up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = || {
        Command::new(postgres_bin("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    };
    while !ready() {
        assert!(Instant::now() < deadline, "postgres did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

async fn pg_connect(url: String) -> Result<(), String> {
    let settings = PgSettings {
        url,
        schema: "public".into(),
        max_connections: 1,
        connect_timeout: Duration::from_secs(3),
        application_name: "cim-tls-test".into(),
    };
    let pool = cim_runtime::postgres::connect(&settings).await.map_err(|e| e.to_string())?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.map_err(|e| e.to_string())?;
    assert_eq!(one, 1);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn postgres_verify_full_with_a_client_certificate() {
    let dir = TempDir::new();
    let db = Ca::new(dir.path(), "db");
    let stranger = Ca::new(dir.path(), "stranger");
    let served = db.issue("server", &["localhost"], Validity::Now);
    let client = db.issue("client", &["postgres"], Validity::Now);
    let (_server, port) = start_postgres(dir.path(), &served, &db.file());
    let url = |host: &str, root: &Path, client: Option<&CertFiles>| {
        let mut url =
            format!("postgres://postgres@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={}", root.display());
        if let Some(files) = client {
            url.push_str(&format!("&sslcert={}&sslkey={}", files.cert.display(), files.key.display()));
        }
        url
    };

    pg_connect(url("localhost", &db.file(), Some(&client))).await.unwrap();
    let expired_client = db.issue("old-client", &["postgres"], Validity::Expired);
    let refused = [
        ("no TLS", format!("postgres://postgres@localhost:{port}/postgres?sslmode=disable")),
        ("no client certificate", url("localhost", &db.file(), None)),
        ("a CA the server's certificate is not from", url("localhost", &stranger.file(), Some(&client))),
        ("a name the certificate does not carry", url("127.0.0.1", &db.file(), Some(&client))),
        ("an expired client certificate", url("localhost", &db.file(), Some(&expired_client))),
    ];
    for (case, url) in refused {
        let outcome = pg_connect(url).await;
        assert!(outcome.is_err(), "{case}: {outcome:?}");
    }
}

#[tokio::test]
async fn postgres_refuses_an_expired_server_certificate() {
    let dir = TempDir::new();
    let db = Ca::new(dir.path(), "db");
    let served = db.issue("server", &["localhost"], Validity::Expired);
    let client = db.issue("client", &["postgres"], Validity::Now);
    let (_server, port) = start_postgres(dir.path(), &served, &db.file());
    let url = format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        db.file().display(),
        client.cert.display(),
        client.key.display()
    );
    let error = pg_connect(url).await.unwrap_err();
    assert!(error.contains("failed the TLS handshake") && error.contains("expired"), "{error}");
}

/// A private Redis on a TLS port only (`port`, or a free one), requiring client certificates
/// from `ca`.
fn start_redis(dir: &Path, served: &CertFiles, ca: &Path, port: Option<u16>) -> (Server, u16) {
    let port = port.unwrap_or_else(free_port);
    let mut server = Server(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--tls-auth-clients", "yes"])
            .arg("--dir")
            .arg(dir)
            .arg("--tls-cert-file")
            .arg(&served.cert)
            .arg("--tls-key-file")
            .arg(&served.key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    wait_for(port, &mut server, "redis-server");
    (server, port)
}

async fn redis_ping(url: String, tls: RedisTls) -> Result<(), String> {
    let settings = RedisSettings { url, max_size: 1, timeout: Duration::from_secs(2), tls };
    cim_runtime::redis::connect(&settings).await.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn redis_over_tls_with_client_certificates() {
    let dir = TempDir::new();
    let cache = Ca::new(dir.path(), "cache");
    let stranger = Ca::new(dir.path(), "stranger");
    let client = cache.issue("client", &["gateway"], Validity::Now);
    let (_server, port) =
        start_redis(dir.path(), &cache.issue("server", &["localhost"], Validity::Now), &cache.file(), None);
    let (_old, old_port) =
        start_redis(dir.path(), &cache.issue("old-server", &["localhost"], Validity::Expired), &cache.file(), None);
    let tls = |ca: &Ca, identity: Option<&CertFiles>| RedisTls {
        ca: Some(ca.file()),
        identity: identity.cloned(),
        ..RedisTls::default()
    };

    redis_ping(format!("rediss://localhost:{port}"), tls(&cache, Some(&client))).await.unwrap();
    let expired_client = cache.issue("old-client", &["gateway"], Validity::Expired);
    let refused = [
        ("no TLS", format!("redis://localhost:{port}"), RedisTls::default()),
        ("no client certificate", format!("rediss://localhost:{port}"), tls(&cache, None)),
        ("a wrong CA", format!("rediss://localhost:{port}"), tls(&stranger, Some(&client))),
        ("a wrong name", format!("rediss://127.0.0.1:{port}"), tls(&cache, Some(&client))),
        ("an expired client certificate", format!("rediss://localhost:{port}"), tls(&cache, Some(&expired_client))),
        ("an expired server certificate", format!("rediss://localhost:{old_port}"), tls(&cache, Some(&client))),
    ];
    for (case, url, tls) in refused {
        let outcome = redis_ping(url, tls).await;
        assert!(outcome.is_err(), "{case}: {outcome:?}");
    }
}

/// The redis client holds its certificates as bytes read once; the pool reads the files again
/// when they change. Redis moves to a certificate from a new CA and wants client certificates
/// from that CA only: the pool made before is refused until its files are rotated on disk, then
/// its new connections use them, without being made again.
#[tokio::test]
async fn redis_ca_and_client_certificate_rotated_on_disk_reach_new_connections() {
    let dir = TempDir::new();
    let (old, new) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    // The files the client is configured with, replaced in place like a mounted Secret.
    let client = old.issue("client", &["gateway"], Validity::Now);
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::copy(old.file(), &ca_file).unwrap();
    let (first, port) = start_redis(dir.path(), &old.issue("server", &["localhost"], Validity::Now), &old.file(), None);
    let settings = RedisSettings {
        url: format!("rediss://localhost:{port}"),
        max_size: 2,
        timeout: Duration::from_secs(2),
        // Checked at every new connection, so the test needs no wait.
        tls: RedisTls { ca: Some(ca_file.clone()), identity: Some(client.clone()), reload: Duration::ZERO },
    };
    let pool = cim_runtime::redis::connect(&settings).await.unwrap();
    let ping = |pool: cim_runtime::redis::Pool| async move {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())
    };
    assert_eq!(ping(pool.clone()).await.as_deref(), Ok("PONG"));

    drop(first);
    server::wait_closed(port);
    let new_served = new.issue("new-server", &["localhost"], Validity::Now);
    let (_second, _) = start_redis(dir.path(), &new_served, &new.file(), Some(port));
    let refused = ping(pool.clone()).await;
    assert!(refused.is_err(), "the old CA file trusted the new server: {refused:?}");

    let staged = dir.path().join("client-ca.staged");
    std::fs::copy(new.file(), &staged).unwrap();
    std::fs::rename(&staged, &ca_file).unwrap();
    ca::rotate(&new.issue("new-client", &["gateway"], Validity::Now), &client);
    assert_eq!(ping(pool.clone()).await.as_deref(), Ok("PONG"));
}
