//! What the backup suites share: a whole database of their own (the domain schemas have their
//! fixed names inside it, as in a deployment), the four domain services on port 0 over it with
//! a subject prefix of their own, writers through their gRPC APIs, the `cim` binary, and
//! comparisons of projections and streams.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cim_core::TenantId;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
use cim_proto::{agent as apb, document as dpb, graph as gpb, workflow as wpb};
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, database_url, nats_url, req, unique};
use sqlx::Connection;

/// At most two of these tests run their four services at once: each holds about twenty
/// Postgres connections, and the shared server's hundred are used by others too.
pub static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A database made for one test and dropped with it.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    pub url: String,
}

impl Database {
    pub async fn create(tag: &str) -> Database {
        let name = unique(tag);
        let mut admin = sqlx::PgConnection::connect(&database_url()).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
        let base = database_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        Database { name, url }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&self.url).await.unwrap()
    }

    pub async fn drop_now(self) {
        let mut admin = sqlx::PgConnection::connect(&database_url()).await.unwrap();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
    }
}

/// Every domain service over one database.
pub struct Services {
    pub graph: Running,
    pub document: Running,
    pub agent: Running,
    pub workflow: Running,
    pub objects: PathBuf,
}

/// The domains and their schemas, in one place for the comparisons.
pub const DOMAINS: [(&str, cim_core::Domain); 4] = [
    ("graph", cim_core::Domain::Graph),
    ("document", cim_core::Domain::Document),
    ("agent", cim_core::Domain::Agent),
    ("workflow", cim_core::Domain::Workflow),
];

impl Services {
    pub async fn start(db: &Database, prefix: &str) -> Services {
        let objects = std::env::temp_dir().join(unique("objects"));
        let vars = [
            ("CIM_DATABASE_URL", db.url.clone()),
            ("CIM_OBJECT_STORE_URL", objects.display().to_string()),
            ("CIM_DATABASE_MAX_CONNECTIONS", "4".to_owned()),
        ];
        let shutdown = Shutdown::new();
        let c = config(ServiceKind::Graph, prefix, &vars);
        let graph = cim_graph::app::prepare(&c, &shutdown).await.unwrap();
        let graph = Running::spawn(graph, "graph".into(), prefix.into(), shutdown);
        let shutdown = Shutdown::new();
        let c = config(ServiceKind::Document, prefix, &vars);
        let document = cim_document::app::prepare(&c, &shutdown).await.unwrap();
        let document = Running::spawn(document, "document".into(), prefix.into(), shutdown);
        let shutdown = Shutdown::new();
        let c = config(ServiceKind::Agent, prefix, &vars);
        let agent = cim_agent::app::prepare(&c, &shutdown).await.unwrap();
        let agent = Running::spawn(agent, "agent".into(), prefix.into(), shutdown);
        // Through its app module only: its engine runs as in a deployment.
        let shutdown = Shutdown::new();
        let c = config(ServiceKind::Workflow, prefix, &vars);
        let workflow = cim_workflow::app::prepare(&c, &shutdown).await.unwrap();
        let workflow = Running::spawn(workflow, "workflow".into(), prefix.into(), shutdown);
        Services { graph, document, agent, workflow, objects }
    }

    /// Stops the services (the database goes with [`Database::drop_now`]) and drops the prefix's
    /// streams.
    pub async fn stop(self) {
        let prefix = self.graph.prefix.clone();
        for running in [self.graph, self.document, self.agent, self.workflow] {
            running.stop_replica().await;
        }
        drop_streams(&prefix).await;
        let _ = std::fs::remove_dir_all(&self.objects);
    }
}

pub async fn drop_streams(prefix: &str) {
    let js = jetstream().await;
    let prefix: cim_core::SubjectPrefix = prefix.parse().unwrap();
    for (_, domain) in DOMAINS {
        let _ = js.delete_stream(prefix.stream_name(domain)).await;
    }
    let _ = js.delete_stream(prefix.dlq_stream_name()).await;
}

pub async fn jetstream() -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap())
}

/// Writes graphs of `nodes` nodes each, `per_batch` nodes per command (one event per node, one
/// for the graph); returns how many events it wrote.
pub async fn write_graphs_at(
    grpc: SocketAddr,
    tenant: TenantId,
    graphs: usize,
    nodes: usize,
    per_batch: usize,
) -> usize {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap();
    let mut c = GraphServiceClient::new(channel);
    let mut events = 0;
    for g in 0..graphs {
        let r = gpb::CreateGraphRequest { name: format!("graph {g}"), ..Default::default() };
        let id = c.create_graph(req(tenant, r)).await.unwrap().into_inner().graph_id;
        events += 1;
        for start in (0..nodes).step_by(per_batch) {
            let changes = (start..(start + per_batch).min(nodes))
                .map(|n| gpb::GraphChange {
                    change: Some(gpb::graph_change::Change::AddNode(gpb::NodeSpec {
                        id: format!("n{n}"),
                        r#type: "item".into(),
                        properties: Some(cim_proto::json::json_to_struct(
                            serde_json::json!({"n": n, "x": 0.1 * n as f64}).as_object().unwrap(),
                        )),
                    })),
                })
                .collect::<Vec<_>>();
            events += changes.len();
            let r = gpb::ApplyBatchRequest { graph_id: id.clone(), changes, ..Default::default() };
            c.apply_batch(req(tenant, r)).await.unwrap();
        }
    }
    events
}

/// Documents with uploaded content (content records are rows events cannot rebuild), some with
/// an idempotency key; returns the events written.
pub async fn write_documents(s: &Running, tenant: TenantId, count: usize) -> usize {
    use dpb::upload_content_request::Part;
    let mut c = DocumentServiceClient::new(s.channel().await);
    let run = unique("k");
    for d in 0..count {
        let options = Some(cim_proto::common::CommandOptions {
            idempotency_key: format!("create-{run}-{d}"),
            ..Default::default()
        });
        let r = dpb::CreateDocumentRequest { title: format!("document {d}"), options, ..Default::default() };
        let id = c.create_document(req(tenant, r)).await.unwrap().into_inner().document_id;
        let start = dpb::UploadStart { document_id: id, content_type: "text/plain".into(), ..Default::default() };
        let parts = vec![
            dpb::UploadContentRequest { part: Some(Part::Start(start)) },
            dpb::UploadContentRequest { part: Some(Part::Chunk(format!("the text of document {d}").into_bytes())) },
        ];
        c.upload_content(req(tenant, tokio_stream::iter(parts))).await.unwrap();
    }
    2 * count
}

/// Agents and tasks (two aggregate types in one schema); returns the events written.
pub async fn write_agents(s: &Running, tenant: TenantId, agents: usize, tasks: usize) -> usize {
    let mut c = AgentServiceClient::new(s.channel().await);
    for a in 0..agents {
        let r = apb::DeployAgentRequest {
            name: format!("agent_{a}"),
            agent_type: "ai".into(),
            max_concurrent_tasks: 2,
            ..Default::default()
        };
        c.deploy_agent(req(tenant, r)).await.unwrap();
    }
    for t in 0..tasks {
        let r = apb::SubmitTaskRequest { priority: (t % 7) as u32, correlation: format!("t{t}"), ..Default::default() };
        c.submit_task(req(tenant, r)).await.unwrap();
    }
    agents + tasks
}

/// Workflow definitions and instances, left where the engine has nothing more to do (so the
/// original and a restored copy answer alike): instances of `calc` wait at a manual step after
/// an automated one, `quick` ones complete; the waiting ones get a context variable and a
/// signal. Returns the events written (every aggregate's version, once settled) and the ids.
pub async fn write_workflows(s: &Running, tenant: TenantId, instances: usize) -> (usize, Vec<String>) {
    let mut c = WorkflowServiceClient::new(s.channel().await);
    let object = |v: serde_json::Value| cim_proto::json::json_to_struct(v.as_object().unwrap());
    let calc = serde_json::json!({"name": "calc", "steps": [
        {"id": "total", "kind": "automated", "set": {"total": "price * qty"}},
        {"id": "review", "kind": "manual", "depends_on": ["total"]}
    ]});
    let quick = serde_json::json!({"name": "quick", "steps": [{"id": "go", "kind": "automated", "set": {"x": "1"}}]});
    let mut events = 0;
    let mut ids = Vec::new();
    for (definition, settled) in [(calc, "running"), (quick, "completed")] {
        let r = wpb::CreateDefinitionRequest { definition: Some(object(definition)), ..Default::default() };
        let d = c.create_definition(req(tenant, r)).await.unwrap().into_inner();
        events += d.version as usize;
        for i in 0..instances {
            let context = object(serde_json::json!({"price": 3, "qty": i}));
            let r =
                wpb::StartWorkflowRequest { definition_id: d.id.clone(), context: Some(context), ..Default::default() };
            let id = c.start_workflow(req(tenant, r)).await.unwrap().into_inner().id;
            let w = settle(&mut c, tenant, &id, settled).await;
            if settled == "running" {
                let value =
                    Some(prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(format!("v{i}"))) });
                let r = wpb::SetContextVariableRequest {
                    instance_id: id.clone(),
                    key: "note".into(),
                    value,
                    ..Default::default()
                };
                c.set_context_variable(req(tenant, r)).await.unwrap();
                let r = wpb::SendSignalRequest { instance_id: id.clone(), name: "ping".into(), ..Default::default() };
                c.send_signal(req(tenant, r)).await.unwrap();
                events += w.version as usize + 2;
            } else {
                events += w.version as usize;
            }
            ids.push(id);
        }
    }
    (events, ids)
}

/// The instance once it is `running` with its manual step waiting, or `completed`.
async fn settle(
    c: &mut WorkflowServiceClient<tonic::transport::Channel>,
    tenant: TenantId,
    id: &str,
    status: &str,
) -> wpb::Workflow {
    for _ in 0..500 {
        let w =
            c.get_workflow(req(tenant, wpb::GetWorkflowRequest { instance_id: id.into() })).await.unwrap().into_inner();
        let waiting = w.steps.iter().any(|s| s.step_id == "review" && s.status == "running");
        if w.status == status && (status != "running" || waiting) {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("workflow {id} did not reach {status}");
}

/// The `cim` binary with only what the test sets: this database, this prefix.
pub fn cim(db: &Database, prefix: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cim"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CIM_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CIM_DATABASE_URL", &db.url).env("CIM_NATS_URL", nats_url()).env("CIM_SUBJECT_PREFIX", prefix);
    cmd.env("CIM_OBJECT_STORE_URL", std::env::temp_dir().join("cim-backup-tests-unused").display().to_string());
    cmd
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

pub fn describe(out: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Columns a projection table shares with a running engine, which writes them without an event:
/// the workflow engine puts an instance back to sleep (`due_at`) after finding nothing to do, and
/// leases it while it looks. A rebuild makes every unfinished instance due at its last event, so
/// the restored engine looks once and puts it back; the public API never shows either.
const ENGINE_STATE: &[(&str, &[&str])] = &[("workflow_due", &["due_at", "leased_until"])];

/// Every table of `schema` but the event store's bookkeeping, each as its sorted rows.
pub async fn projections(pool: &sqlx::PgPool, schema: &str) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
         AND table_name NOT IN ('events', 'outbox', 'snapshots', 'inbox', 'backups', '_sqlx_migrations') \
         ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut all = Vec::new();
    for t in tables {
        let row = match ENGINE_STATE.iter().find(|(table, _)| *table == t) {
            Some((_, columns)) => {
                format!(
                    "(row_to_json(t)::jsonb{})::text",
                    columns.iter().map(|c| format!(" - '{c}'")).collect::<String>()
                )
            }
            None => "row_to_json(t)::text".to_owned(),
        };
        let sql = format!("SELECT {row} FROM {schema}.{t} t ORDER BY 1");
        all.push((t, sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap()));
    }
    all
}

pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap()
}

/// Waits until `domain`'s stream under `prefix` holds `n` messages (the relay caught up).
pub async fn stream_holds(prefix: &str, domain: cim_core::Domain, n: u64) -> u64 {
    let name = prefix.parse::<cim_core::SubjectPrefix>().unwrap().stream_name(domain);
    let js = jetstream().await;
    let mut last = 0;
    for _ in 0..300 {
        last = js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
        if last >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

/// Segment files under a backup directory, sorted.
pub fn segment_files(dir: &Path, schema: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("events").join(schema))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}
