//! The web console (issue 20): its embedded files as HTTP serves them, and the pages driven in
//! a real browser (headless Debian Chromium through chromedriver, by `tests/python/console.py`),
//! against a gateway and a graph service on free ports with their own schema and prefix.

#[path = "support/agent.rs"]
mod agent;
#[path = "support/document.rs"]
mod document;
#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;
#[path = "support/websocket.rs"]
mod websocket;
#[path = "support/workflow.rs"]
mod workflow;

use std::path::PathBuf;
use std::time::Duration;

use cim_auth::now_secs;
use cim_core::TenantId;
use http::call;
use support::*;

/// The console needs no credentials to load (its pages hold no data), is not an API operation,
/// and promises the browser it loads nothing from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[]).await;
    let index = call(gw.addr, "GET", "/", &[], None).await;
    assert_eq!(index.status, 200, "{index:?}");
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(index.body.contains("/console/main.js"), "{}", index.body);
    let policy = index.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"), "{policy}");
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    let script = call(gw.addr, "GET", "/console/main.js", &[], None).await;
    assert_eq!(script.status, 200);
    assert_eq!(script.header("content-type"), Some("text/javascript; charset=utf-8"));
    let css = call(gw.addr, "GET", "/console/console.css", &[], None).await;
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    problem(&call(gw.addr, "GET", "/console/secrets.txt", &[], None).await, 404, "not_found");
    problem(&call(gw.addr, "GET", "/console/../Cargo.toml", &[], None).await, 404, "not_found");
    problem(&call(gw.addr, "POST", "/", &[], None).await, 405, "unimplemented");
    let doc: serde_json::Value = serde_json::from_str(cim_gateway::app::openapi()).unwrap();
    assert!(doc["paths"].as_object().unwrap().keys().all(|p| p.starts_with("/api/")), "{}", doc["paths"]);
    gw.stop().await;
    graph.stop().await;
}

/// The operations page's view of a test: Grafana at a made-up address, and the services the
/// test does not start at a port where nothing listens, so they read "not ready" for certain.
const OPERATIONS_VARS: [(&str, &str); 5] = [
    ("CIM_GATEWAY_GRAFANA_URL", "http://grafana.test:3000/"),
    ("CIM_GATEWAY_DOCUMENT_URLS", "http://127.0.0.1:1"),
    ("CIM_GATEWAY_AGENT_URLS", "http://127.0.0.1:1"),
    ("CIM_GATEWAY_WORKFLOW_URLS", "http://127.0.0.1:1"),
    ("CIM_GATEWAY_WEBHOOK_URLS", "http://127.0.0.1:1"),
];

/// One dead letter of a consumer named `console-test`, in the graph service's DLQ stream.
async fn dead_letter(graph: &harness::Service) {
    let nats = async_nats::connect(harness::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let subject = format!("{}.dlq.console-test", graph.prefix);
    js.publish(subject, "{}".into()).await.unwrap().await.expect("the DLQ stream stores it");
}

/// The document domain's stream under the graph service's prefix (no document service runs in
/// this test), made as a full store makes it: one message at its `max_msgs` with discard `new`,
/// so it refuses every publish. Answers a function that deletes it again.
async fn full_document_stream(graph: &harness::Service) -> impl AsyncFnOnce() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    let prefix: cim_core::SubjectPrefix = graph.prefix.parse().unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(harness::nats_url()).await.unwrap());
    let subject = format!("{}.document.evt.full", graph.prefix);
    let name = prefix.stream_name(cim_core::Domain::Document);
    js.create_stream(Config {
        name: name.clone(),
        subjects: vec![prefix.domain_events(cim_core::Domain::Document)],
        max_messages: 1,
        discard: DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish(subject, "{}".into()).await.unwrap().await.expect("the one message it has room for");
    async move || {
        js.delete_stream(&name).await.unwrap();
    }
}

/// Operations: for the admins of an operator tenant only (`CIM_GATEWAY_OPERATOR_TENANTS`), since
/// it counts every tenant's streams and dead letters; in the OpenAPI document; it reads the
/// gateway's own readiness, each domain service's gRPC health, every stream's consumers and the
/// dead letters per consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_for_operators_and_read_what_runs() {
    let graph = harness::Service::start().await;
    let ws = websocket::Websocket::start(&graph).await;
    let (operators, customer) = (TenantId::new(), TenantId::new());
    let listed = format!("{operators}");
    let ws_admin = format!("http://{}", ws.admin);
    let mut vars = OPERATIONS_VARS.to_vec();
    vars.push(("CIM_GATEWAY_OPERATOR_TENANTS", &listed));
    vars.push(("CIM_GATEWAY_WEBSOCKET_ADMIN_URL", &ws_admin));
    let gw = gateway(&graph, &vars).await;
    dead_letter(&graph).await;
    let delete_full_stream = full_document_stream(&graph).await;
    let path = "/api/v1/admin/operations";
    for role in ["reader", "writer"] {
        let refused = call(gw.addr, "GET", path, &bearer(&token(operators, &[role], now_secs() + 600)), None).await;
        problem(&refused, 403, "permission_denied");
    }
    // Another tenant's admin: the page would show them every tenant's traffic.
    let customer_admin = bearer(&token(customer, &["admin"], now_secs() + 600));
    let refused = call(gw.addr, "GET", path, &customer_admin, None).await;
    problem(&refused, 403, "permission_denied");
    assert!(refused.body.contains("CIM_GATEWAY_OPERATOR_TENANTS"), "the refusal says what decides: {}", refused.body);
    let me = call(gw.addr, "GET", "/api/v1/auth/me", &customer_admin, None).await.json();
    assert_eq!(me["operator"], false, "{me}");
    let operator = bearer(&token(operators, &["admin"], now_secs() + 600));
    let me = call(gw.addr, "GET", "/api/v1/auth/me", &operator, None).await.json();
    assert_eq!(me["operator"], true, "{me}");
    let r = call(gw.addr, "GET", path, &operator, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let o = r.json();
    let ready: Vec<(String, bool)> = o["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["ready"].as_bool().unwrap()))
        .collect();
    let expected = [
        ("gateway", true),
        ("graph", true),
        ("document", false),
        ("agent", false),
        ("workflow", false),
        ("websocket", true),
    ];
    for (name, up) in expected {
        assert!(ready.contains(&(name.to_owned(), up)), "{name} should be ready={up}: {o}");
    }
    let websocket = o["services"].as_array().unwrap().iter().find(|s| s["name"] == "websocket").unwrap();
    assert!(websocket["detail"].as_str().unwrap().contains("nats: ok"), "its readiness checks: {websocket}");
    // A domain service's own dependency checks, up or down, through its gRPC health; nothing
    // else (no URL, no credential) comes with them.
    let graph_row = o["services"].as_array().unwrap().iter().find(|s| s["name"] == "graph").unwrap();
    assert_eq!(graph_row["detail"], "postgres: ok; nats: ok", "{graph_row}");
    // NATS as `cim doctor` checks it: the account's room and the one server, not clustered.
    let nats: Vec<(&str, bool)> =
        o["nats"].as_array().unwrap().iter().map(|c| (c["name"].as_str().unwrap(), c["ok"] == true)).collect();
    assert_eq!(nats, [("jetstream", true), ("cluster", true)], "{}", o["nats"]);
    assert!(o["nats"][1]["detail"].as_str().unwrap().ends_with("answers, no cluster"), "{}", o["nats"]);
    let stream = |o: &serde_json::Value, domain: &str| {
        o["streams"].as_array().unwrap().iter().find(|s| s["domain"] == domain).unwrap().clone()
    };
    let graph_stream = stream(&o, "graph");
    assert_eq!(graph_stream["replicas"], "1 replica", "{graph_stream}");
    assert!(graph_stream.get("problem").is_none(), "{graph_stream}");
    // A stream with no room says so, as doctor does: its events wait in the outbox.
    let full = stream(&o, "document");
    let problem = full["problem"].as_str().unwrap_or_default();
    assert!(problem.starts_with("full: 1 messages of its max_msgs 1 (discard new)"), "{full}");
    // The workflow service's stream does not exist here: no replicas to read, no problem made up.
    let absent = stream(&o, "workflow");
    assert!(absent["error"].is_string() && absent.get("replicas").is_none(), "{absent}");
    // Stopped, it reads as not ready, and the page still answers.
    ws.stop().await;
    let o = call(gw.addr, "GET", path, &operator, None).await.json();
    let websocket = o["services"].as_array().unwrap().iter().find(|s| s["name"] == "websocket").unwrap();
    assert_eq!(websocket["ready"], false, "{websocket}");
    assert!(websocket["detail"].as_str().unwrap().starts_with("unreachable"), "{websocket}");
    let graph_stream = o["streams"].as_array().unwrap().iter().find(|s| s["domain"] == "graph").unwrap();
    assert!(graph_stream["messages"].is_u64(), "{graph_stream}");
    let consumers: Vec<&str> =
        graph_stream["consumers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(consumers.contains(&"gateway-cache"), "the gateway's cache consumer is listed: {consumers:?}");
    assert_eq!(o["dead_letters"]["total"], 1, "{o}");
    assert_eq!(o["dead_letters"]["by_subject"][0]["subject"], format!("{}.dlq.console-test", graph.prefix));
    let dashboards = o["dashboards"].as_array().unwrap();
    assert_eq!(dashboards[0]["url"], "http://grafana.test:3000/d/cim-overview", "{o}");
    // Every linked dashboard is one that is provisioned.
    for (uid, _) in cim_gateway::operations::DASHBOARDS {
        let file = repository().join(format!("monitoring/grafana/dashboards/{uid}.json"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(text.contains(&format!("\"uid\": \"{uid}\"")), "{uid}");
    }
    let doc: serde_json::Value = serde_json::from_str(cim_gateway::app::openapi()).unwrap();
    assert!(doc["paths"][path]["get"].is_object(), "in the OpenAPI document");
    delete_full_stream().await;
    gw.stop().await;
    graph.stop().await;
}

/// Without `CIM_GATEWAY_OPERATOR_TENANTS` no one reads the operations view, not even an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_operator_tenants_no_one_reads_operations() {
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &OPERATIONS_VARS).await;
    let admin = bearer(&token(TenantId::new(), &["admin"], now_secs() + 600));
    problem(&call(gw.addr, "GET", "/api/v1/admin/operations", &admin, None).await, 403, "permission_denied");
    assert_eq!(call(gw.addr, "GET", "/api/v1/auth/me", &admin, None).await.json()["operator"], false);
    gw.stop().await;
    graph.stop().await;
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Sign in, create a graph, add nodes and an edge and see them drawn, roll the version slider
/// back, see a problem, sign out and be refused, a second tenant sees nothing, an expired or
/// missing session goes to sign in. Screenshots go to `CIM_CONSOLE_SCREENSHOTS` when set (the
/// committed ones: `CIM_CONSOLE_SCREENSHOTS=docs/console`), else beside the test's build output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uses_the_console_in_a_real_browser() {
    for tool in ["CIM_TEST_CHROMIUM", "CIM_TEST_CHROMEDRIVER"] {
        let default = if tool.ends_with("DRIVER") { "/usr/bin/chromedriver" } else { "/usr/bin/chromium" };
        let path = std::env::var(tool).unwrap_or_else(|_| default.into());
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: apt-get install chromium chromium-driver (scripts/test.sh does), or set {tool}"
        );
    }
    let graph = harness::Service::start().await;
    // The websocket server on a port of its own: the console's policy lets the page reach it.
    let ws = websocket::Websocket::start(&graph).await;
    let url = ws.url();
    let agents = agent::AgentService::start(&graph.prefix).await;
    let workflows = workflow::WorkflowService::start(&graph.prefix).await;
    let documents = document::DocumentService::start(&graph.prefix).await;
    let (agent_url, workflow_url, document_url) = (agents.url(), workflows.url(), documents.url());
    let operators = TenantId::new();
    let listed = operators.to_string();
    let ws_admin = format!("http://{}", ws.admin);
    let mut vars = vec![
        ("CIM_GATEWAY_RATE_LIMIT_PER_MINUTE", "0"),
        ("CIM_GATEWAY_CONSOLE_WEBSOCKET_URL", &url),
        ("CIM_GATEWAY_OPERATOR_TENANTS", &listed),
        ("CIM_GATEWAY_WEBSOCKET_ADMIN_URL", &ws_admin),
    ];
    // Later entries win: the agent, workflow and document services run in this test.
    vars.extend(OPERATIONS_VARS);
    vars.extend([
        ("CIM_GATEWAY_AGENT_URLS", &*agent_url),
        ("CIM_GATEWAY_WORKFLOW_URLS", &*workflow_url),
        ("CIM_GATEWAY_DOCUMENT_URLS", &*document_url),
    ]);
    let gw = gateway(&graph, &vars).await;
    dead_letter(&graph).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let token_a = token(a, &["writer"], now_secs() + 600);
    let token_b = token(b, &["writer"], now_secs() + 600);
    let admin_a = token(a, &["admin"], now_secs() + 600);
    let operator = token(operators, &["admin"], now_secs() + 600);
    let shots = match std::env::var("CIM_CONSOLE_SCREENSHOTS") {
        Ok(dir) => repository().join(dir),
        Err(_) => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = repository().join("tests/python/console.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("http://{}", gw.addr))
        .args([&token_a, &token_b])
        .arg(&shots)
        .arg(&admin_a)
        .arg(&operator)
        .kill_on_drop(true)
        .output();
    // Bounded: a browser that hangs fails the test instead of the suite.
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the browser test finished within 150 s")
        .expect("run tests/python/console.py (pip install -r tests/python/requirements.txt)");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed (screenshot: {}/failure.png):\n{report}", shots.display());
    assert!(report.contains("console: all checks passed"), "{report}");
    gw.stop().await;
    ws.stop().await;
    agents.stop().await;
    workflows.stop().await;
    documents.stop().await;
    graph.stop().await;
}
