//! An agent service for one test (its own schema and subject prefix, port 0, short leases), a
//! client, and short ways to say what the tests do over and over.

#![allow(dead_code)] // shared by two test binaries, each using part of it

use std::time::Duration;

use cim_agent::app::{AgentOptions, prepare_with};
use cim_agent::dispatch::DispatchOptions;
use cim_agent::projection::TaskProjection;
use cim_agent::task::{Task, TaskCommand};
use cim_aggregate::CommandExecutor;
use cim_core::{AggregateId, TenantId};
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_runtime::edge::Caller;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};
use tonic::transport::Channel;

pub type Client = AgentServiceClient<Channel>;

pub struct Service {
    pub running: Running,
}

/// The dispatcher's timings for tests: leases of seconds, heartbeats of a tenth, so a lapse or a
/// silent worker shows within a test's patience, yet a loaded machine's pauses do not cause one.
pub fn fast() -> DispatchOptions {
    DispatchOptions {
        lease: Duration::from_millis(2000),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(2000),
        sweep_interval: Duration::from_millis(100),
        rescan_interval: Duration::from_millis(2000),
        response_timeout: Duration::from_secs(10),
        turn: 32,
    }
}

impl Service {
    pub async fn start() -> Service {
        Service::start_with(fast()).await
    }

    pub async fn start_with(dispatch: DispatchOptions) -> Service {
        Service::start_configured(dispatch, &[]).await
    }

    /// [`Service::start_with`] with variables of its own (`CIM_TLS_*`, say).
    pub async fn start_configured(dispatch: DispatchOptions, vars: &[(&str, String)]) -> Service {
        let (schema, prefix) = (unique("a"), unique("p"));
        let config = config(ServiceKind::Agent, &prefix, vars);
        let shutdown = Shutdown::new();
        let options = AgentOptions { schema: schema.clone(), dispatch };
        let prepared = prepare_with(&config, &shutdown, options).await.unwrap();
        Service { running: Running::spawn(prepared, schema, prefix, shutdown) }
    }

    /// Another instance of the service over the same schema and stream: a second replica.
    pub async fn replica(&self, dispatch: DispatchOptions) -> Running {
        let (schema, prefix) = (self.running.schema.clone(), self.running.prefix.clone());
        let config = config(ServiceKind::Agent, &prefix, &[]);
        let shutdown = Shutdown::new();
        let options = AgentOptions { schema: schema.clone(), dispatch };
        let prepared = prepare_with(&config, &shutdown, options).await.unwrap();
        Running::spawn(prepared, schema, prefix, shutdown)
    }

    /// The types of an aggregate's events, oldest first.
    pub async fn history(&self, tenant: TenantId, id: &str) -> Vec<String> {
        let history = self.running.store.history(tenant, id.parse().unwrap()).await.unwrap();
        history.iter().map(|e| e.event_type.as_str().to_owned()).collect()
    }

    pub async fn client(&self) -> Client {
        AgentServiceClient::new(self.running.channel().await)
    }

    /// Runs a task command the way the dispatcher will (assignments and outcomes come from the
    /// worker stream, which has no RPC of its own yet): through the kit's executor on the
    /// service's store, projected in the same transaction.
    pub async fn dispatch(&self, tenant: TenantId, task: &str, command: TaskCommand) {
        let executor =
            CommandExecutor::<Task>::new(self.running.store.clone(), "agent").with_projection(TaskProjection);
        let caller = Caller { tenant, actor: cim_core::Actor::service("dispatcher"), correlation: None };
        let id: AggregateId = task.parse().unwrap();
        executor.execute(&caller, id, &command, &Default::default()).await.unwrap();
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// The shared error code and the first field violation of a refused call.
pub fn refusal(status: &tonic::Status) -> (cim_core::ErrorCode, String) {
    let (code, violations) = cim_proto::status::read_status(status);
    (code, violations.first().map(|v| v.field.clone()).unwrap_or_default())
}

/// Deploys an agent of `agent_type`, named `name`, holding `limit` tasks at once.
pub async fn deploy(c: &mut Client, tenant: TenantId, name: &str, agent_type: &str, limit: u32) -> String {
    let r = pb::DeployAgentRequest {
        name: name.into(),
        agent_type: agent_type.into(),
        max_concurrent_tasks: limit,
        ..Default::default()
    };
    c.deploy_agent(req(tenant, r)).await.unwrap().into_inner().id
}

pub fn command(agent: &str) -> pb::AgentCommand {
    pb::AgentCommand { agent_id: agent.into(), ..Default::default() }
}

pub fn capabilities(agent: &str, names: &[&str]) -> pb::UpdateCapabilitiesRequest {
    pb::UpdateCapabilitiesRequest {
        agent_id: agent.into(),
        capabilities: names.iter().map(|n| (*n).to_owned()).collect(),
        options: None,
    }
}

/// A system agent with `names`, active.
pub async fn active(c: &mut Client, tenant: TenantId, names: &[&str], limit: u32) -> String {
    let id = deploy(c, tenant, "worker", "system", limit).await;
    c.update_capabilities(req(tenant, capabilities(&id, names))).await.unwrap();
    c.activate_agent(req(tenant, command(&id))).await.unwrap();
    id
}

pub fn submit(names: &[&str]) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        required_capabilities: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

pub async fn get_agent(c: &mut Client, tenant: TenantId, id: &str) -> pb::Agent {
    c.get_agent(req(tenant, pb::GetAgentRequest { agent_id: id.into() })).await.unwrap().into_inner()
}

pub async fn get_task(c: &mut Client, tenant: TenantId, id: &str) -> pb::Task {
    c.get_task(req(tenant, pb::GetTaskRequest { task_id: id.into() })).await.unwrap().into_inner()
}

/// The agent a task needing `names` would go to now (empty: none).
pub async fn route(c: &mut Client, tenant: TenantId, names: &[&str]) -> pb::RouteTaskResponse {
    let r = pb::RouteTaskRequest { required_capabilities: names.iter().map(|n| (*n).to_owned()).collect() };
    c.route_task(req(tenant, r)).await.unwrap().into_inner()
}

/// Submits a task needing `names` and assigns it to `agent`, as the dispatcher will.
pub async fn give(svc: &Service, c: &mut Client, tenant: TenantId, names: &[&str], agent: &str) -> String {
    let task = c.submit_task(req(tenant, submit(names))).await.unwrap().into_inner().id;
    let now = chrono::Utc::now();
    let lease_until = now + chrono::Duration::seconds(60);
    svc.dispatch(
        tenant,
        &task,
        TaskCommand::Assign { agent: agent.parse().unwrap(), lease_until, now, attempts: None },
    )
    .await;
    task
}

pub fn keyed(key: &str) -> Option<cim_proto::common::CommandOptions> {
    Some(cim_proto::common::CommandOptions { expected_version: None, idempotency_key: key.into() })
}

pub fn at_version(version: u64) -> Option<cim_proto::common::CommandOptions> {
    Some(cim_proto::common::CommandOptions { expected_version: Some(version), idempotency_key: String::new() })
}

/// The number of messages on the service's domain stream, once at least `want` arrived (the
/// relay publishes after commit) or after 5 s.
pub async fn stream_messages(running: &Running, want: u64) -> u64 {
    let nats = async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let prefix: cim_core::SubjectPrefix = running.prefix.parse().unwrap();
    let name = prefix.stream_name(cim_core::Domain::Agent);
    let mut stored = 0;
    for _ in 0..100 {
        stored = js.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
        if stored >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stored
}
