//! Workflows through the gateway over real TCP: REST in front of a real workflow service (its
//! engine running), Postgres, NATS and Redis. A definition and an instance's life through REST,
//! the roles the gateway passes on to a step's rule, and bad input with the fields it names.

#[path = "support/http.rs"]
mod http;
#[path = "support/workflow.rs"]
mod workflow;

use std::net::SocketAddr;
use std::time::Duration;

use cim_core::TenantId;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{config, unique};
use http::{Auth, Reply, SECRET, call, problem, token};

struct Setup {
    addr: SocketAddr,
    stop: Shutdown,
    gateway: tokio::task::JoinHandle<()>,
    service: workflow::WorkflowService,
    reader: Auth,
    writer: Auth,
    admin: Auth,
    stranger: Auth,
}

impl Setup {
    async fn start() -> Setup {
        let prefix = unique("p");
        let service = workflow::WorkflowService::start(&prefix).await;
        let vars = [("CIM_GATEWAY_WORKFLOW_URLS", service.url()), ("CIM_JWT_HS256_SECRET", SECRET.into())];
        let stop = Shutdown::new();
        let gw = cim_gateway::app::prepare(&config(ServiceKind::Gateway, &prefix, &vars), &stop).await.unwrap();
        let addr = gw.addr;
        let gateway = tokio::spawn(async move { gw.run().await.unwrap() });
        let tenant = TenantId::new();
        Setup {
            addr,
            stop,
            gateway,
            service,
            reader: token(tenant, "rita", &["reader"]),
            writer: token(tenant, "walt", &["writer"]),
            admin: token(tenant, "ada", &["admin"]),
            stranger: token(TenantId::new(), "eve", &["admin"]),
        }
    }

    async fn call(&self, method: &str, path: &str, auth: &Auth, body: Option<&str>) -> Reply {
        call(self.addr, method, path, auth, body).await
    }

    /// Polls the instance until `done` holds for it (or fails after 20 s).
    async fn until(&self, id: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let w = self.call("GET", &format!("/api/v1/workflows/{id}"), &self.reader, None).await;
            assert_eq!(w.status, 200, "{w:?}");
            if done(&w.json()) {
                return w.json();
            }
            assert!(tokio::time::Instant::now() < deadline, "the workflow never got there: {:?}", w.json());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.stop.trigger();
        let _ = self.gateway.await;
        self.service.stop().await;
    }
}

fn step<'a>(w: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    w["steps"].as_array().unwrap().iter().find(|s| s["step_id"] == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_definition_and_an_instance_over_rest() {
    let s = Setup::start().await;
    let (reader, writer, admin) = (&s.reader, &s.writer, &s.admin);

    let definition = r#"{"definition":{"name":"review","steps":[
        {"id":"price","kind":"automated","set":{"total":"qty * 40"}},
        {"id":"big","kind":"decision","depends_on":["price"],"condition":"total > 100","when_true":["approve"]},
        {"id":"approve","kind":"approval","depends_on":["big"],"role":"admin"}]}}"#;
    problem(&s.call("POST", "/api/v1/workflow-definitions", reader, Some(definition)).await, 403, "permission_denied");
    let created = s.call("POST", "/api/v1/workflow-definitions", writer, Some(definition)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let definition_id = created.json()["id"].as_str().unwrap().to_owned();
    let content_id = created.json()["content_id"].as_str().unwrap().to_owned();
    assert!(content_id.starts_with('b'), "a CIDv1 in base32: {content_id}");
    let got = s.call("GET", &format!("/api/v1/workflow-definitions/{definition_id}"), reader, None).await;
    assert_eq!((got.status, got.json()["versions"].clone()), (200, serde_json::json!([content_id])), "{got:?}");

    let start = format!(r#"{{"definition_id":"{definition_id}","context":{{"qty":3}}}}"#);
    let started = s.call("POST", "/api/v1/workflows", writer, Some(&start)).await;
    assert_eq!(started.status, 201, "{started:?}");
    let id = started.json()["id"].as_str().unwrap().to_owned();
    let waiting = s.until(&id, |w| step(w, "approve")["status"] == "waiting_approval").await;
    assert_eq!((waiting["status"].as_str(), waiting["content_id"].as_str()), (Some("running"), Some(&*content_id)));

    // The step names the admin role: the gateway passes the caller's roles on, and the service
    // refuses a writer and takes an admin.
    let approve = format!("/api/v1/workflows/{id}/steps/approve/approve");
    problem(&s.call("POST", &approve, writer, Some(r#"{"comment":"me?"}"#)).await, 403, "permission_denied");
    let approved = s.call("POST", &approve, admin, Some(r#"{"comment":"fine"}"#)).await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let done = s.until(&id, |w| w["status"] == "completed").await;
    assert_eq!(done["context"]["total"], 120, "{done:?}");

    // Read back: the list, the hash-chained history, the instance as of its first event.
    let list = format!("/api/v1/workflows?status=completed&definition_id={definition_id}");
    let listed = s.call("GET", &list, reader, None).await;
    assert_eq!(listed.json()["items"][0]["instance_id"], id.as_str(), "{listed:?}");
    let history = s.call("GET", &format!("/api/v1/workflows/{id}/history"), reader, None).await;
    let events = history.json()["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|e| e["event_type"] == "step_approval_granted"), "{history:?}");
    for pair in events.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"], "the chain links");
    }
    let first = s.call("GET", &format!("/api/v1/workflows/{id}/as-of/1"), reader, None).await;
    assert_eq!((first.status, first.json()["version"].as_u64()), (200, Some(1)), "{first:?}");

    // Another tenant sees nothing of it.
    problem(&s.call("GET", &format!("/api/v1/workflows/{id}"), &s.stranger, None).await, 404, "not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_definitions_and_illegal_transitions_are_named() {
    let s = Setup::start().await;
    let writer = &s.writer;
    for (body, field) in [
        (r#"{"definition":{"name":"n","steps":[{"id":"a","kind":"wormhole"}]}}"#, "definition.steps[0].kind"),
        (
            r#"{"definition":{"name":"n","steps":[{"id":"a","kind":"decision","condition":"total >"}]}}"#,
            "definition.steps[0].condition",
        ),
        (r#"{"definition":{"name":"n","steps":[]}}"#, "definition.steps"),
        (r#"{"definition":{"name":"n","steps":[{"id":"a","kind":"manual","big":9007199254740993}]}}"#, "definition"),
        (r#"{"definition":{"name":"n","steps":[]},"colour":"red"}"#, "colour"),
    ] {
        let refused = s.call("POST", "/api/v1/workflow-definitions", writer, Some(body)).await;
        problem(&refused, 400, "invalid_argument");
        let named = refused.json()["errors"][0]["field"].as_str().unwrap_or_default().to_owned();
        assert!(
            named.starts_with(field) || refused.json()["detail"].as_str().unwrap_or_default().contains(field),
            "{body}: expected {field}, got {refused:?}"
        );
    }

    let manual = r#"{"definition":{"name":"m","steps":[{"id":"wait","kind":"manual"}]}}"#;
    let created = s.call("POST", "/api/v1/workflow-definitions", writer, Some(manual)).await;
    let definition_id = created.json()["id"].as_str().unwrap().to_owned();
    let start = format!(r#"{{"definition_id":"{definition_id}"}}"#);
    let id = s.call("POST", "/api/v1/workflows", writer, Some(&start)).await.json()["id"].as_str().unwrap().to_owned();
    let w = format!("/api/v1/workflows/{id}");
    // A state change's body may be left out; one that is there is still checked.
    assert_eq!(s.call("POST", &format!("{w}/pause"), writer, None).await.status, 200);
    problem(&s.call("POST", &format!("{w}/resume"), writer, Some(r#"{"colour":1}"#)).await, 400, "invalid_argument");
    assert_eq!(s.call("POST", &format!("{w}/resume"), writer, Some("{}")).await.status, 200);
    assert_eq!(s.call("POST", &format!("{w}/cancel"), writer, Some(r#"{"reason":"done"}"#)).await.status, 200);
    // A cancelled workflow is over: resuming it is refused, naming why.
    problem(&s.call("POST", &format!("{w}/resume"), writer, Some("{}")).await, 422, "failed_precondition");
    problem(&s.call("GET", "/api/v1/workflows/not-a-uuid", &s.reader, None).await, 400, "invalid_argument");
    s.stop().await;
}
