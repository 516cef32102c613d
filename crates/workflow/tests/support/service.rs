//! A workflow service for one test (its own schema and subject prefix, port 0, a fast-polling
//! engine), a client, and short ways to say what the tests do over and over.

#![allow(dead_code)] // shared by two test binaries, each using part of it

use std::time::Duration;

use cim_core::TenantId;
use cim_proto::workflow as pb;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};
use cim_workflow::app::{WorkflowOptions, prepare_with};
use cim_workflow::engine::EngineOptions;
use serde_json::Value;
use tonic::transport::Channel;

pub type Client = WorkflowServiceClient<Channel>;

/// The engine for tests: polls every 20 ms, so other replicas' work and timers show quickly;
/// leases of seconds, so a loaded machine's pauses do not lapse one.
pub fn fast() -> EngineOptions {
    EngineOptions { lease: Duration::from_secs(5), poll: Duration::from_millis(20), concurrency: 16 }
}

pub struct Service {
    pub running: Running,
}

impl Service {
    pub async fn start() -> Service {
        Service::start_with(fast()).await
    }

    pub async fn start_with(engine: EngineOptions) -> Service {
        let (schema, prefix) = (unique("w"), unique("p"));
        Service { running: start_on_with(schema, prefix, engine).await }
    }

    /// Another instance of the service over the same schema and stream: a second replica.
    pub async fn replica(&self, engine: EngineOptions) -> Running {
        start_on_with(self.running.schema.clone(), self.running.prefix.clone(), engine).await
    }

    pub async fn client(&self) -> Client {
        client(&self.running).await
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// How many events of `event_type` each (instance, step) has, for those with more than one.
    pub async fn repeated(&self, event_type: &str) -> Vec<(uuid::Uuid, String, i64)> {
        let sql = format!(
            "SELECT aggregate_id, payload->>'step', count(*) FROM {}.events WHERE event_type = $1 \
             GROUP BY 1, 2 HAVING count(*) > 1",
            self.running.schema
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(event_type).fetch_all(&self.running.pool).await.unwrap()
    }

    pub async fn count(&self, event_type: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {}.events WHERE event_type = $1", self.running.schema);
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(event_type).fetch_one(&self.running.pool).await.unwrap()
    }
}

pub async fn start_on(schema: String, prefix: String) -> Running {
    start_on_with(schema, prefix, fast()).await
}

pub async fn start_on_with(schema: String, prefix: String, engine: EngineOptions) -> Running {
    let config = config(ServiceKind::Workflow, &prefix, &[]);
    let shutdown = Shutdown::new();
    let options = WorkflowOptions { schema: schema.clone(), engine };
    let prepared = prepare_with(&config, &shutdown, options).await.unwrap();
    Running::spawn(prepared, schema, prefix, shutdown)
}

pub async fn client(running: &Running) -> Client {
    WorkflowServiceClient::new(running.channel().await)
}

/// The shared error code and the first field violation of a refused call.
pub fn refusal(status: &tonic::Status) -> (cim_core::ErrorCode, String) {
    let (code, violations) = cim_proto::status::read_status(status);
    (code, violations.first().map(|v| v.field.clone()).unwrap_or_default())
}

pub fn object(v: Value) -> prost_types::Struct {
    cim_proto::json::json_to_struct(v.as_object().expect("a JSON object"))
}

/// A request from `actor` holding `roles` (what the gateway sets from a token).
pub fn as_person<T>(tenant: TenantId, actor: &str, roles: &str, msg: T) -> tonic::Request<T> {
    let mut r = req(tenant, msg);
    r.metadata_mut().insert("x-cim-actor", actor.parse().unwrap());
    r.metadata_mut().insert("x-cim-roles", roles.parse().unwrap());
    r
}

/// Creates a definition; its id and content id.
pub async fn define(c: &mut Client, tenant: TenantId, definition: Value) -> (String, String) {
    let r = pb::CreateDefinitionRequest { definition: Some(object(definition)), ..Default::default() };
    let done = c.create_definition(req(tenant, r)).await.unwrap().into_inner();
    (done.id, done.content_id)
}

/// Starts an instance of the definition's current version with `context`; its id.
pub async fn start(c: &mut Client, tenant: TenantId, definition: &str, context: Value) -> String {
    let r = pb::StartWorkflowRequest {
        definition_id: definition.into(),
        context: Some(object(context)),
        ..Default::default()
    };
    c.start_workflow(req(tenant, r)).await.unwrap().into_inner().id
}

pub async fn get(c: &mut Client, tenant: TenantId, id: &str) -> pb::Workflow {
    c.get_workflow(req(tenant, pb::GetWorkflowRequest { instance_id: id.into() })).await.unwrap().into_inner()
}

pub fn step<'a>(w: &'a pb::Workflow, id: &str) -> &'a pb::Step {
    w.steps.iter().find(|s| s.step_id == id).unwrap_or_else(|| panic!("no step {id}"))
}

/// The instance once `done` holds for it, polled for up to `within`.
pub async fn until(
    c: &mut Client,
    tenant: TenantId,
    id: &str,
    within: Duration,
    done: impl Fn(&pb::Workflow) -> bool,
) -> pb::Workflow {
    let end = tokio::time::Instant::now() + within;
    loop {
        let w = get(c, tenant, id).await;
        if done(&w) {
            return w;
        }
        assert!(tokio::time::Instant::now() < end, "still not there after {within:?}: {w:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn until_status(c: &mut Client, tenant: TenantId, id: &str, status: &str) -> pb::Workflow {
    until(c, tenant, id, Duration::from_secs(20), |w| w.status == status).await
}

/// The types of an instance's events, oldest first.
pub async fn history(c: &mut Client, tenant: TenantId, id: &str) -> Vec<pb::HistoryEvent> {
    let r = pb::GetWorkflowHistoryRequest { instance_id: id.into() };
    c.get_workflow_history(req(tenant, r)).await.unwrap().into_inner().events
}

pub fn types(events: &[pb::HistoryEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_type.as_str()).collect()
}

pub fn command(id: &str) -> pb::WorkflowCommand {
    pb::WorkflowCommand { instance_id: id.into(), ..Default::default() }
}
