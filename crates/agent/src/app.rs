//! Wiring: the kit's domain host (Postgres schema `agent`, event store, stream `CIM_AGENT`,
//! relay, listeners) plus the agent gRPC service over two executors, one per aggregate, sharing
//! the one event store, and the dispatcher's workers (dispatch loop, sweeper, event feed).

use cim_aggregate::CommandExecutor;
use cim_aggregate::host::{DomainHost, DomainSpec, HostError};
use cim_core::Domain;
use cim_proto::agent::agent_service_server::AgentServiceServer;
use cim_runtime::config::Config;
use cim_runtime::{ServiceKind, Shutdown};

use crate::agent::Agent;
use crate::dispatch::{DispatchOptions, Dispatcher};
use crate::projection::{AgentProjection, TaskProjection};
use crate::service::AgentApi;
use crate::task::{Task, TaskFacts, TaskStatement};

pub use cim_aggregate::host::Prepared;

pub type AppError = HostError;

/// What differs between deployments beyond `CIM_*` (tests use their own schema).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub schema: String,
    /// Lease length, heartbeats, sweeps (tests shorten them).
    pub dispatch: DispatchOptions,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self { schema: crate::SCHEMA.to_owned(), dispatch: DispatchOptions::default() }
    }
}

/// Connects, migrates and binds. Nothing is served until [`Prepared::run`].
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    let dispatch = DispatchOptions::from_settings(&config.agent);
    prepare_with(config, shutdown, AgentOptions { dispatch, ..AgentOptions::default() }).await
}

/// [`prepare`] with explicit options.
pub async fn prepare_with(config: &Config, shutdown: &Shutdown, options: AgentOptions) -> Result<Prepared, AppError> {
    crate::metrics::describe();
    let spec = DomainSpec {
        kind: ServiceKind::Agent,
        domain: Domain::Agent,
        schema: options.schema,
        migrator: crate::migrator(),
        // Conversations make long agent histories; tasks are short and rarely reach it.
        snapshot_every: 100,
    };
    let mut domain = DomainHost::connect(config, shutdown, spec).await?;
    let agents = CommandExecutor::<Agent>::new(domain.store.clone(), "agent").with_projection(AgentProjection);
    // Every task command is decided on the task's row under its lock; assignments and
    // completions of tasks whose head this process knows (it wrote their last event) take the
    // one-statement path, many tasks per statement.
    let tasks = CommandExecutor::<Task>::new(domain.store.clone(), "agent")
        .with_projection(TaskProjection)
        .with_locking_source(TaskFacts)
        .with_one_statement(TaskStatement);
    let dispatcher = Dispatcher::new(agents.clone(), tasks.clone(), options.dispatch);
    let js = domain.jetstream.clone();
    dispatcher.start(domain.host(), shutdown, js, config.subject_prefix.clone());
    let server = domain
        .grpc_server()
        // Many messages each way: the one-message frame check leaves it alone.
        .streaming_method("/cim.agent.v1.AgentService/ConnectAgent")
        .add_service(AgentServiceServer::new(AgentApi::new(agents, tasks, dispatcher)));
    domain.serve(server)
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("agent", async move { prepare(config, &shutdown).await })
}
