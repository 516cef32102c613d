//! `GET /api/v1/admin/operations`: what the console's operations page shows, as far as the
//! gateway can see it. The services behind the gateway through their gRPC health (each domain
//! service reports its readiness there, `cim_runtime::health`, and each of its dependency checks
//! as a health service of its own: up or down, computed by the service that holds the
//! credentials), the gateway's own readiness
//! checks, NATS as `cim doctor` checks it (the account's room, the cluster's nodes, each stream's
//! replicas and room: `cim_runtime::nats`), every domain stream with its consumers' lag (the JetStream API, as `cim doctor` reads
//! it), the dead letters per consumer, and links to the Grafana dashboards when
//! `CIM_GATEWAY_GRAFANA_URL` is set. The websocket server is not behind the gateway: its
//! readiness is read from its admin listener's `/health/ready` when
//! `CIM_GATEWAY_WEBSOCKET_ADMIN_URL` names it, and its dashboard is linked.
//!
//! Operators only: these are counts about every tenant's traffic (stream sizes, consumer lag,
//! dead letters per consumer), and roles are per tenant, so the admin role alone would show them
//! to every tenant's admin. The route needs the admin role (the role table) and the handler also
//! needs the caller's tenant to be one of `CIM_GATEWAY_OPERATOR_TENANTS` ([`Operators`]); unset,
//! no one reads it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, FromRef, State};
use cim_auth::{Principal, Role};
use cim_core::{Domain, ErrorCode, SubjectPrefix, TenantId};
use cim_runtime::health::Health;
use cim_runtime::nats::{capacity, cluster};
use serde::Serialize;
use serde_json::Value;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use utoipa::ToSchema;

use crate::problem::{ApiError, ApiResult};
use crate::routes::{DomainRoutes, Purpose, routes};
use crate::upstream::Replicated;

/// Grafana dashboards (`monitoring/grafana/dashboards/<uid>.json`): uid and title.
pub const DASHBOARDS: [(&str, &str); 7] = [
    ("cim-overview", "Overview"),
    ("cim-gateway", "Gateway"),
    ("cim-graph", "Graph service"),
    ("cim-document", "Document service"),
    ("cim-agent", "Agent service"),
    ("cim-workflow", "Workflow service"),
    ("cim-websocket", "Websocket server"),
];

/// How long one check may take: the page answers even when a service hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The operators: admins of the tenants `CIM_GATEWAY_OPERATOR_TENANTS` names. The one rule for
/// the operations view; `/api/v1/auth/me` reports it so the console offers the page to them only.
#[derive(Debug, Clone, Default)]
pub struct Operators(Arc<[TenantId]>);

impl Operators {
    pub fn new(tenants: &[TenantId]) -> Self {
        Self(tenants.into())
    }

    pub fn admits(&self, caller: &Principal) -> bool {
        caller.can(Role::Admin) && self.0.contains(&caller.tenant)
    }

    fn check(&self, caller: &Principal) -> ApiResult<()> {
        if self.admits(caller) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "the operations view covers every tenant: it is for admins of an operator tenant (CIM_GATEWAY_OPERATOR_TENANTS)",
        ))
    }
}

#[derive(Debug)]
pub struct OperationsState {
    pub operators: Operators,
    /// The gateway's own readiness checks.
    pub health: Health,
    /// Each domain service the gateway calls, by name: checked on the replica a call would take.
    pub services: Vec<(&'static str, Arc<dyn Replicated>)>,
    pub nats: async_nats::Client,
    /// `CIM_NATS_URL`: each node is asked who it is routed to (`cim doctor`'s cluster line).
    pub nats_urls: String,
    pub prefix: SubjectPrefix,
    pub grafana_url: Option<String>,
    /// The websocket server's admin listener (`CIM_GATEWAY_WEBSOCKET_ADMIN_URL`) and a client.
    pub websocket_admin: Option<(reqwest::Client, String)>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Operations {
    pub services: Vec<ServiceStatus>,
    /// `cim doctor`'s lines about NATS as a whole: `jetstream` (the account's room) and
    /// `cluster` (every node answers and is routed to all the others).
    pub nats: Vec<CheckLine>,
    pub streams: Vec<StreamStatus>,
    pub dead_letters: DeadLetters,
    /// Empty when `CIM_GATEWAY_GRAFANA_URL` is not set.
    pub dashboards: Vec<Dashboard>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub ready: bool,
    /// Why it is not ready, or what was checked.
    pub detail: String,
}

/// One check's verdict, as `cim doctor` prints it: what was checked and what was found.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckLine {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamStatus {
    pub domain: String,
    pub stream: String,
    /// Absent when the stream does not exist (its service has not started yet) or NATS failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// Its replicas as `cim doctor` reads them: `1 replica`, `3 replicas current (leader n1)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
    /// Why the stream cannot take events now (replicas lost, or full with discard `new`): the
    /// commands are still acknowledged, their events wait in the outbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerStatus {
    pub name: String,
    /// Durable consumers keep their position across restarts; the others belong to one process.
    pub durable: bool,
    /// Messages not yet delivered: the lag.
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    pub stream: String,
    pub total: u64,
    /// Dead letters per subject (`<prefix>.dlq.<consumer>`).
    pub by_subject: Vec<SubjectCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectCount {
    pub subject: String,
    pub messages: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    pub title: String,
    pub url: String,
}

pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<OperationsState>: FromRef<S>,
{
    DomainRoutes::new(purpose).admin(routes!(operations))
}

/// Operations overview
///
/// Services and their readiness, every domain stream with its consumers' lag, dead letters per
/// consumer, and Grafana dashboard links. Counts over every tenant, no event content. Needs the
/// admin role in one of the operator tenants (`CIM_GATEWAY_OPERATOR_TENANTS`); any other caller gets 403.
#[utoipa::path(get, path = "/api/v1/admin/operations", tag = "admin", responses((status = 200, body = Operations)))]
pub async fn operations(
    State(state): State<Arc<OperationsState>>,
    Extension(caller): Extension<Principal>,
) -> ApiResult<Json<Operations>> {
    state.operators.check(&caller)?;
    let services = async {
        let own = gateway_status(&state.health);
        let others =
            futures::future::join_all(state.services.iter().map(|(name, up)| service_status(name, up.channel())));
        let websocket = async {
            match &state.websocket_admin {
                Some((client, url)) => Some(websocket_status(client, url).await),
                None => None,
            }
        };
        let (own, others, websocket) = tokio::join!(own, others, websocket);
        std::iter::once(own).chain(others).chain(websocket).collect::<Vec<_>>()
    };
    let streams = futures::future::join_all(
        Domain::ALL.into_iter().map(|d| stream_status(&state.nats, d, state.prefix.stream_name(d))),
    );
    let (services, nats, streams, dead_letters) = tokio::join!(
        services,
        nats_status(&state.nats, &state.nats_urls),
        streams,
        dead_letters(&state.nats, state.prefix.dlq_stream_name())
    );
    let dashboards = match &state.grafana_url {
        Some(base) => DASHBOARDS
            .iter()
            .map(|(uid, title)| Dashboard {
                title: (*title).into(),
                url: format!("{}/d/{uid}", base.trim_end_matches('/')),
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Json(Operations { services, nats, streams, dead_letters, dashboards }))
}

async fn gateway_status(health: &Health) -> ServiceStatus {
    let r = health.readiness().await;
    let detail = r
        .checks
        .iter()
        .map(|c| match &c.error {
            None => format!("{}: ok", c.name),
            Some(e) => format!("{}: {e}", c.name),
        })
        .collect::<Vec<_>>()
        .join("; ");
    ServiceStatus { name: "gateway".into(), ready: r.ready, detail }
}

/// The dependencies `cim doctor` checks; a service reports those of its readiness checks it runs
/// (`cim_runtime::health::dependency_service`) and answers NOT_FOUND for the others.
const DEPENDENCIES: [&str; 4] = ["postgres", "nats", "redis", "object_store"];

/// The service's gRPC health: SERVING when its readiness checks pass, and each check it runs
/// as a health service of its own (up or down only: the service holds the credentials and keeps
/// the error text, which may name a host, on its own `/health/ready`).
async fn service_status(name: &str, channel: Channel) -> ServiceStatus {
    let client = HealthClient::new(channel);
    let ask = |service: String| {
        let mut client = client.clone();
        async move { tokio::time::timeout(CHECK_TIMEOUT, client.check(HealthCheckRequest { service })).await }
    };
    let serving = |reply: tonic_health::pb::HealthCheckResponse| {
        reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    };
    let (ready, mut detail) = match ask(String::new()).await {
        Err(_) => {
            return ServiceStatus {
                name: name.into(),
                ready: false,
                detail: format!("no answer within {CHECK_TIMEOUT:?}"),
            };
        }
        Ok(Err(status)) => {
            return ServiceStatus {
                name: name.into(),
                ready: false,
                detail: format!("unreachable: {}", status.message()),
            };
        }
        Ok(Ok(reply)) if serving(*reply.get_ref()) => (true, "serving".to_owned()),
        Ok(Ok(_)) => (false, "not serving: a readiness check fails".to_owned()),
    };
    let checks = futures::future::join_all(
        DEPENDENCIES.map(|d| async move { (d, ask(cim_runtime::health::dependency_service(d)).await) }),
    )
    .await;
    let lines: Vec<String> = checks
        .into_iter()
        .filter_map(|(d, answer)| match answer {
            Ok(Ok(reply)) => Some(format!("{d}: {}", if serving(reply.into_inner()) { "ok" } else { "failing" })),
            // Not one of this service's checks.
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => None,
            Ok(Err(status)) => Some(format!("{d}: unknown ({})", status.message())),
            Err(_) => Some(format!("{d}: no answer within {CHECK_TIMEOUT:?}")),
        })
        .collect();
    if !lines.is_empty() {
        detail = lines.join("; ");
    }
    ServiceStatus { name: name.into(), ready, detail }
}

/// The websocket server's readiness, as its admin listener answers `/health/ready` (200 ready,
/// 503 not, with each check's error in the body: `cim_runtime::admin`).
async fn websocket_status(client: &reqwest::Client, base: &str) -> ServiceStatus {
    let url = format!("{}/health/ready", base.trim_end_matches('/'));
    let read = async {
        let response = client.get(&url).timeout(CHECK_TIMEOUT).send().await.map_err(|e| format!("unreachable: {e}"))?;
        let code = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        Ok::<_, String>((code.is_success(), body))
    };
    let (ready, detail) = match read.await {
        Err(e) => (false, e),
        Ok((ready, body)) => {
            let checks = body["checks"].as_array().cloned().unwrap_or_default();
            let detail = checks
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or("?");
                    match c["error"].as_str() {
                        None => format!("{name}: ok"),
                        Some(e) => format!("{name}: {e}"),
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            let detail = match (detail.is_empty(), ready) {
                (false, _) => detail,
                (true, true) => "ready".into(),
                (true, false) => "not ready".into(),
            };
            (ready, detail)
        }
    };
    ServiceStatus { name: "websocket".into(), ready, detail }
}

/// The account's JetStream room and the cluster's nodes, as `cim doctor` checks them.
async fn nats_status(nats: &async_nats::Client, urls: &str) -> Vec<CheckLine> {
    let line = |name: &str, verdict: Result<String, String>| {
        let (ok, detail) = match verdict {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        CheckLine { name: name.into(), ok, detail }
    };
    let account = async {
        let info = js_api(nats, "$JS.API.INFO", "").await?;
        capacity::account_room(&info)?;
        let count = |k: &str| info[k].as_u64().unwrap_or(0);
        Ok(format!("JetStream on: {} streams, {} consumers", count("streams"), count("consumers")))
    };
    let (account, nodes) = tokio::join!(account, cluster::nodes(urls, CHECK_TIMEOUT));
    vec![line("jetstream", account), line("cluster", nodes)]
}

async fn stream_status(nats: &async_nats::Client, domain: Domain, stream: String) -> StreamStatus {
    let mut status = StreamStatus {
        domain: domain.to_string(),
        stream: stream.clone(),
        messages: None,
        last_sequence: None,
        replicas: None,
        problem: None,
        error: None,
        consumers: Vec::new(),
    };
    let info = match js_api(nats, &format!("$JS.API.STREAM.INFO.{stream}"), "").await {
        Ok(info) => info,
        Err(e) => {
            status.error = Some(e);
            return status;
        }
    };
    status.messages = info["state"]["messages"].as_u64();
    status.last_sequence = info["state"]["last_seq"].as_u64();
    match cluster::stream_replicas(&info) {
        Ok(replicas) => status.replicas = Some(replicas),
        Err(lost) => status.problem = Some(lost),
    }
    if let Err(full) = capacity::stream_room(&info) {
        status.problem = Some(match status.problem.take() {
            Some(lost) => format!("{lost}; {full}"),
            None => full,
        });
    }
    loop {
        let offset = format!("{{\"offset\":{}}}", status.consumers.len());
        let page = match js_api(nats, &format!("$JS.API.CONSUMER.LIST.{stream}"), &offset).await {
            Ok(p) => p,
            Err(e) => {
                status.error = Some(format!("cannot list consumers: {e}"));
                break;
            }
        };
        let items = page["consumers"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0);
        let last = items.is_empty();
        status.consumers.extend(items.iter().map(|c| ConsumerStatus {
            name: c["name"].as_str().unwrap_or("?").to_owned(),
            durable: c["config"]["durable_name"].is_string(),
            pending: c["num_pending"].as_u64().unwrap_or(0),
            ack_pending: c["num_ack_pending"].as_u64().unwrap_or(0),
            redelivered: c["num_redelivered"].as_u64().unwrap_or(0),
        }));
        if last || status.consumers.len() as u64 >= total {
            break;
        }
    }
    // Durable consumers first (the ones an operator acts on), then by name.
    status.consumers.sort_by(|a, b| b.durable.cmp(&a.durable).then(a.name.cmp(&b.name)));
    status
}

async fn dead_letters(nats: &async_nats::Client, stream: String) -> DeadLetters {
    let mut out = DeadLetters { stream: stream.clone(), total: 0, by_subject: Vec::new(), error: None };
    match js_api(nats, &format!("$JS.API.STREAM.INFO.{stream}"), r#"{"subjects_filter":">"}"#).await {
        Ok(info) => {
            out.total = info["state"]["messages"].as_u64().unwrap_or(0);
            if let Some(subjects) = info["state"]["subjects"].as_object() {
                out.by_subject = subjects
                    .iter()
                    .map(|(s, n)| SubjectCount { subject: s.clone(), messages: n.as_u64().unwrap_or(0) })
                    .collect();
                out.by_subject.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.subject.cmp(&b.subject)));
            }
        }
        // Created by the first domain service to start: none yet means no dead letters yet.
        Err(e) if e.contains("not found") => {}
        Err(e) => out.error = Some(e),
    }
    out
}

/// One JetStream API request (`cim_runtime::nats::js_api`, as `cim doctor` makes it), bounded
/// so the page answers when NATS does not.
async fn js_api(nats: &async_nats::Client, subject: &str, payload: &str) -> Result<Value, String> {
    cim_runtime::nats::js_api(nats, subject, payload, CHECK_TIMEOUT).await
}
