//! The `cim` binary as an operator meets it.

mod support;

use std::process::Command;

use cim_testkit::s3::MotoS3;
use support::*;

/// A fresh directory under the temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cim-cli-{tag}-{}-{}", std::process::id(), uuid_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_malformed_database_url_exits_non_zero_with_one_line_naming_it() {
    let out = cim().arg("doctor").env("CIM_DATABASE_URL", "mysql://root:hunter2@db:3306/cim").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("CIM_DATABASE_URL: expected a postgres:// URL"), "{stderr}");
    assert!(lines[0].ends_with(r#"got "mysql://root:***@db:3306/cim""#), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_typo_in_a_url_is_shown_with_only_the_password_masked() {
    for (var, bad, shown) in [
        ("CIM_DATABASE_URL", "postgres:/cim:hunter2@db.internal:5432/cim", "postgres:/cim:***@db.internal:5432/cim"),
        ("CIM_REDIS_URL", "redis//:hunter2@cache:6379/0", "redis//:***@cache:6379/0"),
        (
            "CIM_NATS_URL",
            "nats://cim:hunter2@nats:4222,nats//cim:hunter2@nats2:4222",
            "nats://cim:***@nats:4222,nats//cim:***@nats2:4222",
        ),
    ] {
        let out = cim().arg("doctor").env(var, bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.trim_end().ends_with(&format!("got {shown:?}")), "{var}={bad}: {stderr}");
        assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    }
}

/// A loopback port nothing listens on: one the OS just handed out, released again.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn doctor_says_postgres_refused_without_waiting_for_the_timeout() {
    let port = closed_port();
    let started = std::time::Instant::now();
    let (code, stdout) = doctor(&[
        ("CIM_DATABASE_URL", format!("postgres://postgres:hunter2@127.0.0.1:{port}/cim")),
        ("CIM_NATS_URL", format!("nats://127.0.0.1:{port}")),
        ("CIM_REDIS_URL", format!("redis://127.0.0.1:{port}")),
        ("CIM_CONNECT_TIMEOUT_MS", "30000".into()),
    ]);
    let elapsed = started.elapsed();
    assert_eq!(code, Some(1), "{stdout}");
    let refused = format!("FAIL  postgres  Postgres at 127.0.0.1:{port} (CIM_DATABASE_URL) refused the connection");
    assert!(stdout.contains(&refused), "{stdout}");
    assert!(!stdout.contains("pool timed out") && !stdout.contains("hunter2"), "{stdout}");
    assert!(elapsed < std::time::Duration::from_secs(10), "took {elapsed:?}:\n{stdout}");
}

#[test]
fn doctor_names_a_database_that_does_not_exist() {
    let missing = format!("cim_missing_{}_{}", std::process::id(), uuid_suffix());
    let (base, _) = test_db_admin().rsplit_once('/').map(|(b, d)| (b.to_owned(), d.to_owned())).unwrap();
    let (code, stdout) = doctor(&[
        ("CIM_DATABASE_URL", format!("{base}/{missing}")),
        ("CIM_NATS_URL", test_nats()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", format!("tdoc{}", uuid_suffix())),
    ]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains(&format!("has no database {missing:?}")), "{stdout}");
    assert!(stdout.contains("fix: create the database (createdb)"), "{stdout}");
}

#[test]
fn any_bad_variable_is_named() {
    let out = cim().arg("config").env("CIM_STREAM_REPLICAS", "three").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim(),
        "invalid configuration: CIM_STREAM_REPLICAS: expected an integer from 1 to 5, got \"three\""
    );
}

#[test]
fn config_lists_every_variable_with_secrets_redacted() {
    let out = cim().arg("config").env("CIM_REDIS_URL", "redis://:s3cret@cache:6379").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for var in cim_runtime::config::VARS {
        assert!(stdout.contains(var.name), "{} missing", var.name);
    }
    assert!(stdout.contains("redis://:***@cache:6379"));
    assert!(!stdout.contains("s3cret"));
}

#[test]
fn config_shows_an_unset_secret_as_unset() {
    let out = cim().arg("config").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = |name: &str| stdout.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap().to_owned();
    let secret = line("CIM_JWT_HS256_SECRET");
    assert_eq!(secret.split_whitespace().collect::<Vec<_>>(), ["CIM_JWT_HS256_SECRET", "unset"], "{secret:?}");
    assert_eq!(line("CIM_OTLP_ENDPOINT").split_whitespace().nth(1), Some("unset"));
    let set = cim().arg("config").env("CIM_JWT_HS256_SECRET", "a-secret-of-at-least-32-bytes-0123456789").output();
    let stdout = String::from_utf8(set.unwrap().stdout).unwrap();
    let secret = stdout.lines().find(|l| l.starts_with("CIM_JWT_HS256_SECRET ")).unwrap();
    assert_eq!(secret.split_whitespace().collect::<Vec<_>>(), ["CIM_JWT_HS256_SECRET", "set", "<redacted>"]);
}

/// A secret read from its `_FILE` is not printed, not even masked; no warning calls the
/// `_FILE` variable unknown; a URL read from a file that does not parse is not shown either.
#[test]
fn config_never_prints_a_secret_read_from_a_file() {
    let dir = TempDir::new("secrets");
    let (jwt, db) = (dir.0.join("jwt"), dir.0.join("db"));
    std::fs::write(&jwt, "file-secret-file-secret-file-secret-0123\n").unwrap();
    std::fs::write(&db, "postgres://app:pg-file-pw@db:5432/cim\n").unwrap();
    let out =
        cim().arg("config").env("CIM_JWT_HS256_SECRET_FILE", &jwt).env("CIM_DATABASE_URL_FILE", &db).output().unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("file-secret") && !stdout.contains("pg-file-pw") && !stdout.contains("app:"), "{stdout}");
    assert!(!stderr.contains("no CIM component reads it"), "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("CIM_JWT_HS256_SECRET ")).unwrap();
    let shown = format!("<read from {}>", jwt.display());
    assert!(line.starts_with("CIM_JWT_HS256_SECRET ") && line.ends_with(&format!(" file     {shown}")), "{line}");
    std::fs::write(&db, "mysql://app:pg-file-pw@db/cim").unwrap();
    let out = cim().arg("config").env("CIM_DATABASE_URL_FILE", &db).output().unwrap();
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(
        all.contains("CIM_DATABASE_URL: expected") && !all.contains("pg-file-pw") && !all.contains("mysql"),
        "{all}"
    );
}

#[test]
fn a_token_from_another_shell_is_accepted_by_the_services_up_sh_started() {
    // scripts/up.sh: `cim local-secret` makes the secret in the data directory (here the XDG
    // default under XDG_DATA_HOME) and hands it to `cim serve` in CIM_JWT_HS256_SECRET.
    let home = TempDir::new("xdg");
    let with_home = |cmd: &mut Command| {
        cmd.env_remove("CIM_DATA_DIR").env("XDG_DATA_HOME", &home.0);
    };
    let mut make = cim();
    with_home(&mut make);
    let path = stdout_of(make.arg("local-secret"));
    assert_eq!(std::path::PathBuf::from(&path), home.0.join("cim").join("jwt-hs256-secret"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&path).unwrap();
    assert_eq!(secret.len(), 64, "32 random bytes as hex");
    let mut again = cim();
    with_home(&mut again);
    assert_eq!(stdout_of(again.arg("local-secret")), path);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret, "made once, then kept");

    let db = TempDb::new();
    let prefix = format!("ttok{}", uuid_suffix());
    let _cleanup = DeleteStreams { nats: test_nats(), prefix: prefix.clone() };
    let env = [
        ("CIM_DATABASE_URL", db.url.clone()),
        ("CIM_NATS_URL", test_nats()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", prefix),
        ("CIM_JWT_HS256_SECRET", secret),
    ];
    let serve = Serve::start(&env, "all");

    // Another shell: nothing but the data directory in common.
    let tenant = cim_core::TenantId::new().to_string();
    let mut token = cim();
    with_home(&mut token);
    let token = stdout_of(token.args(["token", "--roles", "writer", "--tenant", &tenant]));
    let gateway = serve.listener("gateway");
    let reply = http_get(&gateway, "/api/v1/auth/me", &token);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(&tenant) && reply.contains("writer"), "{reply}");
    let reply = http_get(&gateway, "/api/v1/auth/me", &format!("{token}x"));
    assert!(reply.starts_with("HTTP/1.1 401"), "a bad signature is refused: {reply}");
    serve.stop();
}

#[test]
fn token_without_a_secret_says_where_one_comes_from() {
    let out = cim().arg("token").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("CIM_JWT_HS256_SECRET is not set and there is no local development secret at /"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/up.sh") && stderr.contains("cim local-secret"), "{stderr}");

    // A public key configured: the local secret is not what the services verify with.
    let dir = TempDir::new("pubkey");
    let mut make = cim();
    make.env("CIM_DATA_DIR", &dir.0);
    stdout_of(make.arg("local-secret"));
    let out = cim()
        .arg("token")
        .env("CIM_DATA_DIR", &dir.0)
        .env("CIM_JWT_PUBLIC_KEY_FILE", dir.0.join("key.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("cim token signs only HS256"), "{stderr}");

    // A secret file others can read is refused, like ssh refuses such a key.
    use std::os::unix::fs::PermissionsExt;
    let file = dir.0.join("jwt-hs256-secret");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cim().arg("token").env("CIM_DATA_DIR", &dir.0).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8(out.stderr).unwrap().contains("chmod 600"));

    // Longer than the services accept: refused here rather than by every request.
    let secret = "a-secret-of-at-least-32-bytes-0123456789";
    let out = cim().args(["token", "--ttl", "90000"]).env("CIM_JWT_HS256_SECRET", secret).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("CIM_JWT_MAX_LIFETIME_SECS"), "{out:?}");
}

#[test]
fn serve_without_a_key_for_tokens_refuses_and_never_uses_the_local_secret() {
    let dir = TempDir::new("nokey");
    let mut make = cim();
    make.env("CIM_DATA_DIR", &dir.0);
    stdout_of(make.arg("local-secret"));
    // A local secret exists, but the services are given no key: they must not start with it.
    let out = cim().args(["serve", "--services", "gateway"]).env("CIM_DATA_DIR", &dir.0).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("gateway: set CIM_JWT_HS256_SECRET, CIM_JWT_PUBLIC_KEY_FILE or CIM_JWT_JWKS_URL"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/up.sh"), "{stderr}");
}

#[test]
fn a_typo_in_a_variable_name_is_warned_about() {
    let out = cim().arg("config").env("CIM_DATABSE_URL", "x").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("CIM_DATABSE_URL is set but no CIM component reads it"));
}

#[test]
fn doctor_names_a_dependency_that_is_down() {
    // Port 1 on loopback refuses connections: nothing listens there.
    let out = cim()
        .arg("doctor")
        .env("CIM_DATABASE_URL", "postgres://postgres@127.0.0.1:1/cim")
        .env("CIM_NATS_URL", "nats://127.0.0.1:1")
        .env("CIM_REDIS_URL", "redis://127.0.0.1:1")
        .env("CIM_CONNECT_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("FAIL  postgres"), "{stdout}");
    assert!(stdout.contains("FAIL  nats"), "{stdout}");
    assert!(stdout.contains("FAIL  redis"), "{stdout}");
    assert!(stdout.contains("fix:"), "{stdout}");
}

#[test]
fn doctor_reports_healthy_on_a_running_system() {
    let db = TempDb::new();
    let prefix = format!("tdoc{}", uuid_suffix());
    let env = [
        ("CIM_DATABASE_URL", db.url.clone()),
        ("CIM_NATS_URL", test_nats()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", prefix.clone()),
        ("CIM_JWT_HS256_SECRET", "doctor-test-secret-0123456789abcdef".into()),
    ];
    let stream = format!("{}_GRAPH", prefix.to_ascii_uppercase());
    let _cleanup = DeleteStreams { nats: test_nats(), prefix: prefix.clone() };
    // The gateway's cache invalidators add a durable consumer to every cached domain's stream.
    let serve = Serve::start(&env, "all");
    serve.assert_on_free_loopback_ports();
    let (code, stdout) = doctor(&env);
    assert_eq!(code, Some(0), "{stdout}");
    for line in [
        "ok    schema    graph: ".to_owned(),
        format!("ok    stream    {stream}: "),
        format!("ok    consumer  {stream} gateway-cache: 0 pending"),
        format!("ok    dlq       {}_DLQ: ", prefix.to_ascii_uppercase()),
        "ok    redis".to_owned(),
        "ok    objects   local directory /".to_owned(),
        "doctor: all ".to_owned(),
    ] {
        assert!(stdout.contains(&line), "no {line:?} in\n{stdout}");
    }
    assert!(stdout.contains("up to date") && stdout.contains("JetStream on"), "{stdout}");
    serve.stop();
}

#[test]
fn doctor_names_postgres_and_then_nats_when_they_are_unreachable() {
    // A private NATS, so that it can be stopped; the shared servers never are.
    let nats = PrivateNats::start();
    let db = TempDb::new();
    let prefix = format!("tdoc{}", uuid_suffix());
    let mut env = vec![
        ("CIM_DATABASE_URL", db.url.clone()),
        ("CIM_NATS_URL", nats.url.clone()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", prefix),
        ("CIM_CONNECT_TIMEOUT_MS", "1000".into()),
    ];
    Serve::start(&env, "graph,document,agent,workflow,webhook").stop();
    let (code, stdout) = doctor(&env);
    assert_eq!(code, Some(0), "the prepared system is healthy:\n{stdout}");

    // Postgres unreachable (nothing listens on port 1): only Postgres and what needs it.
    env[0].1 = "postgres://postgres:postgres@127.0.0.1:1/cim".into();
    let (code, stdout) = doctor(&env);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  postgres") && stdout.contains("fix: start Postgres"), "{stdout}");
    assert!(stdout.contains("skip  schema    graph: Postgres unreachable"), "{stdout}");
    assert!(stdout.contains("ok    nats") && stdout.contains("ok    stream"), "{stdout}");
    assert!(stdout.contains("checks failed: postgres\n"), "{stdout}");

    // NATS stopped.
    env[0].1 = db.url.clone();
    drop(nats);
    let (code, stdout) = doctor(&env);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  nats") && stdout.contains("fix: start NATS with JetStream"), "{stdout}");
    assert!(stdout.contains("skip  stream    NATS unreachable"), "{stdout}");
    assert!(stdout.contains("ok    postgres") && stdout.contains("ok    schema"), "{stdout}");
    assert!(stdout.contains("checks failed: nats\n"), "{stdout}");
}

#[test]
fn doctor_names_a_schema_that_is_missing_or_not_fully_migrated() {
    let db = TempDb::new();
    let env = [
        ("CIM_DATABASE_URL", db.url.clone()),
        ("CIM_NATS_URL", test_nats()),
        ("CIM_REDIS_URL", test_redis()),
        ("CIM_SUBJECT_PREFIX", format!("tdoc{}", uuid_suffix())),
    ];
    let (code, stdout) = doctor(&env);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  schema    graph: does not exist"), "{stdout}");
    assert!(stdout.contains("fix: start the graph service once"), "{stdout}");
    // Before the first start (scripts/up.sh), a schema and stream not created yet are expected.
    let mut first = cim();
    first.args(["doctor", "--before-start"]);
    for (k, v) in &env {
        first.env(k, v);
    }
    let out = first.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok    schema    graph: not created yet"), "{text}");
    assert!(text.contains("ok    stream    ") && text.contains("not created yet"), "{text}");

    // Only the event store's first migration recorded: its second (2) and the projections' (1001)
    // are missing.
    db.execute(
        "CREATE SCHEMA graph; CREATE TABLE graph._sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL, \
         installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, checksum bytea NOT NULL, \
         execution_time bigint NOT NULL); INSERT INTO graph._sqlx_migrations VALUES (1, 'event store', now(), true, '\\x00', 1)",
    );
    let (_, stdout) = doctor(&env);
    assert!(stdout.contains("FAIL  schema    graph: 2 of 3 migrations not applied: 2 (backups), 1001 ("), "{stdout}");

    // All recorded, none with the checksum of the file this build embeds.
    db.execute(
        "INSERT INTO graph._sqlx_migrations VALUES (2, 'backups', now(), true, '\\x00', 1), \
         (1001, 'graph projections', now(), true, '\\x00', 1)",
    );
    let (_, stdout) = doctor(&env);
    assert!(
        stdout.contains("FAIL  schema    graph: migration 1 (") && stdout.contains("differs from what was applied"),
        "{stdout}"
    );
}

#[test]
fn doctor_checks_an_s3_object_store_and_names_what_is_wrong() {
    let s3 = MotoS3::start();
    s3.create_bucket("cim-documents");
    // Postgres, NATS and Redis are out of this test's scope: nothing listens on port 1.
    let mut env = vec![
        ("CIM_DATABASE_URL", "postgres://postgres@127.0.0.1:1/cim".to_owned()),
        ("CIM_NATS_URL", "nats://127.0.0.1:1".into()),
        ("CIM_REDIS_URL", "redis://127.0.0.1:1".into()),
        ("CIM_CONNECT_TIMEOUT_MS", "1000".into()),
        ("CIM_OBJECT_STORE_URL", "s3://cim-documents/doctor".into()),
        ("CIM_S3_ENDPOINT", s3.endpoint.clone()),
        ("CIM_S3_ACCESS_KEY_ID", "cim".into()),
        ("CIM_S3_SECRET_ACCESS_KEY", "doctor-secret-key".into()),
    ];
    let (code, stdout) = doctor(&env);
    assert_eq!(code, Some(1), "{stdout}");
    let ok = format!("ok    objects   s3://cim-documents/doctor at {} takes writes (", s3.endpoint);
    assert!(stdout.contains(&ok), "no {ok:?} in\n{stdout}");
    assert!(!stdout.contains("doctor-secret-key"), "{stdout}");
    assert_eq!(s3.count_objects("cim-documents"), 0, "the probe object is deleted");

    // A bucket nobody created.
    env[4].1 = "s3://no-such-bucket".into();
    let (_, stdout) = doctor(&env);
    assert!(stdout.contains("FAIL  objects   object store s3://no-such-bucket at"), "{stdout}");
    assert!(stdout.contains("fix: start the S3 server (MinIO), create the bucket"), "{stdout}");
    assert!(stdout.contains("checks failed: postgres, nats, redis, objects\n"), "{stdout}");

    // The S3 server stopped.
    env[4].1 = "s3://cim-documents".into();
    drop(s3);
    let (_, stdout) = doctor(&env);
    assert!(stdout.contains("FAIL  objects   object store s3://cim-documents at"), "{stdout}");
}

#[test]
fn doctor_names_a_local_store_it_cannot_write() {
    let file = std::env::temp_dir().join(format!("cim-cli-notadir-{}-{}", std::process::id(), uuid_suffix()));
    std::fs::write(&file, b"a file where the directory should be").unwrap();
    let (code, stdout) = doctor(&[
        ("CIM_DATABASE_URL", "postgres://postgres@127.0.0.1:1/cim".to_owned()),
        ("CIM_NATS_URL", "nats://127.0.0.1:1".into()),
        ("CIM_REDIS_URL", "redis://127.0.0.1:1".into()),
        ("CIM_CONNECT_TIMEOUT_MS", "500".into()),
        ("CIM_OBJECT_STORE_URL", format!("{}/objects", file.display())),
    ]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  objects   object store") && stdout.contains("cannot create the directory"),
        "{stdout}"
    );
    assert!(stdout.contains("fix: make the directory writable"), "{stdout}");
}

/// `cim doctor` with only `env` set: (exit code, stdout).
fn doctor<V: AsRef<str>>(env: &[(&str, V)]) -> (Option<i32>, String) {
    let mut cmd = cim();
    cmd.arg("doctor");
    for (k, v) in env {
        cmd.env(k, v.as_ref());
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

/// One GET with a bearer token: the whole response.
fn http_get(addr: &str, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
}

/// A JetStream server of this test's own, stopped when dropped.
struct PrivateNats {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl PrivateNats {
    fn start() -> Self {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("cim-doctor-nats-{}-{}", std::process::id(), uuid_suffix()));
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (scripts/infra.sh up installs it)"));
        let nats = PrivateNats { child, dir, url: format!("nats://127.0.0.1:{port}") };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nats;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("private nats-server on port {port} never listened");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn serve_runs_the_graph_service_until_sigterm() {
    // A database and subject prefix of its own: nothing else's `graph` schema or stream.
    let db = TempDb::new();
    let prefix = format!("tcli{}", uuid_suffix());
    let _cleanup = DeleteStreams { nats: test_nats(), prefix: prefix.clone() };
    let env = [("CIM_DATABASE_URL", db.url.clone()), ("CIM_NATS_URL", test_nats()), ("CIM_SUBJECT_PREFIX", prefix)];
    let serve = Serve::start(&env, "graph");
    serve.assert_on_free_loopback_ports();
    serve.stop();
}

#[test]
fn serve_logs_are_plain_text_when_stdout_is_not_a_terminal() {
    use std::io::BufRead;
    let db = TempDb::new();
    let prefix = format!("tlog{}", uuid_suffix());
    let _cleanup = DeleteStreams { nats: test_nats(), prefix: prefix.clone() };
    // `scripts/up.sh > up.log`: pretty logs, stdout a pipe.
    let mut child = cim()
        .args(["serve", "--services", "graph"])
        .env("CIM_DATABASE_URL", &db.url)
        .env("CIM_NATS_URL", test_nats())
        .env("CIM_SUBJECT_PREFIX", &prefix)
        .env("CIM_LOG_FORMAT", "pretty")
        .env("CIM_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        output.push(line.clone());
        if line.starts_with("graph ") {
            let admin = line.rsplit("http://").next().unwrap().trim().to_owned();
            assert!(wait_ready(&admin), "{line}: never ready");
            break;
        }
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    output.extend(lines.map(Result::unwrap));
    assert!(child.wait().unwrap().success());
    let text = output.join("\n");
    assert!(text.contains(" INFO "), "no log lines to check:\n{text}");
    assert!(!text.contains('\x1b'), "ANSI escapes in a log written to a pipe:\n{text:?}");
}

/// `cim verify` checks every aggregate of the graph schema against its payloads as stored, and
/// names the one whose stored history was changed.
#[test]
fn verify_checks_every_chain_and_names_a_changed_history() {
    use cim_core::{Actor, AggregateId, CausationId, CorrelationId, Domain, EventContext, NewEvent, TenantId};
    let db = TempDb::new();
    let run = || {
        let out = cim().args(["verify"]).env("CIM_DATABASE_URL", &db.url).output().unwrap();
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (code, text) = run();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("graph: schema graph has no events yet"), "{text}");

    rt().block_on(async {
        let pool = cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
            url: db.url.clone(),
            schema: "graph".into(),
            max_connections: 2,
            connect_timeout: std::time::Duration::from_secs(5),
            application_name: "cim-cli-test".into(),
        })
        .await
        .unwrap();
        let store = cim_eventstore::EventStore::open(
            pool.clone(),
            cim_eventstore::StoreConfig {
                domain: Domain::Graph,
                schema: "graph".into(),
                snapshot_every: 1000,
                upcasters: cim_core::Upcasters::new(),
            },
        )
        .await
        .unwrap();
        let tenant = TenantId::new();
        for _ in 0..3 {
            let context = EventContext {
                domain: Domain::Graph,
                aggregate_type: "counter".parse().unwrap(),
                aggregate_id: AggregateId::new(),
                tenant_id: tenant,
                actor: Actor::service("test"),
                correlation_id: CorrelationId::new(),
                causation_id: CausationId::new(),
            };
            // A double that a rounding parser reads back one bit off.
            let events = (0..2)
                .map(|n| NewEvent {
                    event_type: "counted".parse().unwrap(),
                    schema_version: 1,
                    payload: serde_json::json!({"n": n, "x": 2.7715077941825975e-163}),
                })
                .collect();
            let append = cim_eventstore::Append {
                context,
                expected: cim_eventstore::Expected::NoStream,
                events,
                idempotency_key: None,
            };
            store.append(append).await.unwrap();
        }
        pool.close().await;
    });
    let (code, text) = run();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("graph: 3 aggregates, 6 events verified; 0 broken"), "{text}");

    db.execute(
        "UPDATE graph.events SET payload = '{\"n\": 7}' \
         WHERE sequence = 2 AND aggregate_id = (SELECT aggregate_id FROM graph.events ORDER BY position LIMIT 1)",
    );
    let (code, text) = run();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("BROKEN aggregate") && text.contains("hash does not match"), "{text}");
    assert!(text.contains("3 aggregates, 4 events verified; 1 broken"), "{text}");
}

/// `cim service-token`: the metadata a worker program sends, signed so that a service holding
/// the same CIM_SERVICE_TOKEN_SECRET takes it; refused without the key or with bad input.
#[test]
fn a_service_token_is_metadata_the_services_take() {
    let key = "the services' shared key, 32+ bytes";
    let tenant = cim_core::TenantId::new().to_string();
    let printed = stdout_of(
        cim()
            .args(["service-token", "--tenant", &tenant, "--actor", "service:worker-7", "--roles", "reader"])
            .env("CIM_SERVICE_TOKEN_SECRET", key),
    );
    let mut headers = http::HeaderMap::new();
    for line in printed.lines() {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("not `name: value`: {line}"));
        headers.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    assert_eq!(headers["x-cim-tenant"], tenant.as_str());
    let now = cim_runtime::identity::now_secs();
    assert_eq!(cim_runtime::identity::CallerKey::new(key).verify(&headers, now), Ok(()));
    let other = cim_runtime::identity::CallerKey::new("another key that is 32+ bytes long");
    assert!(other.verify(&headers, now).is_err());

    let unset = cim().args(["service-token", "--tenant", &tenant]).env_remove("CIM_SERVICE_TOKEN_SECRET").output();
    let unset = unset.unwrap();
    assert_eq!(unset.status.code(), Some(2), "{unset:?}");
    assert!(String::from_utf8_lossy(&unset.stderr).contains("CIM_SERVICE_TOKEN_SECRET is not set"), "{unset:?}");
    for bad in [["--tenant", "nope"], ["--ttl", "99999999"]] {
        let mut args = vec!["service-token", "--tenant", tenant.as_str()];
        args.extend(bad);
        let out = cim().args(&args).env("CIM_SERVICE_TOKEN_SECRET", key).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(bad[0]), "{bad:?}: {out:?}");
    }
}
