//! The peer: a Restate server (the npm build, fetched by `scripts/lib/restate.sh`) with a fresh
//! data directory and random ports, and the same workflow written with Restate's Rust SDK
//! (`bench/restate-peer`, built here with its own lockfile and target directory), registered
//! through the admin API and driven through the HTTP ingress. Any step that fails makes the
//! peer unavailable with the reason; the CIM side runs regardless.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cim_testkit::bench::{Throughput, rate};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long one workflow may take before the bench counts it failed.
const PATIENCE: Duration = Duration::from_secs(60);

pub struct Restate {
    server: Child,
    endpoint: Child,
    ingress: String,
    http: reqwest::Client,
    binary: PathBuf,
    pub version: String,
    _data: TempDir,
}

/// The server's data directory, removed when the bench ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Restate {
    pub async fn start() -> Result<Restate, String> {
        let binary = fetch().await?;
        let peer = build().await?;
        let version = output(Command::new(&binary).arg("--version")).await?.trim().to_owned();
        let data = TempDir(std::env::temp_dir().join(format!("cim-bench-restate-{}", uuid::Uuid::now_v7().simple())));
        // The defaults of a single node (the replicated log on a local log-server, RocksDB WAL
        // fsynced), on random loopback ports; JSON logs, from which the ports are read.
        let mut server = Command::new(&binary)
            .args(["--no-logo", "--listen-mode", "tcp", "--use-random-ports", "true", "--bind-ip", "127.0.0.1"])
            .arg("--base-dir")
            .arg(&data.0)
            .env("RESTATE_LOG_FORMAT", "json")
            .env("RESTATE_DISABLE_TELEMETRY", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let (ingress, admin) = ports(&mut server).await?;
        let mut endpoint = Command::new(&peer)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", peer.display()))?;
        let mut lines = BufReader::new(endpoint.stdout.take().ok_or("no endpoint stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "the endpoint did not start in 10 s".to_owned())?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let port = line.strip_prefix("listening ").ok_or_else(|| format!("unexpected endpoint output {line:?}"))?;
        let http = reqwest::Client::builder().timeout(PATIENCE).build().map_err(|e| e.to_string())?;
        // The admin API listens before the node has provisioned itself: try for a while.
        let register = || async {
            let registered = http
                .post(format!("http://127.0.0.1:{admin}/deployments"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"uri": "http://127.0.0.1:{port}"}}"#))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = registered.status();
            match status.is_success() {
                true => Ok(()),
                false => Err(format!("{status} {}", registered.text().await.unwrap_or_default())),
            }
        };
        retry(register).await.map_err(|e| format!("registering the deployment: {e}"))?;
        let restate = Restate {
            server,
            endpoint,
            ingress: format!("http://127.0.0.1:{ingress}"),
            http,
            binary,
            version,
            _data: data,
        };
        retry(|| restate.call(1)).await.map_err(|e| format!("first workflow: {e}"))?;
        Ok(restate)
    }

    /// One workflow of `steps` durable no-ops, called and answered when it completed.
    async fn call(&self, steps: usize) -> Result<(), String> {
        call(&self.http, &self.ingress, steps).await
    }

    /// `c` clients for `secs`, each calling the workflow of `steps` steps with a new key and
    /// waiting for its result; failed calls are counted, not timed out of the run.
    pub async fn closed_loop(&self, steps: usize, c: usize, secs: f64) -> (Throughput, u64) {
        let failures = Arc::new(AtomicU64::new(0));
        let (http, ingress, failed) = (self.http.clone(), self.ingress.clone(), failures.clone());
        let rate = rate(c, Duration::from_secs(1), secs, move |_, _| {
            let (http, ingress, failed) = (http.clone(), ingress.clone(), failed.clone());
            async move {
                if call(&http, &ingress, steps).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
        (rate, failures.load(Ordering::Relaxed))
    }

    /// The settings that decide when a journal entry is durable, from the server's own dump
    /// of its configuration (the defaults this run used).
    pub async fn durability(&self) -> serde_json::Value {
        let dump =
            output(Command::new(&self.binary).arg("--dump-config").env("RESTATE_DISABLE_TELEMETRY", "true")).await;
        let Ok(dump) = dump else { return serde_json::Value::Null };
        let mut section = String::new();
        let mut settings = serde_json::Map::new();
        for line in dump.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = format!("{name}.");
            } else if let Some((key, value)) = line.split_once(" = ")
                && (key.contains("fsync") || key.contains("disable-wal") || key == "default-provider")
            {
                settings.insert(format!("{section}{key}"), value.trim_matches('"').into());
            }
        }
        settings.into()
    }

    pub async fn stop(mut self) {
        let _ = self.endpoint.kill().await;
        let _ = self.server.kill().await;
    }
}

async fn call(http: &reqwest::Client, ingress: &str, steps: usize) -> Result<(), String> {
    let key = uuid::Uuid::now_v7().simple();
    let response = http
        .post(format!("{ingress}/Chain/{key}/run"))
        .header("content-type", "application/json")
        .body(steps.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() && body.trim() == steps.to_string() { Ok(()) } else { Err(format!("{status}: {body}")) }
}

/// `attempt` until it succeeds, for up to 20 s; its last error.
async fn retry<F, Fut>(attempt: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= end => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The server binary (`CIM_BENCH_RESTATE_SERVER`, else installed from npm by the script).
async fn fetch() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("CIM_BENCH_RESTATE_SERVER") {
        return Ok(path.into());
    }
    let script = repo().join("scripts/lib/restate.sh");
    Ok(output(Command::new("bash").arg(script)).await?.trim().into())
}

/// The SDK endpoint, built in release mode with its lockfile into its own target directory.
async fn build() -> Result<PathBuf, String> {
    let target =
        std::env::var("CIM_BENCH_PEER_TARGET").unwrap_or_else(|_| "/var/tmp/cim-peers/restate-peer-target".into());
    let manifest = repo().join("bench/restate-peer/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    output(
        Command::new(cargo)
            .args(["build", "--release", "--locked", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target),
    )
    .await?;
    Ok(Path::new(&target).join("release/restate-peer"))
}

/// Its stdout, or its stderr as the reason it failed.
async fn output(command: &mut Command) -> Result<String, String> {
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let out = command.stdin(Stdio::null()).output().await.map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!("{program} failed ({}): {}", out.status, stderr.trim()))
    }
}

/// The ingress and admin ports from the server's JSON log lines; the rest of the log is read
/// and dropped so the pipe never fills.
async fn ports(server: &mut Child) -> Result<(u16, u16), String> {
    let mut lines = BufReader::new(server.stdout.take().ok_or("no server stdout")?).lines();
    let (mut ingress, mut admin) = (None, None);
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let span = &entry["span"];
            let port = span["server.port"].as_u64().and_then(|p| u16::try_from(p).ok());
            match span["server_name"].as_str() {
                Some("http-ingress-server") => ingress = port,
                Some("admin-api-server") => admin = port,
                _ => {}
            }
            if ingress.is_some() && admin.is_some() {
                return true;
            }
        }
        false
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match (found, ingress, admin) {
        (Ok(true), Some(ingress), Some(admin)) => Ok((ingress, admin)),
        (Err(_), ..) => Err("the Restate server did not listen within 60 s".into()),
        _ => Err("the Restate server exited before listening".into()),
    }
}
