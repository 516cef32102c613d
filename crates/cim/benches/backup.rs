//! Backup and restore benchmark. Prints one JSON document: the rates (events/s) of `cim backup`,
//! `cim restore` (import, chains checked against the manifest, projections rebuilt; streams left
//! alone), `cim verify` and `cim streams rebuild` over one graph schema, beside `pg_dump -Fc` and
//! `pg_restore` of the same schema in the same run, with the sizes of both copies.
//!
//! `cargo bench -p cim --bench backup` (CIM_BENCH_BACKUP_EVENTS events, default 200,000).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cim_core::TenantId;
use cim_proto::graph as gpb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, database_url, nats_url, req, unique};
use sqlx::Connection;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn create_database(tag: &str) -> (String, String) {
    let name = unique(tag);
    let mut admin = sqlx::PgConnection::connect(&database_url()).await.expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create");
    let base = database_url();
    (name.clone(), format!("{}/{name}", &base[..base.rfind('/').expect("a database in the URL")]))
}

async fn drop_database(name: &str) {
    let mut admin = sqlx::PgConnection::connect(&database_url()).await.expect("postgres");
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
}

/// Writes `events` graph events through the service: graphs of 10,000 nodes, 1,000 per command.
async fn fill(graph: &Running, events: usize) {
    let mut c = GraphServiceClient::new(graph.channel().await);
    let tenant = TenantId::new();
    let mut written = 0;
    while written < events {
        let r = gpb::CreateGraphRequest { name: format!("bench {written}"), ..Default::default() };
        let id = c.create_graph(req(tenant, r)).await.expect("create").into_inner().graph_id;
        written += 1;
        for batch in 0..10 {
            let changes = (0..1000)
                .map(|n| gpb::GraphChange {
                    change: Some(gpb::graph_change::Change::AddNode(gpb::NodeSpec {
                        id: format!("n{batch}_{n}"),
                        r#type: "item".into(),
                        properties: Some(cim_proto::json::json_to_struct(
                            serde_json::json!({"name": format!("item {n}"), "weight": n}).as_object().expect("object"),
                        )),
                    })),
                })
                .collect();
            c.apply_batch(req(tenant, gpb::ApplyBatchRequest { graph_id: id.clone(), changes, ..Default::default() }))
                .await
                .expect("batch");
            written += 1000;
        }
    }
}

fn cim(url: &str, prefix: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cim"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CIM_")) {
        cmd.env_remove(k);
    }
    cmd.env("CIM_DATABASE_URL", url).env("CIM_NATS_URL", nats_url()).env("CIM_SUBJECT_PREFIX", prefix);
    cmd
}

/// Runs `cmd`, which must succeed; returns how long it took.
fn timed(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = cmd.output().expect("runs");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    started.elapsed()
}

fn size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| size(&e.path())).sum()
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

fn point(events: i64, took: Duration) -> serde_json::Value {
    serde_json::json!({"seconds": took.as_secs_f64(), "events_per_s": (events as f64 / took.as_secs_f64()).round()})
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("CIM_BENCH_BACKUP_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let (source, source_url) = create_database("bench_src").await;
    let prefix = unique("p");
    let shutdown = Shutdown::new();
    let c = config(ServiceKind::Graph, &prefix, &[("CIM_DATABASE_URL", source_url.clone())]);
    let graph = Running::spawn(
        cim_graph::app::prepare(&c, &shutdown).await.expect("graph service"),
        "graph".into(),
        prefix.clone(),
        shutdown,
    );
    fill(&graph, events).await;
    graph.stop_replica().await;
    let pool = sqlx::PgPool::connect(&source_url).await.expect("postgres");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM graph.events").fetch_one(&pool).await.expect("count");
    pool.close().await;

    let dir = std::env::temp_dir().join(unique("bench_backup"));
    let backup = timed(cim(&source_url, &prefix).args(["backup", "--to", dir.to_str().expect("utf-8")]));
    let verify = timed(cim(&source_url, &prefix).args(["verify", "--domain", "graph"]));
    let (target, target_url) = create_database("bench_dst").await;
    let restore =
        timed(cim(&target_url, &prefix).args(["restore", "--from", dir.to_str().expect("utf-8"), "--no-streams"]));
    let republish = timed(cim(&target_url, &prefix).args(["streams", "rebuild", "--domain", "graph"]));

    let dump = std::env::temp_dir().join(unique("bench_dump"));
    let pg_dump =
        timed(Command::new("pg_dump").args(["-Fc", "-n", "graph", "-f", dump.to_str().expect("utf-8"), &source_url]));
    let (plain, plain_url) = create_database("bench_pgr").await;
    let pg_restore = timed(Command::new("pg_restore").args(["-d", &plain_url, dump.to_str().expect("utf-8")]));

    let report = serde_json::json!({
        "benchmark": "backup",
        "events": n,
        "cim_backup": point(n, backup),
        "cim_restore": point(n, restore),
        "cim_verify": point(n, verify),
        "cim_streams_rebuild": point(n, republish),
        "pg_dump": point(n, pg_dump),
        "pg_restore": point(n, pg_restore),
        "bytes": {"cim_backup": size(&dir), "pg_dump": size(&dump)},
        "notes": "one graph schema (10,000-node graphs); cim restore = import + every chain checked against the manifest + projections replayed, in one transaction; pg_restore copies tables and rebuilds indexes",
    });
    let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report).unwrap_or_default());

    for name in [source, target, plain] {
        drop_database(&name).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dump);
    if let Ok(client) = async_nats::connect(nats_url()).await {
        let js = async_nats::jetstream::new(client);
        let p: cim_core::SubjectPrefix = prefix.parse().expect("prefix");
        let _ = js.delete_stream(p.stream_name(cim_core::Domain::Graph)).await;
        let _ = js.delete_stream(p.dlq_stream_name()).await;
    }
}
