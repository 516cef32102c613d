//! What the tests of the `cim` binary share: the binary with a clean environment, the test
//! servers, a database and subject prefix of a test's own, and `cim serve` on free ports.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn cim() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cim"));
    // A clean slate: only what each test sets.
    for (k, _) in std::env::vars() {
        if k.starts_with("CIM_") {
            cmd.env_remove(k);
        }
    }
    // The default store is relative to the working directory: keep it out of the source tree.
    let objects = std::env::temp_dir().join(format!("cim-cli-objects-{}", std::process::id()));
    cmd.env("CIM_OBJECT_STORE_URL", format!("file://{}", objects.display()));
    // Every listener of every service on a free port: CIM may be running on this machine with
    // its default ports (scripts/up.sh) while the suite runs, so no test may take one.
    for listener in cim_runtime::config::VARS.iter().filter(|v| v.name.ends_with("_ADDR")) {
        cmd.env(listener.name, "127.0.0.1:0");
    }
    // Never this user's own data directory (its development signing secret): one that does not
    // exist unless a test makes it.
    cmd.env("CIM_DATA_DIR", std::env::temp_dir().join(format!("cim-cli-data-{}-absent", std::process::id())));
    cmd
}

/// The services `cim serve --services all` runs, in the order it announces them.
pub const ALL_SERVICES: [&str; 7] = ["graph", "document", "agent", "workflow", "webhook", "gateway", "websocket"];

pub fn test_db_admin() -> String {
    std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn test_nats() -> String {
    std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn test_redis() -> String {
    std::env::var("CIM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A database of its own on the test server, dropped afterwards.
pub struct TempDb {
    pub name: String,
    pub url: String,
}

impl TempDb {
    pub fn new() -> Self {
        let admin = test_db_admin();
        let name = format!("cim_doctor_{}_{}", std::process::id(), uuid_suffix());
        let (base, _) = admin.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        Self::admin_sql(&admin, &format!("CREATE DATABASE {name}"));
        TempDb { name, url }
    }

    pub fn admin_sql(url: &str, sql: &str) {
        rt().block_on(async {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&pool).await.unwrap();
            pool.close().await;
        });
    }

    pub fn execute(&self, sql: &str) {
        Self::admin_sql(&self.url, sql);
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        Self::admin_sql(&test_db_admin(), &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Removes every stream of a test's subject prefix (`<PREFIX>_GRAPH`, `_DLQ`, and those the
/// websocket feed makes for the other domains) from the shared NATS.
pub struct DeleteStreams {
    pub nats: String,
    pub prefix: String,
}

impl Drop for DeleteStreams {
    fn drop(&mut self) {
        let mine = format!("{}_", self.prefix.to_ascii_uppercase());
        rt().block_on(async {
            let Ok(client) = async_nats::connect(&self.nats).await else { return };
            let mut names = Vec::new();
            loop {
                let page = format!("{{\"offset\":{}}}", names.len());
                let Ok(reply) = client.request("$JS.API.STREAM.NAMES", page.into()).await else { break };
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&reply.payload) else { break };
                let page: Vec<String> = value["streams"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                let total = value["total"].as_u64().unwrap_or(0) as usize;
                let done = page.is_empty();
                names.extend(page);
                if done || names.len() >= total {
                    break;
                }
            }
            for name in names.into_iter().filter(|n| n.starts_with(&mine)) {
                let _ = client.request(format!("$JS.API.STREAM.DELETE.{name}"), "".into()).await;
            }
        });
    }
}

/// `cim serve` on free ports, ready; killed when dropped.
pub struct Serve {
    child: std::process::Child,
    /// The line each service printed when it listened (`graph     gRPC 127.0.0.1:…  admin http://…`).
    pub announced: Vec<String>,
    /// Every later line of its stdout (its logs), read until it exits, so its stdout never
    /// fills or breaks.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    pub fn start<V: AsRef<str>>(env: &[(&str, V)], services: &str) -> Self {
        use std::io::BufRead;
        let mut cmd = cim();
        cmd.args(["serve", "--services", services]).env("CIM_LOG", "warn").stdout(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v.as_ref());
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut serve = Serve { child, announced: Vec::new(), output: Default::default() };
        let want: Vec<&str> = if services == "all" { ALL_SERVICES.to_vec() } else { services.split(',').collect() };
        let mut lines = std::io::BufReader::new(stdout).lines();
        for service in want {
            // JSON log lines (CIM_LOG_FORMAT=json) may come before an announcement: kept.
            let line = loop {
                let line = lines.next().expect("cim serve exited before it listened").unwrap();
                if !line.starts_with('{') {
                    break line;
                }
                serve.output.lock().unwrap().push(line);
            };
            assert!(line.starts_with(service.trim()), "expected {service} to announce itself, got {line:?}");
            let admin = line.rsplit("http://").next().unwrap().trim().to_owned();
            assert!(wait_ready(&admin), "{line}: never ready");
            serve.announced.push(line);
        }
        let output = serve.output.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                output.lock().unwrap().push(line);
            }
        });
        serve
    }

    /// The address `service` announced first (its listener; the admin listener comes after).
    pub fn listener(&self, service: &str) -> String {
        let line = self.announced.iter().find(|l| l.starts_with(service)).expect("the service announced itself");
        line.split_whitespace()
            .map(|word| word.split_once("://").map_or(word, |(_, rest)| rest))
            .filter_map(|word| word.split('/').next())
            .find(|word| word.parse::<std::net::SocketAddr>().is_ok())
            .expect("an address")
            .to_owned()
    }

    /// Every address a service announced is on loopback with a port the OS chose, none a default
    /// from the table (`cim()` sets every CIM_*_ADDR to 127.0.0.1:0).
    pub fn assert_on_free_loopback_ports(&self) {
        let defaults: Vec<u16> = cim_runtime::config::VARS
            .iter()
            .filter(|v| v.name.ends_with("_ADDR"))
            .filter_map(|v| v.default?.rsplit_once(':')?.1.parse().ok())
            .collect();
        for line in &self.announced {
            let addrs: Vec<std::net::SocketAddr> = line
                .split_whitespace()
                .map(|word| word.split_once("://").map_or(word, |(_, rest)| rest))
                .filter_map(|word| word.split('/').next()?.parse().ok())
                .collect();
            assert_eq!(addrs.len(), 2, "a listener and an admin listener in {line:?}");
            for addr in addrs {
                assert!(addr.ip().is_loopback(), "{line:?}: {addr} is not on loopback");
                assert!(!defaults.contains(&addr.port()), "{line:?}: {addr} is a default port");
            }
        }
    }

    pub fn stop(mut self) {
        assert!(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "cim serve: {status:?}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_ready(admin: &str) -> bool {
    use std::io::{Read, Write};
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            let _ = write!(s, "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.1 200") {
                return true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

pub fn uuid_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 0xffff_ffff
    )
}

/// A receiver on 127.0.0.1: answers the CloudEvents validation handshake and records each POST's
/// headers, answering 200.
/// The headers of each POST a [`receiver`] took, in order.
pub type Deliveries = Arc<Mutex<Vec<HashMap<String, String>>>>;

pub fn receiver() -> (String, Deliveries) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: Deliveries = Arc::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut start = String::new();
                    if reader.read_line(&mut start).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = HashMap::new();
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        }
                    }
                    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let answer = if start.starts_with("OPTIONS") {
                        let origin = headers.get("webhook-request-origin").cloned().unwrap_or_default();
                        format!("HTTP/1.1 200 OK\r\nWebHook-Allowed-Origin: {origin}\r\nContent-Length: 0\r\n\r\n")
                    } else {
                        record.lock().unwrap().push(headers);
                        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_owned()
                    };
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Polls `done` until it holds, failing after `patience`.
pub fn wait(what: &str, patience: Duration, done: impl Fn() -> bool) {
    let until = Instant::now() + patience;
    while !done() {
        assert!(Instant::now() < until, "waited {patience:?} for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
