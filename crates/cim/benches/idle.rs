//! Idle resident memory of every service binary. Prints one JSON document.
//!
//! Each binary (`cim-graph`, `cim-document`, … as deployed, one process per service) is started
//! beside the others, wired to them as in production (the gateway and workflow call the domain
//! services), on a database and subject prefix of this run, with every listener on a free port.
//! Once every `/health/ready` answers 200 and the processes have idled a few seconds, their
//! `/proc/<pid>/status` is read: `VmRSS` (resident), its parts `RssAnon` (heap, stacks) and
//! `RssFile` (mapped binary and libraries), and `VmHWM` (the peak since start). Goal: ≤ 20 MB each.
//!
//! The binaries are the workspace's, in the same profile directory as this bench:
//! `cargo build --release --bins && cargo bench -p cim --bench idle` (scripts/bench.sh does both).
//! `CIM_BENCH_IDLE_SECONDS` (default 5): how long they idle before the reading.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cim_testkit::domain::{database_url, nats_url, unique};
use sqlx::Connection;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The service binaries and the variable prefix of each one's settings.
const SERVICES: [(&str, &str); 7] = [
    ("graph", "GRAPH"),
    ("document", "DOCUMENT"),
    ("agent", "AGENT"),
    ("workflow", "WORKFLOW"),
    ("webhook", "WEBHOOK"),
    ("gateway", "GATEWAY"),
    ("websocket", "WEBSOCKET"),
];

/// 20 MB (10^6 bytes) in MiB, the unit of the readings.
const GOAL_MIB: f64 = 20e6 / 1_048_576.0;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Where `cargo build` put the binaries of the profile this bench was built with.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    // <target>/<profile>/deps/idle-<hash>
    exe.parent().and_then(|deps| deps.parent()).expect("profile directory").to_path_buf()
}

fn ready(admin: &str) -> bool {
    let Ok(mut tcp) = TcpStream::connect(admin) else { return false };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = tcp.write_all(b"GET /health/ready HTTP/1.0\r\nHost: bench\r\n\r\n");
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0)
}

struct Started {
    name: &'static str,
    child: Child,
    admin: String,
}

#[tokio::main]
async fn main() {
    let idle_seconds: u64 = std::env::var("CIM_BENCH_IDLE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let bin = profile_dir();
    let missing: Vec<String> = SERVICES
        .iter()
        .map(|(name, _)| bin.join(format!("cim-{name}")))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "missing service binaries {missing:?}: run `cargo build --release --bins` (the bench's profile) first"
    );

    let name = unique("bench_idle");
    let mut admin = sqlx::PgConnection::connect(&database_url()).await.expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create");
    let base = database_url();
    let db_url = format!("{}/{name}", &base[..base.rfind('/').expect("a database in the URL")]);
    let prefix = unique("p");
    let objects = std::env::temp_dir().join(unique("idle_objects"));

    // Every listener on a port of its own; the callers told where the others listen.
    let ports: Vec<(u16, u16)> = SERVICES.iter().map(|_| (free_port(), free_port())).collect();
    let grpc_url = |service: &str| {
        let i = SERVICES.iter().position(|(n, _)| *n == service).expect("service");
        format!("http://127.0.0.1:{}", ports[i].0)
    };
    let wiring = [
        ("CIM_GATEWAY_GRAPH_URLS", grpc_url("graph")),
        ("CIM_GATEWAY_DOCUMENT_URLS", grpc_url("document")),
        ("CIM_GATEWAY_AGENT_URLS", grpc_url("agent")),
        ("CIM_GATEWAY_WORKFLOW_URLS", grpc_url("workflow")),
        ("CIM_GATEWAY_WEBHOOK_URLS", grpc_url("webhook")),
        ("CIM_WORKFLOW_GRAPH_URLS", grpc_url("graph")),
        ("CIM_WORKFLOW_DOCUMENT_URLS", grpc_url("document")),
        ("CIM_WORKFLOW_AGENT_URLS", grpc_url("agent")),
        ("CIM_WORKFLOW_SELF_URLS", grpc_url("workflow")),
    ];
    let mut started = Vec::new();
    for ((service, var), (port, admin_port)) in SERVICES.iter().zip(&ports) {
        let mut cmd = Command::new(bin.join(format!("cim-{service}")));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CIM_")) {
            cmd.env_remove(k);
        }
        let admin = format!("127.0.0.1:{admin_port}");
        cmd.env("CIM_DATABASE_URL", &db_url)
            .env("CIM_NATS_URL", nats_url())
            .env("CIM_SUBJECT_PREFIX", &prefix)
            .env("CIM_OBJECT_STORE_URL", format!("file://{}", objects.display()))
            .env("CIM_JWT_HS256_SECRET", "idle-bench-secret-0123456789abcdef0123")
            .env("CIM_LOG", "warn")
            .env(format!("CIM_{var}_ADDR"), format!("127.0.0.1:{port}"))
            .env(format!("CIM_{var}_ADMIN_ADDR"), &admin)
            .envs(wiring.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cim-{service} starts: {e}"));
        started.push(Started { name: service, child, admin });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ready_after = vec![None; started.len()];
    let begun = Instant::now();
    while ready_after.iter().any(Option::is_none) {
        for (i, s) in started.iter_mut().enumerate() {
            if ready_after[i].is_none() {
                if let Ok(Some(exit)) = s.child.try_wait() {
                    panic!("cim-{} exited before it was ready: {exit}", s.name);
                }
                if ready(&s.admin) {
                    ready_after[i] = Some(begun.elapsed().as_secs_f64());
                }
            }
        }
        assert!(Instant::now() < deadline, "not ready within 120 s: {:?}", ready_after);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(idle_seconds));

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows = serde_json::Map::new();
    let mut over = Vec::new();
    for (s, ready_s) in started.iter().zip(&ready_after) {
        let pid = s.child.id();
        let rss = mib(status_kib(pid, "VmRSS:"));
        if rss.is_none_or(|m| m > GOAL_MIB) {
            over.push(s.name);
        }
        rows.insert(
            format!("cim-{}", s.name),
            serde_json::json!({
                "rss_mib": rss,
                "rss_anon_mib": mib(status_kib(pid, "RssAnon:")),
                "rss_file_mib": mib(status_kib(pid, "RssFile:")),
                "peak_vmhwm_mib": mib(status_kib(pid, "VmHWM:")),
                "threads": std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|t| {
                    t.lines().find(|l| l.starts_with("Threads:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                }),
                "ready_after_s": ready_s.map(|s| (s * 10.0).round() / 10.0),
            }),
        );
    }
    for s in &mut started {
        let _ = Command::new("kill").arg("-TERM").arg(s.child.id().to_string()).status();
    }
    for s in &mut started {
        let _ = s.child.wait();
    }
    let report = serde_json::json!({
        "benchmark": "idle resident memory per service binary",
        "how": "all seven binaries started together on this run's database and prefix, ready (/health/ready 200), then idle; /proc/<pid>/status",
        "idle_seconds_before_reading": idle_seconds,
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "load_average": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "services": rows,
        "goal_mib_each": (GOAL_MIB * 100.0).round() / 100.0,
        "goal": "20 MB each",
        "met": over.is_empty(),
        "over_goal": over,
    });
    let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report).unwrap_or_default());

    let _ = std::fs::remove_dir_all(&objects);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await;
    if let Ok(client) = async_nats::connect(nats_url()).await {
        let js = async_nats::jetstream::new(client);
        let prefix: cim_core::SubjectPrefix = prefix.parse().expect("prefix");
        for d in cim_core::Domain::ALL {
            let _ = js.delete_stream(prefix.stream_name(d)).await;
        }
        let _ = js.delete_stream(prefix.dlq_stream_name()).await;
    }
}
