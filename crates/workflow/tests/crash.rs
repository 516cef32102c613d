//! The workflow service as its own process, killed with SIGKILL while 200 instances are in
//! flight with timers pending: after a restart every instance completes, no timer fired early,
//! and every call a step made to the graph service happened exactly once (counted in the graph
//! service's own events).
//!
//! The process gets a database of its own (the binary uses the schema `workflow`, which a CIM
//! running on this machine owns in the shared database) and ports picked free by the test.

#[path = "support/service.rs"]
mod service;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cim_core::{Domain, SubjectPrefix, TenantId};
use cim_proto::graph as gpb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_proto::workflow as pb;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, database_url, nats_url, req, unique};
use serde_json::json;
use service::{define, object};

const INSTANCES: usize = 200;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The workflow binary on `database`, reaching the graph service at `graph`.
struct Process {
    env: Vec<(String, String)>,
    grpc: String,
    child: Child,
}

impl Process {
    fn start(database: &str, prefix: &str, graph: &str) -> Process {
        let (grpc, admin) = (free_port(), free_port());
        let env = vec![
            ("CIM_DATABASE_URL".to_owned(), database.to_owned()),
            ("CIM_NATS_URL".to_owned(), nats_url()),
            ("CIM_SUBJECT_PREFIX".to_owned(), prefix.to_owned()),
            ("CIM_WORKFLOW_ADDR".to_owned(), format!("127.0.0.1:{grpc}")),
            ("CIM_WORKFLOW_ADMIN_ADDR".to_owned(), format!("127.0.0.1:{admin}")),
            ("CIM_WORKFLOW_GRAPH_URLS".to_owned(), graph.to_owned()),
            ("CIM_WORKFLOW_POLL_MS".to_owned(), "20".to_owned()),
            ("CIM_WORKFLOW_LEASE_MS".to_owned(), "2000".to_owned()),
            ("CIM_DATABASE_MAX_CONNECTIONS".to_owned(), "20".to_owned()),
            ("CIM_LOG".to_owned(), "warn".to_owned()),
        ];
        let child = spawn(&env);
        Process { env, grpc: format!("http://127.0.0.1:{grpc}"), child }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.child = spawn(&self.env);
    }

    async fn client(&self) -> WorkflowServiceClient<tonic::transport::Channel> {
        for _ in 0..300 {
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(self.grpc.clone()).unwrap().connect().await {
                return WorkflowServiceClient::new(channel);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the workflow process never listened on {}", self.grpc);
    }
}

fn spawn(env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cim-workflow"))
        .env_clear()
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the cim-workflow binary starts")
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scalar(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_with_200_instances_in_flight_loses_nothing_and_repeats_nothing() {
    let prefix = unique("p");
    // The graph service the steps call, in this process.
    let shutdown = Shutdown::new();
    let schema = unique("g");
    let options = cim_graph::app::GraphOptions { schema: schema.clone() };
    let graph_config = config(ServiceKind::Graph, &prefix, &[]);
    let prepared = cim_graph::app::prepare_with(&graph_config, &shutdown, options).await.unwrap();
    let graph = Running::spawn(prepared, schema, prefix.clone(), shutdown);
    let mut graphs = GraphServiceClient::new(graph.channel().await);

    // The workflow process's own database.
    let admin = sqlx::PgPool::connect(&database_url()).await.unwrap();
    let name = unique("wkill");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    let url = format!("{}/{name}", database_url().rsplit_once('/').unwrap().0);
    let mut process = Process::start(&url, &prefix, &format!("http://{}", graph.grpc));
    let mut c = process.client().await;

    let tenant = TenantId::new();
    let created =
        graphs.create_graph(req(tenant, gpb::CreateGraphRequest { name: "crash".into(), ..Default::default() }));
    let graph_id = created.await.unwrap().into_inner().graph_id;
    let (definition, _) = define(
        &mut c,
        tenant,
        json!({"name": "nap then add", "steps": [
            {"id": "nap", "kind": "timer", "sleep_ms": 1500},
            {"id": "add", "kind": "integration", "depends_on": ["nap"],
             "call": {"service": "graph", "method": "AddNode",
                      "request": "{'graph_id': graph, 'node': {'id': 'n' + string(n), 'type': 'item'}}"}}
        ]}),
    )
    .await;
    for n in 0..INSTANCES {
        let r = pb::StartWorkflowRequest {
            definition_id: definition.clone(),
            context: Some(object(json!({"graph": graph_id, "n": n}))),
            ..Default::default()
        };
        c.start_workflow(req(tenant, r)).await.unwrap();
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move { sqlx::Executor::execute(conn, "SET search_path = workflow").await.map(|_| ()) })
        })
        .connect(&url)
        .await
        .unwrap();
    // Killed while timers are pending and some calls are under way.
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while scalar(&pool, "SELECT count(*) FROM events WHERE event_type = 'timer_fired'").await < 20 {
        assert!(tokio::time::Instant::now() < end, "no timer fired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    process.kill();
    let completed = "SELECT count(*) FROM workflow_instances WHERE status = 'completed'";
    let before = scalar(&pool, completed).await;
    assert!(before < INSTANCES as i64, "killed too late: all {before} had completed");

    process.restart();
    let end = tokio::time::Instant::now() + Duration::from_secs(240);
    while scalar(&pool, completed).await < INSTANCES as i64 {
        assert!(tokio::time::Instant::now() < end, "{} of {INSTANCES} completed", scalar(&pool, completed).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Exactly once, in the graph service's own state: 200 nodes, 200 node_added events.
    let g = graphs.get_graph(req(tenant, gpb::GetGraphRequest { graph_id: graph_id.clone() }));
    assert_eq!(g.await.unwrap().into_inner().node_count, INSTANCES as u64);
    let added = format!("SELECT count(*) FROM {}.events WHERE event_type = 'node_added'", graph.schema);
    assert_eq!(scalar(&graph.pool, &added).await, INSTANCES as i64);
    // Each timer fired once, never before its time.
    assert_eq!(scalar(&pool, "SELECT count(*) FROM events WHERE event_type = 'timer_fired'").await, INSTANCES as i64);
    let early = "SELECT count(*) FROM events WHERE event_type = 'timer_fired' \
                 AND occurred_at < (payload->>'fire_at')::timestamptz";
    assert_eq!(scalar(&pool, early).await, 0);
    // The restarted process answers for them.
    let mut c = process.client().await;
    let list = pb::ListWorkflowsRequest { definition_id: definition, status: "completed".into(), ..Default::default() };
    assert!(!c.list_workflows(req(tenant, list)).await.unwrap().into_inner().workflows.is_empty());

    drop(process);
    pool.close().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let prefix_name: SubjectPrefix = prefix.parse().unwrap();
    let _ = js.delete_stream(prefix_name.stream_name(Domain::Workflow)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)"))).execute(&admin).await.unwrap();
    graph.stop().await;
}
