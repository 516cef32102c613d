//! A webhook service for one test (its own schema and subject prefix, port 0, a short retry
//! budget), a real HTTP receiver whose answers the test scripts, and short ways to make events.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use cim_core::{AggregateId, TenantId};
use cim_proto::webhook as pb;
use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
use cim_runtime::config::WebhookSettings;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};
use cim_webhook::app::{WebhookOptions, prepare_with};
use tonic::transport::Channel;

pub type Client = WebhookServiceClient<Channel>;

/// Attempts and waits short enough for a test, long enough for a loaded machine.
pub fn fast() -> WebhookSettings {
    WebhookSettings {
        attempts: 3,
        backoff: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
        timeout: Duration::from_secs(3),
        poll: Duration::from_millis(50),
        concurrency: 8,
        idle_exit: None,
    }
}

pub fn vars() -> [(&'static str, String); 2] {
    // Several services and the tests' own pools share one Postgres of 100 connections.
    // Warnings only, but the spans that carry trace context (a request's, a delivery's) on.
    let log = "warn,cim_runtime::grpc=info,cim_webhook=info";
    [("CIM_DATABASE_MAX_CONNECTIONS", "8".to_owned()), ("CIM_LOG", log.to_owned())]
}

pub struct Service {
    pub running: Running,
}

impl Service {
    pub async fn start() -> Service {
        Service::start_with(fast()).await
    }

    pub async fn start_with(settings: WebhookSettings) -> Service {
        let (schema, prefix) = (unique("w"), unique("p"));
        Service { running: Service::instance(&schema, &prefix, settings).await }
    }

    /// An instance over `schema` and `prefix` (a replica, or a restart).
    pub async fn instance(schema: &str, prefix: &str, settings: WebhookSettings) -> Running {
        let config = config(ServiceKind::Webhook, prefix, &vars());
        // A tracer, as every service has one: commands' trace context goes with their events.
        static TELEMETRY: std::sync::OnceLock<Option<cim_runtime::telemetry::TelemetryGuard>> =
            std::sync::OnceLock::new();
        TELEMETRY.get_or_init(|| cim_runtime::telemetry::init("webhook-test", &config).ok());
        let shutdown = Shutdown::new();
        let options = WebhookOptions { schema: schema.to_owned(), settings };
        let prepared = prepare_with(&config, &shutdown, options).await.unwrap();
        Running::spawn(prepared, schema.to_owned(), prefix.to_owned(), shutdown)
    }

    pub async fn client(&self) -> Client {
        WebhookServiceClient::new(self.running.channel().await)
    }
}

/// Registers a subscription; answers (id, secret, state).
pub async fn subscribe(
    client: &mut Client,
    tenant: TenantId,
    id: AggregateId,
    filter: &str,
    condition: &str,
    url: &str,
) -> pb::CreateSubscriptionResponse {
    let request = pb::CreateSubscriptionRequest {
        subscription_id: id.to_string(),
        name: "test".into(),
        filter: filter.into(),
        condition: condition.into(),
        url: url.into(),
        ..Default::default()
    };
    client.create_subscription(req(tenant, request)).await.unwrap().into_inner()
}

/// A subscription that makes events and receives none: on graph events no test publishes. Its
/// registration and activation are two events; [`cycle`] adds two more.
pub async fn source(client: &mut Client, tenant: TenantId, sink: &str) -> AggregateId {
    let id = AggregateId::new();
    let made = subscribe(client, tenant, id, "graph.evt.none.*.*", "", sink).await;
    assert_eq!(made.state, "active", "{made:?}");
    id
}

/// Disables and activates `id` again: two more events of its aggregate.
pub async fn cycle(client: &mut Client, tenant: TenantId, id: AggregateId) {
    let command = |reason: &str| pb::SubscriptionCommand {
        subscription_id: id.to_string(),
        reason: reason.into(),
        ..Default::default()
    };
    client.disable_subscription(req(tenant, command("cycle"))).await.unwrap();
    client.activate_subscription(req(tenant, command(""))).await.unwrap();
}

pub async fn get(client: &mut Client, tenant: TenantId, id: AggregateId) -> pb::Subscription {
    let request = pb::GetSubscriptionRequest { subscription_id: id.to_string() };
    client.get_subscription(req(tenant, request)).await.unwrap().into_inner()
}

/// Waits until the subscription's deliveries are `(delivered, pending, dead)` (an outcome is
/// recorded just after the receiver answered); answers them.
pub async fn settled(
    client: &mut Client,
    tenant: TenantId,
    id: AggregateId,
    want: (u64, u64, u64),
) -> pb::DeliveryStats {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = get(client, tenant, id).await.deliveries.unwrap();
        if (stats.delivered, stats.pending, stats.dead) == want {
            return stats;
        }
        assert!(Instant::now() < until, "waited for {want:?}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One call the receiver got.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// How the receiver answers a POST.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooMany(u64),
    /// 200 after a pause.
    Slow(Duration),
}

#[derive(Debug)]
struct Script {
    calls: Mutex<Vec<Call>>,
    next: Mutex<VecDeque<Answer>>,
    otherwise: Mutex<Answer>,
    allow: Mutex<bool>,
}

/// A real HTTP server on 127.0.0.1: answers the handshake (when allowed), records every POST and
/// answers it as scripted (the queued answers first, then `otherwise`).
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    script: Arc<Script>,
    stop: Arc<tokio::sync::Notify>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let script = Arc::new(Script {
            calls: Mutex::new(Vec::new()),
            next: Mutex::new(VecDeque::new()),
            otherwise: Mutex::new(Answer::Status(200)),
            allow: Mutex::new(true),
        });
        Receiver::serve("127.0.0.1:0".parse().unwrap(), script).await
    }

    async fn serve(addr: SocketAddr, script: Arc<Script>) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let handler = {
            let script = script.clone();
            move |method: Method, headers: HeaderMap, body: Bytes| {
                let script = script.clone();
                async move { answer(&script, method, headers, body).await }
            }
        };
        let app = axum::Router::new().fallback(handler);
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.notified().await }).await;
        });
        Receiver { addr, script, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn queue(&self, answers: &[Answer]) {
        self.script.next.lock().unwrap().extend(answers.iter().copied());
    }

    pub fn otherwise(&self, answer: Answer) {
        *self.script.otherwise.lock().unwrap() = answer;
    }

    pub fn allow_handshake(&self, allow: bool) {
        *self.script.allow.lock().unwrap() = allow;
    }

    pub fn calls(&self) -> Vec<Call> {
        self.script.calls.lock().unwrap().clone()
    }

    /// Stops listening: the port refuses connections until [`Receiver::restart`].
    pub fn down(&self) {
        self.stop.notify_one();
    }

    /// Listens again on the same port, with the same script and record.
    pub async fn restart(&self) -> Receiver {
        for _ in 0..50 {
            if tokio::net::TcpListener::bind(self.addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Receiver::serve(self.addr, self.script.clone()).await
    }

    /// Waits until `done(calls)`, or fails after `patience` naming `what`.
    pub async fn wait(&self, what: &str, patience: Duration, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let until = Instant::now() + patience;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            assert!(Instant::now() < until, "waited {patience:?} for {what}; got {} calls", calls.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn answer(script: &Script, method: Method, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    if method == Method::OPTIONS {
        let origin = headers.get("webhook-request-origin").cloned();
        return match (origin, *script.allow.lock().unwrap()) {
            (Some(origin), true) => (StatusCode::OK, [("webhook-allowed-origin", origin)]).into_response(),
            _ => StatusCode::FORBIDDEN.into_response(),
        };
    }
    script.calls.lock().unwrap().push(Call { at: Instant::now(), headers, body });
    let next = script.next.lock().unwrap().pop_front();
    let answer = next.unwrap_or_else(|| *script.otherwise.lock().unwrap());
    match answer {
        Answer::Status(status) => StatusCode::from_u16(status).unwrap().into_response(),
        Answer::TooMany(seconds) => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", seconds.to_string())]).into_response()
        }
        Answer::Slow(pause) => {
            tokio::time::sleep(pause).await;
            StatusCode::OK.into_response()
        }
    }
}

/// Checks a call's Standard Webhooks signature with an HMAC of this test's own (not the
/// service's signing code).
pub fn signed_with(secret: &str, call: &Call) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", call.header("webhook-id"), call.header("webhook-timestamp")).as_bytes());
    mac.update(&call.body);
    let expected = format!("v1,{}", engine.encode(mac.finalize().into_bytes()));
    call.header("webhook-signature") == expected
}
