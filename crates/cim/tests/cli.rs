//! The `cim` binary as an operator meets it.

use std::process::Command;

fn cim() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cim"));
    // A clean slate: only what each test sets.
    for (k, _) in std::env::vars() {
        if k.starts_with("CIM_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn a_malformed_database_url_exits_non_zero_with_one_line_naming_it() {
    let out = cim().arg("doctor").env("CIM_DATABASE_URL", "mysql://root:hunter2@db:3306/cim").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("CIM_DATABASE_URL: expected a postgres:// URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert!(out.stdout.is_empty());
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
fn doctor_is_happy_with_the_test_infrastructure() {
    let db = std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let nats = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let redis = std::env::var("CIM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let out = cim()
        .arg("doctor")
        .env("CIM_DATABASE_URL", db)
        .env("CIM_NATS_URL", nats)
        .env("CIM_REDIS_URL", redis)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok    nats") && stdout.contains("JetStream on"), "{stdout}");
}

#[test]
fn serve_runs_the_graph_service_until_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    let db = std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let nats = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = format!("tcli{}", &uuid_suffix());
    let mut child = cim()
        .args(["serve", "--services", "graph"])
        .env("CIM_DATABASE_URL", db)
        .env("CIM_NATS_URL", nats)
        .env("CIM_SUBJECT_PREFIX", &prefix)
        .env("CIM_GRAPH_ADDR", "127.0.0.1:0")
        .env("CIM_GRAPH_ADMIN_ADDR", "127.0.0.1:0")
        .env("CIM_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with("graph"), "{line}");
    let admin = line.rsplit("http://").next().unwrap().trim().to_owned();
    let mut ready = false;
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(&admin).unwrap();
        write!(s, "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        if body.starts_with("HTTP/1.1 200") {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ready, "never ready");
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

fn uuid_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 0xffff_ffff
    )
}
