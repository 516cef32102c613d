//! Wiring: configuration → Postgres (schema `graph`, migrated) → event store → JetStream stream
//! and relay → gRPC server with health, reflection and metrics. Used by the `cim-graph` binary,
//! the monolith (`cim serve`) and the integration tests.

use std::net::SocketAddr;

use cim_core::{Domain, Upcasters};
use cim_eventstore::{EventStore, Relay, RelayConfig, StoreConfig, StoreError};
use cim_proto::graph::graph_service_server::GraphServiceServer;
use cim_runtime::config::Config;
use cim_runtime::{GrpcServer, RuntimeError, ServiceHost, ServiceKind, Shutdown, bind, nats, postgres};
use tokio::net::TcpListener;

use crate::domain::Limits;
use crate::queries::QueryLimits;
use crate::service::GraphApi;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Streams(#[from] cim_streams::StreamError),
}

/// A graph service with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Prepared {
    host: ServiceHost,
    grpc: TcpListener,
    admin: TcpListener,
    server: GrpcServer,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub store: EventStore,
}

/// What differs between deployments beyond `CIM_*` (tests use their own schema).
#[derive(Debug, Clone)]
pub struct GraphOptions {
    pub schema: String,
}

impl Default for GraphOptions {
    fn default() -> Self {
        Self { schema: crate::SCHEMA.to_owned() }
    }
}

/// Connects, migrates and binds. Nothing is served until [`Prepared::run`].
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    prepare_with(config, shutdown, GraphOptions::default()).await
}

/// [`prepare`] with explicit options.
pub async fn prepare_with(config: &Config, shutdown: &Shutdown, options: GraphOptions) -> Result<Prepared, AppError> {
    let schema = options.schema;
    let listen = config.listen(ServiceKind::Graph);
    let pool = postgres::connect(&postgres::PgSettings {
        url: config.database_url.expose().to_owned(),
        schema: schema.clone(),
        max_connections: config.database_max_connections,
        connect_timeout: config.connect_timeout,
        application_name: "cim-graph".into(),
    })
    .await?;
    let store = EventStore::open(
        pool.clone(),
        StoreConfig {
            domain: Domain::Graph,
            schema: schema.clone(),
            snapshot_every: 1000,
            upcasters: Upcasters::new(),
        },
    )
    .await?;
    postgres::migrate(&pool, &schema, crate::migrator()).await?;

    let client = nats::connect(&nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-graph".into(),
        connect_timeout: config.connect_timeout,
    })
    .await?;
    let js = nats::jetstream(client.clone());
    cim_streams::streams::ensure_domain_stream(&js, &config.subject_prefix, Domain::Graph, config.stream_replicas)
        .await?;
    // Every consumer of graph events (the gateway's cache invalidator today) dead-letters there.
    cim_streams::streams::ensure_dlq_stream(&js, &config.subject_prefix, config.stream_replicas).await?;

    let mut host = ServiceHost::new("graph", shutdown, config.shutdown_grace);
    host.health().add_check("postgres", postgres::readiness(pool.clone()));
    host.health().add_check("nats", nats::readiness(client));
    let relay = Relay::new(store.clone(), js, config.subject_prefix.clone(), RelayConfig::default());
    host.spawn_worker("relay", relay.run(host.workers_shutdown()));

    let grpc = bind("graph gRPC (CIM_GRAPH_ADDR)", listen.addr).await?;
    let admin = bind("graph admin (CIM_GRAPH_ADMIN_ADDR)", listen.admin_addr).await?;
    let api = GraphApi::new(store.clone(), Limits::default(), QueryLimits::default());
    let server = GrpcServer::new("graph")
        .add_service(GraphServiceServer::new(api).max_decoding_message_size(4 * 1024 * 1024))
        .file_descriptor_set(cim_proto::FILE_DESCRIPTOR_SET);
    Ok(Prepared {
        grpc_addr: grpc.local_addr().map_err(RuntimeError::from)?,
        admin_addr: admin.local_addr().map_err(RuntimeError::from)?,
        host,
        grpc,
        admin,
        server,
        store,
    })
}

impl Prepared {
    /// Serves until shutdown completes.
    pub async fn run(self) -> Result<(), AppError> {
        tracing::info!(grpc = %self.grpc_addr, admin = %self.admin_addr, "graph service listening");
        self.host.run(self.admin, Some((self.grpc, self.server))).await?;
        Ok(())
    }
}

/// Prepares and runs.
pub async fn run(config: &Config, shutdown: &Shutdown) -> Result<(), AppError> {
    prepare(config, shutdown).await?.run().await
}

impl cim_runtime::service::Service for Prepared {
    fn describe(&self) -> String {
        format!("graph     gRPC {}  admin http://{}", self.grpc_addr, self.admin_addr)
    }

    fn run(self: Box<Self>) -> cim_runtime::service::BoxFuture<'static, Result<(), String>> {
        Box::pin(async move { Prepared::run(*self).await.map_err(|e| format!("graph: {e}")) })
    }
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("graph", async move { prepare(config, &shutdown).await })
}
