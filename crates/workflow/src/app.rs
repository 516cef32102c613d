//! Wiring: the kit's domain host (Postgres schema `workflow`, event store, stream
//! `CIM_WORKFLOW`, relay, listeners) plus the workflow gRPC service over two executors, one per
//! aggregate, sharing the one event store, the engine that advances running instances and sends
//! what their steps send, and the listener that hands other domains' events to waiting steps
//! and triggers.

use cim_aggregate::CommandExecutor;
use cim_aggregate::host::{DomainHost, DomainSpec, HostError};
use cim_core::Domain;
use cim_proto::workflow::workflow_service_server::WorkflowServiceServer;
use cim_runtime::config::Config;
use cim_runtime::{ServiceKind, Shutdown};

use crate::calls::Calls;
use crate::definition::WorkflowDefinition;
use crate::engine::{Engine, EngineOptions};
use crate::instance::Workflow;
use crate::listen::Listener;
use crate::projection::{DefinitionProjection, WorkflowProjection};
use crate::service::WorkflowApi;

pub use cim_aggregate::host::Prepared;

pub type AppError = HostError;

/// What differs between deployments beyond `CIM_*` (tests use their own schema).
#[derive(Debug, Clone)]
pub struct WorkflowOptions {
    pub schema: String,
    pub engine: EngineOptions,
}

impl Default for WorkflowOptions {
    fn default() -> Self {
        Self { schema: crate::SCHEMA.to_owned(), engine: EngineOptions::default() }
    }
}

/// Connects, migrates and binds. Nothing is served until [`Prepared::run`].
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    let engine = EngineOptions::from_settings(&config.workflow);
    prepare_with(config, shutdown, WorkflowOptions { engine, ..WorkflowOptions::default() }).await
}

/// [`prepare`] with explicit options.
pub async fn prepare_with(
    config: &Config,
    shutdown: &Shutdown,
    options: WorkflowOptions,
) -> Result<Prepared, AppError> {
    crate::metrics::describe();
    let spec = DomainSpec {
        kind: ServiceKind::Workflow,
        domain: Domain::Workflow,
        schema: options.schema,
        migrator: crate::migrator(),
        // Instances are advanced often; a snapshot every 50 events keeps each load short.
        snapshot_every: 50,
    };
    let mut domain = DomainHost::connect(config, shutdown, spec).await?;
    let definitions = CommandExecutor::<WorkflowDefinition>::new(domain.store.clone(), "workflow")
        .with_projection(DefinitionProjection);
    let workflows =
        CommandExecutor::<Workflow>::new(domain.store.clone(), "workflow").with_projection(WorkflowProjection);
    let calls = Calls::connect(&config.workflow, config.service_identity.clone(), config.tls.client().as_ref())
        .map_err(HostError::Setup)?;
    let engine = Engine::new(workflows.clone(), calls, options.engine);
    engine.start(domain.host());
    let listener = Listener::new(workflows.clone(), engine.clone());
    let stop = domain.host().workers_shutdown();
    for consumer in listener.consumers(&domain.jetstream, &config.subject_prefix, &stop) {
        domain.host().spawn_worker("workflow-listener", consumer);
    }
    let server =
        domain.grpc_server().add_service(WorkflowServiceServer::new(WorkflowApi::new(definitions, workflows, engine)));
    domain.serve(server)
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("workflow", async move { prepare(config, &shutdown).await })
}
