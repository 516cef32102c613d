//! Wiring: the kit's domain host (Postgres schema `graph`, event store, stream, relay,
//! listeners) plus the graph gRPC service. Used by the `cim-graph` binary, the monolith
//! (`cim serve`) and the integration tests.

use cim_aggregate::host::{DomainHost, DomainSpec, HostError};
use cim_core::Domain;
use cim_proto::graph::graph_service_server::GraphServiceServer;
use cim_runtime::config::Config;
use cim_runtime::{ServiceKind, Shutdown};

use crate::domain::Limits;
use crate::queries::QueryLimits;
use crate::service::GraphApi;

pub use cim_aggregate::host::Prepared;

pub type AppError = HostError;

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
    let spec = DomainSpec {
        kind: ServiceKind::Graph,
        domain: Domain::Graph,
        schema: options.schema,
        migrator: crate::migrator(),
        snapshot_every: 1000,
    };
    let domain = DomainHost::connect(config, shutdown, spec).await?;
    let api = GraphApi::new(domain.store.clone(), Limits::default(), QueryLimits::default());
    let server =
        domain.grpc_server().add_service(GraphServiceServer::new(api).max_decoding_message_size(4 * 1024 * 1024));
    domain.serve(server)
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("graph", async move { prepare(config, &shutdown).await })
}
