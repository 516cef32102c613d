//! One trace, proven: two `cim serve` processes (the graph service; the gateway and websocket
//! server) export their spans over OTLP/gRPC to a receiver in this test process; one REST
//! AddNode, seen by a websocket client, is one trace from the gateway's HTTP span to the
//! websocket server's dispatch span, each hop the child of the one before, across both
//! processes, and the graph service's JSON log line and the event frame carry its id. Below,
//! the same for a workflow's automated step and a webhook delivery.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "trace-test-secret-0123456789abcdef0123";

/// A span as received, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/gRPC trace collector: keeps every span it is sent.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<tokio::sync::Notify>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Received {
                        name: s.name,
                        kind: s.kind,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                    });
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        format!("http://{addr}")
    }

    /// The spans of `trace_id` once `want` names are all among them, waiting for exports up to
    /// `limit`.
    async fn trace(&self, trace_id: &str, want: &[&str], limit: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            let spans: Vec<Received> =
                self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect();
            if want.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("trace {trace_id}: wanted {want:?}, received {spans:#?}");
            }
        }
    }
}

fn token(tenant: &str) -> String {
    let claims = cim_auth::Claims {
        sub: "tracer".into(),
        tenant: tenant.to_owned(),
        roles: vec!["writer".into()],
        exp: cim_auth::now_secs() + 600,
        iss: "cim".into(),
        aud: "cim".into(),
    };
    cim_auth::issue_hs256(SECRET, &claims).unwrap()
}

/// One HTTP/1.1 request: (status, JSON body).
async fn http(addr: &str, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A gRPC request of `tenant`, continuing the caller's trace when `traceparent` is given.
fn req<T>(tenant: &str, msg: T, traceparent: Option<String>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-cim-tenant", tenant.parse().unwrap());
    r.metadata_mut().insert("x-cim-actor", "user:tracer".parse().unwrap());
    if let Some(tp) = traceparent {
        r.metadata_mut().insert("traceparent", tp.parse().unwrap());
    }
    r
}

/// Reads frames until one satisfies `f`.
async fn frame<S>(ws: &mut S, what: &str, f: impl Fn(&Value) -> bool) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m.unwrap() {
                let v: Value = serde_json::from_str(&t).unwrap();
                if f(&v) {
                    return v;
                }
            }
        }
        panic!("the websocket closed before {what}");
    });
    found.await.unwrap_or_else(|_| panic!("no {what} within 10 s"))
}

/// What each trace test starts from: a runtime, the collector, a database and subject prefix of
/// its own (the streams deleted at the end), and the environment its `cim serve`s share.
struct Traced {
    rt: tokio::runtime::Runtime,
    collector: Collector,
    env: Vec<(&'static str, String)>,
    _db: TempDb,
    _cleanup: DeleteStreams,
}

impl Traced {
    fn new(tag: &str, extra: &[(&'static str, String)]) -> Traced {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let collector = Collector::default();
        let endpoint = rt.block_on(collector.start());
        let db = TempDb::new();
        let prefix = format!("ttrace{tag}{}", uuid_suffix());
        let cleanup = DeleteStreams { nats: test_nats(), prefix: prefix.clone() };
        let mut env = vec![
            ("CIM_DATABASE_URL", db.url.clone()),
            ("CIM_NATS_URL", test_nats()),
            ("CIM_SUBJECT_PREFIX", prefix),
            ("CIM_OTLP_ENDPOINT", endpoint),
        ];
        env.extend_from_slice(extra);
        Traced { rt, collector, env, _db: db, _cleanup: cleanup }
    }
}

#[test]
fn one_rest_add_node_is_one_trace_from_the_gateway_to_the_websocket_client() {
    let traced = Traced::new(
        "",
        &[
            ("CIM_REDIS_URL", test_redis()),
            ("CIM_JWT_HS256_SECRET", SECRET.into()),
            ("CIM_LOG_FORMAT", "json".into()),
            // Logs stay quiet but for the executor's line per command: traces do not depend on it.
            ("CIM_LOG", "warn,cim_aggregate::executor=debug".into()),
        ],
    );
    let (rt, collector, env) = (&traced.rt, &traced.collector, &traced.env);
    let graph = Serve::start(env, "graph");
    let graph_url = ("CIM_GATEWAY_GRAPH_URLS", format!("http://{}", graph.listener("graph")));
    let edges = Serve::start(&[&env[..], &[graph_url]].concat(), "gateway,websocket");
    let (gateway, websocket) = (edges.listener("gateway"), edges.listener("websocket"));
    let tenant = cim_core::TenantId::new().to_string();
    let token = token(&tenant);

    let (frame_traceparent, http_status) = rt.block_on(async {
        let (status, graph) = http(&gateway, "POST", "/api/v1/graphs", &token, r#"{"name":"traced"}"#).await;
        assert_eq!(status, 201, "{graph}");
        let graph_id = graph["graph_id"].as_str().unwrap().to_owned();

        let mut request = format!("ws://{websocket}/ws").into_client_request().unwrap();
        let protocols = format!("cim.v1, bearer.{token}");
        request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        frame(&mut ws, "welcome", |v| v["type"] == "welcome").await;
        let subscribe = json!({"type": "subscribe", "id": "s1",
            "filter": {"domain": "graph", "aggregate_id": graph_id, "event_types": ["node_added"]}});
        ws.send(Message::Text(subscribe.to_string().into())).await.unwrap();
        frame(&mut ws, "subscribed", |v| v["type"] == "subscribed").await;

        let path = format!("/api/v1/graphs/{graph_id}/nodes");
        let (status, node) = http(&gateway, "POST", &path, &token, r#"{"id":"n1","type":"person"}"#).await;
        let event = frame(&mut ws, "the node_added event", |v| v["type"] == "event").await;
        assert_eq!(event["event"]["payload"]["node_id"], "n1", "{event}");
        (
            event["traceparent"].as_str().unwrap_or_else(|| panic!("no traceparent in {event}")).to_owned(),
            (status, node),
        )
    });
    assert_eq!(http_status.0, 201, "{}", http_status.1);
    // SIGTERM: each process flushes its exporter before it exits.
    let output = graph.output.clone();
    edges.stop();
    graph.stop();

    // 00-<trace id>-<span id>-<flags>
    let parts: Vec<&str> = frame_traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{frame_traceparent}");
    let (trace_id, frame_span) = (parts[1], parts[2]);
    let (http_span, grpc_span) = ("POST /api/v1/graphs/{graph_id}/nodes", "/cim.graph.v1.GraphService/AddNode");
    let chain = [http_span, grpc_span, "eventstore.append", "relay.publish", "websocket.dispatch"];
    let spans = rt.block_on(collector.trace(trace_id, &chain, Duration::from_secs(10)));
    let by_name: HashMap<&str, &Received> = chain
        .iter()
        .map(|name| {
            let mut of: Vec<&Received> = spans.iter().filter(|s| s.name == *name).collect();
            assert_eq!(of.len(), 1, "one {name} span in the trace: {spans:#?}");
            (*name, of.remove(0))
        })
        .collect();
    // The gateway's span starts the trace (the client sent no traceparent); every later hop is
    // the child of the one before: synchronous calls (HTTP → gRPC → append) and the hops after
    // the commit (relay, websocket), which continue the context stored with the event.
    assert_eq!(by_name[http_span].parent, "", "the HTTP span is the root: {spans:#?}");
    for pair in chain.windows(2) {
        assert_eq!(by_name[pair[1]].parent, by_name[pair[0]].span_id, "{} is the child of {}", pair[1], pair[0]);
    }
    let kinds = chain.map(|name| SpanKind::try_from(by_name[name].kind).unwrap());
    assert_eq!(kinds, [SpanKind::Server, SpanKind::Server, SpanKind::Internal, SpanKind::Producer, SpanKind::Consumer]);
    assert_eq!(by_name["websocket.dispatch"].span_id, frame_span, "the frame carries the dispatch span's context");

    // The graph service's log line of the command carries the same trace id.
    let lines = output.lock().unwrap().clone();
    let logged = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "command executed" && l["service"] == "graph" && l["command"] == "add_node");
    let logged = logged.unwrap_or_else(|| panic!("no AddNode log line in {lines:#?}"));
    assert_eq!(logged["trace_id"], trace_id, "{logged}");
    assert_eq!(logged["outcome"], "ok", "{logged}");
}

#[test]
fn a_workflows_automated_step_is_in_the_trace_of_start_workflow() {
    use cim_proto::workflow as pb;
    let traced = Traced::new("w", &[]);
    let (rt, collector, env) = (&traced.rt, &traced.collector, &traced.env);
    let workflow = Serve::start(env, "workflow");
    let addr = workflow.listener("workflow");

    // The caller's own span: StartWorkflow continues it.
    let (trace_id, caller_span) = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174");
    let (instance, status, context) = rt.block_on(async {
        let mut client =
            pb::workflow_service_client::WorkflowServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let tenant = cim_core::TenantId::new().to_string();
        let definition = json!({"name": "traced", "steps": [
            {"id": "total", "kind": "automated", "set": {"total": "price * qty"}}]});
        let definition = cim_proto::json::json_to_struct(definition.as_object().unwrap());
        let create = pb::CreateDefinitionRequest { definition: Some(definition), ..Default::default() };
        let created = client.create_definition(req(&tenant, create, None)).await.unwrap().into_inner();
        let context = cim_proto::json::json_to_struct(json!({"price": 2, "qty": 3}).as_object().unwrap());
        let start =
            pb::StartWorkflowRequest { definition_id: created.id, context: Some(context), ..Default::default() };
        let traceparent = format!("00-{trace_id}-{caller_span}-01");
        let started = client.start_workflow(req(&tenant, start, Some(traceparent))).await.unwrap().into_inner();
        let get = pb::GetWorkflowRequest { instance_id: started.id.clone() };
        let instance = client.get_workflow(req(&tenant, get, None)).await.unwrap().into_inner();
        let context = cim_proto::json::struct_to_json(instance.context).unwrap();
        (started.id, instance.status, serde_json::Value::Object(context))
    });
    assert_eq!(status, "completed", "the step ran in the start's own write: {context}");
    assert_eq!(context["total"], 6, "{context}");
    workflow.stop();

    let grpc = "/cim.workflow.v1.WorkflowService/StartWorkflow";
    let spans = rt.block_on(collector.trace(trace_id, &[grpc, "workflow.step"], Duration::from_secs(10)));
    let one = |name: &str| {
        let of: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(of.len(), 1, "one {name} span for instance {instance}: {spans:#?}");
        of[0].clone()
    };
    let (start, step) = (one(grpc), one("workflow.step"));
    assert_eq!(start.parent, caller_span, "StartWorkflow continues the caller's trace");
    assert_eq!(step.parent, start.span_id, "the automated step ran inside StartWorkflow");
    assert_eq!(one("eventstore.append").parent, start.span_id, "the start's events were appended in it");
}

/// A webhook delivery continues the trace of the command whose event it delivers: the caller's
/// CreateGraph → the append → the relay's publish → the webhook service's `webhook.deliver`
/// (two services in one `cim serve`, the event crossing NATS and the delivery queue in
/// Postgres), and the receiver's `traceparent` names that delivery span.
#[test]
fn a_webhook_delivery_is_in_the_trace_of_the_command_whose_event_it_delivers() {
    use cim_proto::graph::graph_service_client::GraphServiceClient;
    use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
    let traced = Traced::new("h", &[("CIM_WEBHOOK_POLL_MS", "50".into())]);
    let (rt, collector, env) = (&traced.rt, &traced.collector, &traced.env);
    let services = Serve::start(env, "graph,webhook");
    let (url, seen) = receiver();
    let tenant = cim_core::TenantId::new().to_string();
    let (trace_id, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    rt.block_on(async {
        let mut hooks =
            WebhookServiceClient::connect(format!("http://{}", services.listener("webhook"))).await.unwrap();
        let create = cim_proto::webhook::CreateSubscriptionRequest {
            name: "traced".into(),
            filter: "graph.evt.graph.*.*".into(),
            url: url.clone(),
            ..Default::default()
        };
        let made = hooks.create_subscription(req(&tenant, create, None)).await.unwrap().into_inner();
        assert_eq!(made.state, "active", "{made:?}");
        let mut graphs = GraphServiceClient::connect(format!("http://{}", services.listener("graph"))).await.unwrap();
        let create = cim_proto::graph::CreateGraphRequest { name: "traced".into(), ..Default::default() };
        graphs.create_graph(req(&tenant, create, Some(format!("00-{trace_id}-{caller_span}-01")))).await.unwrap();
    });
    wait("the delivery", Duration::from_secs(30), || !seen.lock().unwrap().is_empty());
    services.stop();

    let grpc = "/cim.graph.v1.GraphService/CreateGraph";
    let spans =
        rt.block_on(collector.trace(trace_id, &[grpc, "relay.publish", "webhook.deliver"], Duration::from_secs(10)));
    let one = |name: &str| {
        let of: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(of.len(), 1, "one {name} span: {spans:#?}");
        of[0].clone()
    };
    let (command, publish, deliver) = (one(grpc), one("relay.publish"), one("webhook.deliver"));
    assert_eq!(command.parent, caller_span, "CreateGraph continues the caller's trace");
    assert_eq!(one("eventstore.append").parent, command.span_id, "the event was appended in CreateGraph");
    assert_eq!(publish.parent, one("eventstore.append").span_id, "the relay continues the stored context");
    assert_eq!(deliver.parent, publish.span_id, "the delivery continues the published message's context");
    assert_eq!(SpanKind::try_from(deliver.kind).unwrap(), SpanKind::Client, "{deliver:?}");
    let delivered = seen.lock().unwrap()[0].clone();
    let traceparent = delivered.get("traceparent").unwrap_or_else(|| panic!("no traceparent in {delivered:?}"));
    assert_eq!(traceparent, &format!("00-{trace_id}-{}-01", deliver.span_id), "{delivered:?}");
}
