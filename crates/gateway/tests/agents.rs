//! Agents and tasks through the gateway over real TCP: REST in front of a real agent service,
//! Postgres, NATS and Redis. The registry's lifecycle and a task's life through REST; then the
//! edges: roles, tenants, bad input with the fields it names, Idempotency-Key replays.

#[path = "support/agent.rs"]
mod agent;
#[path = "support/http.rs"]
mod http;

use std::net::SocketAddr;

use cim_core::TenantId;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{config, unique};
use http::{Auth, Reply, SECRET, call, problem, token};

fn keyed(auth: &Auth, key: &str) -> Auth {
    let mut headers = auth.clone();
    headers.push(("Idempotency-Key", key.to_owned()));
    headers
}

/// The first field a 400 names, and why.
fn violation(r: &Reply) -> (String, String) {
    problem(r, 400, "invalid_argument");
    let first = &r.json()["errors"][0];
    (first["field"].as_str().unwrap_or_default().to_owned(), first["reason"].as_str().unwrap_or_default().to_owned())
}

/// A gateway in front of a fresh agent service, and one tenant's callers by role.
struct Setup {
    addr: SocketAddr,
    stop: Shutdown,
    gateway: tokio::task::JoinHandle<()>,
    service: agent::AgentService,
    tenant: TenantId,
    reader: Auth,
    writer: Auth,
    admin: Auth,
}

impl Setup {
    async fn start() -> Setup {
        let prefix = unique("p");
        let service = agent::AgentService::start(&prefix).await;
        let vars = [("CIM_GATEWAY_AGENT_URLS", service.url()), ("CIM_JWT_HS256_SECRET", SECRET.to_owned())];
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
            tenant,
            reader: token(tenant, "rita", &["reader"]),
            writer: token(tenant, "walt", &["writer"]),
            admin: token(tenant, "ada", &["admin"]),
        }
    }

    async fn call(&self, method: &str, path: &str, auth: &Auth, body: Option<&str>) -> Reply {
        call(self.addr, method, path, auth, body).await
    }

    /// An active system agent declaring `capabilities`.
    async fn active_agent(&self, capabilities: &str) -> String {
        let deployed = self.call("POST", "/api/v1/agents", &self.writer, Some(r#"{"name":"w","agent_type":"system"}"#));
        let id = deployed.await.json()["agent_id"].as_str().unwrap().to_owned();
        let body = format!(r#"{{"capabilities":{capabilities}}}"#);
        let set = self.call("PUT", &format!("/api/v1/agents/{id}/capabilities"), &self.writer, Some(&body)).await;
        assert_eq!(set.status, 200, "{set:?}");
        let on = self.call("POST", &format!("/api/v1/agents/{id}/activate"), &self.writer, None).await;
        assert_eq!(on.status, 200, "{on:?}");
        id
    }

    async fn stop(self) {
        self.stop.trigger();
        let _ = self.gateway.await;
        self.service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_and_its_tasks_over_rest() {
    let s = Setup::start().await;
    let (reader, writer, admin) = (&s.reader, &s.writer, &s.admin);

    // An AI agent: refused activation until it has a model, then configured and activated.
    let deploy = r#"{"name":"Reviewer","agent_type":"ai","max_concurrent_tasks":2}"#;
    let created = s.call("POST", "/api/v1/agents", writer, Some(deploy)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["version"], 1);
    let id = created.json()["agent_id"].as_str().unwrap().to_owned();
    let a = format!("/api/v1/agents/{id}");
    let early = s.call("POST", &format!("{a}/activate"), writer, None).await;
    problem(&early, 422, "failed_precondition");
    assert!(early.json()["detail"].as_str().unwrap().contains("model configuration"), "{early:?}");
    let model = r#"{"provider":"ollama","model":"llama3:8b","parameters":{"temperature":0.2}}"#;
    assert_eq!(s.call("PUT", &format!("{a}/model"), writer, Some(model)).await.status, 200);
    let prompt = r#"{"system_prompt":"You review code."}"#;
    assert_eq!(s.call("PUT", &format!("{a}/system-prompt"), writer, Some(prompt)).await.status, 200);
    let caps = r#"{"capabilities":["code_review","llm.chat"]}"#;
    assert_eq!(s.call("PUT", &format!("{a}/capabilities"), writer, Some(caps)).await.status, 200);
    assert_eq!(
        s.call("POST", &format!("{a}/tools/enable"), writer, Some(r#"{"names":["web_search"]}"#)).await.status,
        200
    );
    let limit = s.call("PUT", &format!("{a}/concurrency-limit"), writer, Some(r#"{"max_concurrent_tasks":3}"#)).await;
    assert_eq!(limit.status, 200, "{limit:?}");
    let activated = s.call("POST", &format!("{a}/activate"), writer, None).await;
    assert_eq!((activated.status, activated.json()["version"].as_u64()), (200, Some(7)), "{activated:?}");

    // Read back whole, and as it was when deployed.
    let got = s.call("GET", &a, reader, None).await.json();
    assert_eq!((got["state"].as_str(), got["agent_type"].as_str()), (Some("active"), Some("ai")));
    assert_eq!(got["capabilities"], serde_json::json!(["code_review", "llm.chat"]));
    assert_eq!(got["model"]["parameters"]["temperature"], 0.2);
    assert_eq!((got["tools"][0].as_str(), got["max_concurrent_tasks"].as_u64()), (Some("web_search"), Some(3)));
    let first = s.call("GET", &format!("{a}/as-of/1"), reader, None).await.json();
    assert_eq!((first["state"].as_str(), first["version"].as_u64()), (Some("deployed"), Some(1)));
    assert!(first["model"].is_null(), "{first}");
    let listed = s.call("GET", "/api/v1/agents?state=active&capabilities=code_review,llm.chat", reader, None).await;
    assert_eq!(listed.json()["items"][0]["agent_id"], id.as_str(), "{listed:?}");
    let none = s.call("GET", "/api/v1/agents?state=suspended", reader, None).await;
    assert_eq!(none.json()["items"].as_array().map(Vec::len), Some(0), "{none:?}");

    // A task: routed (dry run) to the agent, submitted, listed, read, cancelled once.
    let route =
        s.call("POST", "/api/v1/tasks/route", reader, Some(r#"{"required_capabilities":["code_review"]}"#)).await;
    assert_eq!(route.status, 200, "{route:?}");
    assert_eq!(
        (route.json()["agent_id"].as_str(), route.json()["extra_capabilities"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    let task = r#"{"required_capabilities":["code_review"],"payload":{"pr":42,"files":["a.rs"]},"priority":5,
        "deadline":"2999-01-01T00:00:00Z","correlation":"wf-1/review"}"#;
    let submitted = s.call("POST", "/api/v1/tasks", writer, Some(task)).await;
    assert_eq!(submitted.status, 201, "{submitted:?}");
    let t = submitted.json()["task_id"].as_str().unwrap().to_owned();
    let queued = s.call("GET", "/api/v1/tasks?state=queued", reader, None).await.json();
    assert_eq!(queued["items"][0]["task_id"], t.as_str(), "{queued}");
    let read = s.call("GET", &format!("/api/v1/tasks/{t}"), reader, None).await.json();
    assert_eq!((read["state"].as_str(), read["priority"].as_u64()), (Some("queued"), Some(5)));
    assert_eq!(
        (read["payload"]["pr"].as_i64(), read["deadline"].as_str()),
        (Some(42), Some("2999-01-01T00:00:00.000000Z"))
    );
    assert!(read["holder"].is_null() && read["result"].is_null(), "{read}");
    let cancel = format!("/api/v1/tasks/{t}/cancel");
    let cancelled = s.call("POST", &cancel, writer, Some(r#"{"reason":"not needed"}"#)).await;
    assert_eq!((cancelled.status, cancelled.json()["task_id"].as_str()), (200, Some(t.as_str())), "{cancelled:?}");
    problem(&s.call("POST", &cancel, writer, Some("{}")).await, 422, "failed_precondition");
    let read = s.call("GET", &format!("/api/v1/tasks/{t}"), reader, None).await.json();
    assert_eq!(read["state"], "cancelled");

    // Suspended, then decommissioned (admins only): final, nothing applies after it.
    assert_eq!(s.call("POST", &format!("{a}/suspend"), writer, Some(r#"{"reason":"maintenance"}"#)).await.status, 200);
    let no_route =
        s.call("POST", "/api/v1/tasks/route", reader, Some(r#"{"required_capabilities":["code_review"]}"#)).await;
    assert!(no_route.json()["agent_id"].is_null(), "a suspended agent was routed to: {no_route:?}");
    assert_eq!(s.call("POST", &format!("{a}/decommission"), writer, Some("{}")).await.status, 403);
    assert_eq!(s.call("POST", &format!("{a}/decommission"), admin, Some(r#"{"reason":"retired"}"#)).await.status, 200);
    let after = s.call("POST", &format!("{a}/activate"), admin, None).await;
    problem(&after, 422, "failed_precondition");
    assert!(after.json()["detail"].as_str().unwrap().contains("decommissioned"), "{after:?}");

    // The OpenAPI document names the agent routes.
    let openapi = s.call("GET", "/api/openapi.json", &vec![], None).await.json();
    assert!(openapi["paths"]["/api/v1/tasks/route"]["post"].is_object());
    assert!(openapi["paths"]["/api/v1/agents/{agent_id}/permissions/grant"]["post"].is_object());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn roles_tenants_bad_input_and_replays() {
    let s = Setup::start().await;
    let (reader, writer, admin) = (&s.reader, &s.writer, &s.admin);
    let id = s.active_agent(r#"["code_review"]"#).await;
    let a = format!("/api/v1/agents/{id}");

    // Roles: readers read; writers change agents and tasks; permissions need an admin.
    assert_eq!(
        s.call("POST", "/api/v1/agents", reader, Some(r#"{"name":"x","agent_type":"human"}"#)).await.status,
        403
    );
    assert_eq!(s.call("POST", "/api/v1/tasks", reader, Some("{}")).await.status, 403);
    assert_eq!(s.call("POST", &format!("{a}/suspend"), reader, Some("{}")).await.status, 403);
    let grant = format!("{a}/permissions/grant");
    let perms = r#"{"names":["documents.read"]}"#;
    assert_eq!(s.call("POST", &grant, writer, Some(perms)).await.status, 403);
    assert_eq!(s.call("POST", &grant, admin, Some(perms)).await.status, 200);
    problem(&s.call("POST", &grant, admin, Some(perms)).await, 422, "failed_precondition");
    assert_eq!(s.call("POST", &format!("{a}/permissions/revoke"), admin, Some(perms)).await.status, 200);
    assert_eq!(s.call("GET", "/api/v1/tasks", &token(s.tenant, "nobody", &[]), None).await.status, 403);

    // A typo'd state names the states there are.
    let (field, reason) = violation(&s.call("GET", "/api/v1/agents?state=actve", reader, None).await);
    assert_eq!(field, "state");
    assert_eq!(reason, "one of deployed, active, suspended, offline, decommissioned");
    let (field, reason) = violation(&s.call("GET", "/api/v1/tasks?state=queud", reader, None).await);
    assert_eq!(field, "state");
    assert_eq!(reason, "one of queued, assigned, completed, failed, cancelled, timed_out");
    let typo = r#"{"name":"x","agent_type":"robot"}"#;
    assert_eq!(violation(&s.call("POST", "/api/v1/agents", writer, Some(typo)).await).0, "agent_type");

    // Bad ids, names, capabilities, payloads and deadlines: 400 naming the field.
    assert_eq!(violation(&s.call("GET", "/api/v1/agents/not-an-id", reader, None).await).0, "agent_id");
    assert_eq!(violation(&s.call("POST", "/api/v1/tasks/42/cancel", writer, Some("{}")).await).0, "task_id");
    let bad_name = r#"{"capabilities":["ok","Bad Name"]}"#;
    let r = s.call("PUT", &format!("{a}/capabilities"), writer, Some(bad_name)).await;
    assert_eq!(violation(&r).0, "capabilities[1]");
    let unknown = r#"{"required_capabilities":["code_review","code_reveiw"]}"#;
    let (field, reason) = violation(&s.call("POST", "/api/v1/tasks", writer, Some(unknown)).await);
    assert_eq!(field, "required_capabilities[1]");
    assert!(reason.contains("code_reveiw"), "{reason}");
    let (field, _) = violation(&s.call("POST", "/api/v1/tasks", writer, Some(r#"{"deadline":"tomorrow"}"#)).await);
    assert_eq!(field, "deadline");
    let (field, _) = violation(&s.call("POST", "/api/v1/tasks", writer, Some(r#"{"payload":[1,2]}"#)).await);
    assert_eq!(field, "payload");
    let (field, _) =
        violation(&s.call("POST", "/api/v1/tasks", writer, Some(r#"{"priority":1,"colour":"red"}"#)).await);
    assert_eq!(field, "colour");

    // Another tenant sees none of it, whatever its role.
    let stranger = token(TenantId::new(), "eve", &["admin"]);
    let t = s.call("POST", "/api/v1/tasks", writer, Some(r#"{"required_capabilities":["code_review"]}"#)).await;
    let t = t.json()["task_id"].as_str().unwrap().to_owned();
    problem(&s.call("GET", &a, &stranger, None).await, 404, "not_found");
    problem(&s.call("POST", &format!("{a}/suspend"), &stranger, Some("{}")).await, 404, "not_found");
    problem(&s.call("GET", &format!("/api/v1/tasks/{t}"), &stranger, None).await, 404, "not_found");
    problem(&s.call("POST", &format!("/api/v1/tasks/{t}/cancel"), &stranger, Some("{}")).await, 404, "not_found");
    assert_eq!(s.call("GET", "/api/v1/agents", &stranger, None).await.json()["items"], serde_json::json!([]));

    // Idempotency-Key: a retry gets the first answer (the gateway's replay), the key on another
    // request is refused, and the key reaches the service: another caller of the tenant (so
    // another gateway slot) sending it gets the first task back, applied once.
    let submit = r#"{"required_capabilities":["code_review"],"payload":{"n":1}}"#;
    let first = s.call("POST", "/api/v1/tasks", &keyed(writer, "submit-1"), Some(submit)).await;
    assert_eq!((first.status, first.json()["replayed"].as_bool()), (201, Some(false)), "{first:?}");
    let again = s.call("POST", "/api/v1/tasks", &keyed(writer, "submit-1"), Some(submit)).await;
    assert_eq!((again.status, again.header("idempotent-replayed")), (201, Some("true")), "{again:?}");
    assert_eq!(again.json()["task_id"], first.json()["task_id"]);
    let other = s.call("POST", "/api/v1/tasks", &keyed(writer, "submit-1"), Some(r#"{"priority":9}"#)).await;
    problem(&other, 422, "failed_precondition");
    let colleague = token(s.tenant, "wendy", &["writer"]);
    let domain = s.call("POST", "/api/v1/tasks", &keyed(&colleague, "submit-1"), Some(submit)).await;
    assert_eq!(domain.json()["task_id"], first.json()["task_id"], "{domain:?}");
    assert_eq!((domain.json()["replayed"].as_bool(), domain.header("idempotent-replayed")), (Some(true), None));
    let queued = s.call("GET", "/api/v1/tasks?state=queued", reader, None).await.json();
    assert_eq!(queued["items"].as_array().map(Vec::len), Some(2), "one keyed task and {t}: {queued}");
    s.stop().await;
}

/// The example worker program (examples/agent/agent.py) connected as `agent`, until dropped.
async fn worker(s: &Setup, agent: &str) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/agent/agent.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .args(["--target", &s.service.running.grpc.to_string(), "--tenant", &s.tenant.to_string()])
        .args(["--agent-id", agent, "--chunk-delay-ms", "5"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the example worker starts (CIM_TEST_PYTHON with grpcio and grpcio-tools)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let welcomed = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("welcome") {
                return true;
            }
        }
        false
    };
    assert!(tokio::time::timeout(std::time::Duration::from_secs(30), welcomed).await.unwrap_or(false), "no welcome");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_streams_its_answer_line_by_line() {
    let s = Setup::start().await;
    let deploy = r#"{"name":"Chat","agent_type":"ai"}"#;
    let id =
        s.call("POST", "/api/v1/agents", &s.writer, Some(deploy)).await.json()["agent_id"].as_str().unwrap().to_owned();
    let a = format!("/api/v1/agents/{id}");
    let model = r#"{"provider":"ollama","model":"llama3:8b"}"#;
    assert_eq!(s.call("PUT", &format!("{a}/model"), &s.writer, Some(model)).await.status, 200);
    assert_eq!(s.call("POST", &format!("{a}/activate"), &s.writer, None).await.status, 200);
    let message = r#"{"content":"hello there agent"}"#;

    // No worker connected: refused before any line is streamed, as problem+json.
    let refused = s.call("POST", &format!("{a}/messages"), &s.writer, Some(message)).await;
    problem(&refused, 422, "failed_precondition");
    problem(&s.call("POST", &format!("{a}/messages"), &s.reader, Some(message)).await, 403, "permission_denied");
    let (field, _) = violation(&s.call("POST", &format!("{a}/messages"), &s.writer, Some(r#"{"content":5}"#)).await);
    assert_eq!(field, "content");

    // Connected: the answer arrives as NDJSON chunks, the last line says how it ended.
    let _worker = worker(&s, &id).await;
    let answer = s.call("POST", &format!("{a}/messages"), &s.writer, Some(message)).await;
    assert_eq!((answer.status, answer.header("content-type")), (200, Some("application/x-ndjson")), "{answer:?}");
    let lines: Vec<serde_json::Value> =
        answer.body.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    let text: String = lines.iter().filter_map(|l| l["content"].as_str()).collect();
    assert_eq!(text, "You said: hello there agent");
    let last = lines.last().unwrap();
    assert_eq!(last["completed"]["finish_reason"], "stop", "{last}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l.get("completed").is_none() && l.get("failed").is_none()));
    s.stop().await;
}
