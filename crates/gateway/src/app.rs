//! Wiring: state, router (public routes, then authenticated ones with their layers), and the
//! process lifecycle under the runtime's `ServiceHost`.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use cim_auth::Verifier;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
use cim_runtime::config::{Config, ServiceKind};
use cim_runtime::error::RuntimeError;
use cim_runtime::host::{ServiceHost, bind};
use cim_runtime::tls::HttpListener;
use cim_runtime::{Shutdown, nats, redis};
use tokio::net::TcpListener;

use crate::agent::AgentState;
use crate::auth::{AuthState, Credentials};
use crate::authz::Rules;
use crate::cache::{Bumps, CacheState, DomainCache, Invalidator};
use crate::client::Proxies;
use crate::document::DocumentState;
use crate::graph::GraphState;
use crate::idempotency::IdempotencyState;
use crate::limits::{Deadline, RateLimit, RateLimiter};
use crate::links::LinkSigner;
use crate::lockout::Lockout;
use crate::operations::{OperationsState, Operators};
use crate::routes::{DomainRoutes, Parts, Purpose};
use crate::upstream::Upstream;
use crate::webhook::WebhookState;
use crate::workflow::WorkflowState;

/// The routes' state; each handler extracts only its own part ([`FromRef`]). Behind one `Arc`,
/// and each part an `Arc` or a pool handle: axum clones the state for every request and every
/// extractor, and cloning fields one by one (the gRPC clients' channel handles, the pools) was
/// measurable in the gateway benchmark.
#[derive(Clone)]
struct AppState(Arc<Routes>);

struct Routes {
    graph: Arc<GraphState>,
    document: Arc<DocumentState>,
    agent: Arc<AgentState>,
    workflow: Arc<WorkflowState>,
    webhook: Arc<WebhookState>,
    operations: Arc<OperationsState>,
    credentials: Credentials,
}

impl FromRef<AppState> for Arc<GraphState> {
    fn from_ref(state: &AppState) -> Self {
        state.0.graph.clone()
    }
}

impl FromRef<AppState> for Arc<DocumentState> {
    fn from_ref(state: &AppState) -> Self {
        state.0.document.clone()
    }
}

impl FromRef<AppState> for Arc<AgentState> {
    fn from_ref(state: &AppState) -> Self {
        state.0.agent.clone()
    }
}

impl FromRef<AppState> for Arc<WorkflowState> {
    fn from_ref(state: &AppState) -> Self {
        state.0.workflow.clone()
    }
}

impl FromRef<AppState> for Arc<WebhookState> {
    fn from_ref(state: &AppState) -> Self {
        state.0.webhook.clone()
    }
}

impl FromRef<AppState> for Arc<OperationsState> {
    fn from_ref(state: &AppState) -> Self {
        state.0.operations.clone()
    }
}

impl FromRef<AppState> for Operators {
    fn from_ref(state: &AppState) -> Self {
        state.0.operations.operators.clone()
    }
}

impl FromRef<AppState> for Credentials {
    fn from_ref(state: &AppState) -> Self {
        state.0.credentials.clone()
    }
}

/// Each layer's own state, handed to its middleware alone.
struct Layers {
    auth: Arc<AuthState>,
    idempotency: IdempotencyState,
    cache: Arc<CacheState>,
    deadline: Deadline,
    max_body_bytes: usize,
    proxies: Proxies,
}

/// Every domain's route table (`crate::routes`): the routers, the OpenAPI description and the
/// role each route needs all come from these.
fn domains(purpose: Purpose) -> [DomainRoutes<AppState>; 7] {
    [
        crate::graph::routes(purpose),
        crate::document::routes(purpose),
        crate::agent::routes(purpose),
        crate::workflow::routes(purpose),
        crate::webhook::routes(purpose),
        crate::accounts::routes(purpose),
        crate::operations::routes(purpose),
    ]
}

fn api(purpose: Purpose) -> Parts<AppState> {
    domains(purpose).into_iter().reduce(DomainRoutes::merge).expect("at least one domain").into_parts()
}

/// The role each authenticated route needs, checked by [`crate::authz`].
pub fn route_roles() -> Rules {
    static RULES: LazyLock<Rules> = LazyLock::new(|| api(Purpose::Serve).rules);
    RULES.clone()
}

/// The OpenAPI document served at `/api/openapi.json`, built from the route tables when it is
/// first asked for (not at start: [`Purpose`]).
pub fn openapi() -> &'static str {
    static DOCUMENT: LazyLock<String> =
        LazyLock::new(|| crate::openapi::describe(api(Purpose::Describe).openapi).to_pretty_json().unwrap_or_default());
    DOCUMENT.as_str()
}

/// Routes whose bodies stream for as long as their bytes or answers take: no request deadline,
/// no idempotent replay (a replay would have to hold the whole stream).
const STREAMED_ROUTES: [&str; 3] =
    [crate::document::TRANSFER_ROUTES[0], crate::document::TRANSFER_ROUTES[1], crate::agent::CONVERSATION_ROUTE];

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Config(String),
}

async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi())
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(health): State<cim_runtime::health::Health>) -> impl IntoResponse {
    let r = health.readiness().await;
    (if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(r))
}

async fn method_not_allowed() -> crate::problem::ApiError {
    crate::problem::ApiError::method_not_allowed()
}

async fn not_found() -> crate::problem::ApiError {
    crate::problem::ApiError::new(cim_core::ErrorCode::NotFound, "no such route")
}

/// The complete router.
fn router(state: AppState, layers: Layers, api: Parts<AppState>, health: cim_runtime::health::Health) -> Router {
    let Parts { authenticated, public, rules, .. } = api;
    let console = crate::console::routes(layers.auth.credentials.websocket_url.as_deref());
    let authenticated = authenticated
        // Layers run bottom-up: auth first, then the role check (crate::authz), and only then
        // may idempotency replay or the cache answer.
        .layer(from_fn_with_state(layers.cache, crate::cache::middleware))
        .layer(from_fn_with_state(layers.idempotency, crate::idempotency::middleware))
        .layer(from_fn_with_state(rules, crate::authz::middleware))
        .layer(from_fn_with_state(layers.auth, crate::auth::middleware));
    let public = public
        .route("/api/openapi.json", get(openapi_json))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready).with_state(health))
        .merge(console);
    public
        .merge(authenticated)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(layers.max_body_bytes))
        .layer(from_fn_with_state(layers.deadline, crate::limits::deadline_and_metrics))
        .layer(from_fn_with_state(layers.proxies, crate::security_headers::middleware))
        .with_state(state)
}

pub struct Prepared {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    host: ServiceHost,
    listener: HttpListener,
    admin: TcpListener,
    app: Router,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Connects to NATS and Redis (lazily: the gateway serves without Redis) and binds.
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    crate::limits::describe();
    crate::lockout::describe();
    crate::cache::describe();
    let settings = &config.edge.gateway;
    let verifier = Verifier::from_settings(&config.edge.auth).await.map_err(|e| AppError::Config(e.to_string()))?;
    let key_refresh = verifier.clone();
    let timeout = Some(settings.request_timeout);
    // The domain services take the tenant this gateway verified only if it is signed.
    let identity = config.service_identity.clone();
    // `https://` upstreams: checked against CIM_TLS_CA_FILE, this gateway's certificate presented.
    let upstream_tls = config.tls.client();
    let graph = Upstream::connect(
        cim_runtime::config::CIM_GATEWAY_GRAPH_URLS,
        &settings.graph_urls,
        timeout,
        config.connect_timeout,
        upstream_tls.as_ref(),
        GraphServiceClient::new,
    )
    .map_err(AppError::Config)?
    .signed_with(identity.clone());
    let document_upstream = |timeout| {
        Upstream::connect(
            cim_runtime::config::CIM_GATEWAY_DOCUMENT_URLS,
            &settings.document_urls,
            timeout,
            config.connect_timeout,
            upstream_tls.as_ref(),
            DocumentServiceClient::new,
        )
        .map(|u| u.signed_with(identity.clone()))
        .map_err(AppError::Config)
    };
    let document = Arc::new(DocumentState {
        upstream: document_upstream(timeout)?,
        transfer: document_upstream(None)?,
        links: LinkSigner::from_settings(settings, &config.edge.auth),
    });
    let agent_upstream = |timeout| {
        Upstream::connect(
            cim_runtime::config::CIM_GATEWAY_AGENT_URLS,
            &settings.agent_urls,
            timeout,
            config.connect_timeout,
            upstream_tls.as_ref(),
            AgentServiceClient::new,
        )
        .map(|u| u.signed_with(identity.clone()))
        .map_err(AppError::Config)
    };
    let agent = Arc::new(AgentState { upstream: agent_upstream(timeout)?, conversation: agent_upstream(None)? });
    let workflow = Upstream::connect(
        cim_runtime::config::CIM_GATEWAY_WORKFLOW_URLS,
        &settings.workflow_urls,
        timeout,
        config.connect_timeout,
        upstream_tls.as_ref(),
        WorkflowServiceClient::new,
    )
    .map_err(AppError::Config)?
    .signed_with(identity.clone());
    let webhook = Upstream::connect(
        cim_runtime::config::CIM_GATEWAY_WEBHOOK_URLS,
        &settings.webhook_urls,
        timeout,
        config.connect_timeout,
        upstream_tls.as_ref(),
        WebhookServiceClient::new,
    )
    .map_err(AppError::Config)?
    .signed_with(identity.clone());
    let redis = redis::connect_lazy(&redis::RedisSettings {
        url: config.redis_url.expose().to_owned(),
        max_size: 64,
        timeout: std::time::Duration::from_millis(500),
        tls: config.redis_tls.clone(),
    })?;
    let client = nats::connect(&nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-gateway".into(),
        connect_timeout: config.connect_timeout,
        security: config.nats_security.clone(),
    })
    .await?;
    let rate_limiter = Arc::<RateLimiter>::default();
    let bumps = Bumps::start(redis.clone(), settings.cache_ttl);
    let credentials = Credentials {
        redis: redis.clone(),
        session_ttl: settings.session_ttl,
        cookie_secure: settings.cookie_secure,
        websocket_url: settings.console_websocket_url.clone(),
    };
    // HTTPS with CIM_TLS_CERT_FILE: the certificate re-read when it changes.
    let https = config.tls.http_server().map_err(RuntimeError::from)?;
    let proxies = Proxies { hops: settings.proxy_hops, tls: https.is_some() };
    let mut host = ServiceHost::new("gateway", shutdown, config.shutdown_grace);
    let operations = Arc::new(OperationsState {
        operators: Operators::new(&settings.operator_tenants),
        health: host.health().clone(),
        services: vec![
            ("graph", Arc::new(graph.clone())),
            ("document", Arc::new(document.upstream.clone())),
            ("agent", Arc::new(agent.upstream.clone())),
            ("workflow", Arc::new(workflow.clone())),
            ("webhook", Arc::new(webhook.clone())),
        ],
        nats: client.clone(),
        nats_urls: config.nats_url.clone(),
        prefix: config.subject_prefix.clone(),
        grafana_url: settings.grafana_url.clone(),
        websocket_admin: match &settings.websocket_admin_url {
            Some(url) => {
                // reqwest's TLS is built without a crypto provider (the workspace manifest).
                cim_runtime::tls::install_provider();
                let client = reqwest::Client::builder().build().map_err(|e| {
                    AppError::Config(format!("{}: {e}", cim_runtime::config::CIM_GATEWAY_WEBSOCKET_ADMIN_URL))
                })?;
                Some((client, url.clone()))
            }
            None => None,
        },
    });
    // The routers and the roles each route needs, read once from the domains' tables.
    let api = api(Purpose::Serve);
    let state = AppState(Arc::new(Routes {
        graph: Arc::new(GraphState { upstream: graph }),
        document,
        agent,
        workflow: Arc::new(WorkflowState { upstream: workflow }),
        webhook: Arc::new(WebhookState { upstream: webhook }),
        operations,
        credentials: credentials.clone(),
    }));
    let rate_limit = RateLimit {
        limiter: rate_limiter.clone(),
        per_minute: settings.rate_limit_per_minute,
        per_tenant: Arc::new(settings.rate_limit_tenants.iter().copied().collect()),
        fail_open: settings.rate_limit_fail_open,
    };
    let layers = Layers {
        auth: Arc::new(AuthState {
            verifier,
            credentials,
            rate_limit,
            lockout: Lockout::new(redis.clone(), settings.auth_failures_per_minute),
            proxies,
        }),
        idempotency: IdempotencyState {
            redis: redis.clone(),
            max_body_bytes: settings.max_body_bytes,
            streamed: &STREAMED_ROUTES,
        },
        cache: Arc::new(CacheState {
            redis: redis.clone(),
            ttl: settings.cache_ttl,
            bumps: bumps.clone(),
            domains: crate::cache::cached_domains().into_iter().map(|d| Arc::new(DomainCache::new(d))).collect(),
            streamed: &crate::document::TRANSFER_ROUTES,
            roles: api.rules.clone(),
            outages: Arc::default(),
        }),
        deadline: Deadline { timeout: settings.request_timeout, unbounded: &STREAMED_ROUTES },
        max_body_bytes: settings.max_body_bytes,
        proxies,
    };
    let prefix = config.subject_prefix.clone();
    let listen = config.listen(ServiceKind::Gateway);
    host.health().add_check("nats", nats::readiness(client.clone()));
    host.spawn_worker("rate-limit-flush", rate_limiter.run(redis, host.workers_shutdown()));
    // Key files and the JWKS URL are read again while the gateway runs (rotation without restart).
    host.spawn_worker("jwt-keys", key_refresh.run(host.workers_shutdown()));
    // Two consumers per cached domain, each on its own stream: a domain whose stream is missing
    // (its service not deployed yet) leaves the others cached.
    for cache in &layers.cache.domains {
        let domain = cache.domain;
        host.spawn_worker(
            &format!("local-cache-invalidator-{domain}"),
            crate::cache::local_invalidator(
                cache.clone(),
                prefix.clone(),
                nats::jetstream(client.clone()),
                host.workers_shutdown(),
            ),
        );
        host.spawn_worker(
            &format!("cache-invalidator-{domain}"),
            crate::cache::invalidator(
                Invalidator { prefix: prefix.clone(), bumps: bumps.clone(), cache: cache.clone() },
                nats::jetstream(client.clone()),
                host.workers_shutdown(),
            ),
        );
    }
    let listener = bind("gateway HTTP (CIM_GATEWAY_ADDR)", listen.addr).await?;
    let admin = bind("gateway admin (CIM_GATEWAY_ADMIN_ADDR)", listen.admin_addr).await?;
    let app = router(state, layers, api, host.health().clone());
    let listener = HttpListener::new(listener, https).map_err(RuntimeError::from)?;
    Ok(Prepared {
        addr: listener.local_addr().map_err(RuntimeError::from)?,
        admin_addr: admin.local_addr().map_err(RuntimeError::from)?,
        host,
        listener,
        admin,
        app,
        shutdown: shutdown.clone(),
    })
}

impl Prepared {
    /// Serves until shutdown: the HTTP listener drains in-flight requests, then the host stops
    /// workers and the admin listener.
    pub async fn run(self) -> Result<(), AppError> {
        tracing::info!(http = %self.addr, admin = %self.admin_addr, "gateway listening");
        let stop = self.shutdown.clone();
        let http = tokio::spawn(async move {
            // The peer address: the client's, or the nearest proxy's (crate::client).
            let app = self.app.into_make_service_with_connect_info::<SocketAddr>();
            // `tap_io` gives any listener axum's `SocketAddr` connect info.
            axum::serve(self.listener.tap_io(|_| ()), app)
                .with_graceful_shutdown(async move { stop.wait().await })
                .await
        });
        self.host.run(self.admin, None).await?;
        match http.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AppError::Runtime(RuntimeError::from(e))),
            Err(e) => Err(AppError::Config(format!("HTTP server task failed: {e}"))),
        }
    }
}

impl cim_runtime::service::Service for Prepared {
    fn describe(&self) -> String {
        let scheme = if self.listener.is_tls() { "https" } else { "http" };
        format!("gateway   {scheme}://{}  admin http://{}", self.addr, self.admin_addr)
    }

    fn run(self: Box<Self>) -> cim_runtime::service::BoxFuture<'static, Result<(), String>> {
        Box::pin(async move { Prepared::run(*self).await.map_err(|e| format!("gateway: {e}")) })
    }
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("gateway", async move { prepare(config, &shutdown).await })
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use cim_auth::Role;

    use super::route_roles;

    /// Every operation of the OpenAPI document (the router's routes) has exactly one rule, and
    /// every rule names a documented operation.
    #[test]
    fn the_table_names_every_authenticated_route() {
        let doc: serde_json::Value = serde_json::from_str(super::openapi()).unwrap();
        let public = [("post", "/api/v1/auth/logout"), ("get", "/api/v1/shared/{token}")];
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                if !public.contains(&(method.as_str(), path.as_str())) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut table: Vec<(String, String)> =
            route_roles().iter().map(|(m, p, _)| (m.as_str().to_owned(), p.clone())).collect();
        documented.sort();
        table.sort();
        assert_eq!(documented, table);
    }

    #[test]
    fn unknown_paths_are_refused_and_other_methods_pass_to_405() {
        let rules = route_roles();
        assert!(rules.rule(&Method::GET, "/api/v1/secret").is_err());
        assert_eq!(rules.rule(&Method::PUT, "/api/v1/graphs").unwrap(), None);
        assert_eq!(rules.rule(&Method::GET, "/api/v1/graphs").unwrap(), Some(Some(Role::Reader)));
        assert_eq!(rules.rule(&Method::POST, "/api/v1/graphs").unwrap(), Some(Some(Role::Writer)));
        assert_eq!(rules.rule(&Method::POST, "/api/v1/admin/api-keys").unwrap(), Some(Some(Role::Admin)));
        assert_eq!(rules.rule(&Method::GET, "/api/v1/auth/me").unwrap(), Some(None));
    }

    /// Merging keeps one schema per name: two domains naming different shapes alike would
    /// silently document one of them wrongly.
    #[test]
    fn no_two_domains_give_one_schema_name_different_shapes() {
        let schemas = |doc: utoipa::openapi::OpenApi| {
            let value = serde_json::to_value(doc).unwrap();
            value["components"]["schemas"].as_object().cloned().unwrap_or_default()
        };
        let mut seen = serde_json::Map::new();
        for domain in super::domains(crate::routes::Purpose::Describe) {
            for (name, shape) in schemas(domain.into_parts().openapi) {
                if let Some(other) = seen.get(&name) {
                    assert_eq!(other, &shape, "schema {name} means two things");
                }
                seen.insert(name, shape);
            }
        }
        assert!(seen.len() > 30, "the domains' schemas were read: {seen:?}");
    }

    #[test]
    fn every_operation_has_a_summary_a_description_and_its_problem_answer() {
        let doc: serde_json::Value = serde_json::from_str(super::openapi()).unwrap();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                for field in ["summary", "description"] {
                    let text = op[field].as_str().unwrap_or_default();
                    assert!(!text.trim().is_empty(), "{method} {path} has no {field}");
                }
                let problem = &op["responses"]["4XX"]["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(problem, "#/components/schemas/Problem", "{method} {path}");
            }
        }
    }
}
