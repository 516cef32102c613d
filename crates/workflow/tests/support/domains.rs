//! The services workflow steps reach, each in this test process with its own schema, all on one
//! subject prefix (the workflow service listens to their streams), and a workflow service whose
//! steps call them.

#![allow(dead_code)] // each test binary uses part of it

use std::time::Duration;

use cim_core::TenantId;
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_proto::agent::dispatch_message::Kind as Out;
use cim_proto::agent::worker_message::Kind as In;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, req, unique};
use cim_workflow::app::{WorkflowOptions, prepare_with};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::service::{Service, fast};

pub type Agents = AgentServiceClient<Channel>;

/// Graph, agent and document services and a workflow service calling them.
pub struct Domains {
    pub prefix: String,
    pub graph: Running,
    pub agent: Running,
    pub document: Running,
    pub objects: std::path::PathBuf,
    pub workflow: Service,
}

impl Domains {
    pub async fn start() -> Domains {
        let prefix = unique("p");
        let shutdown = Shutdown::new();
        let graph = {
            let schema = unique("g");
            let options = cim_graph::app::GraphOptions { schema: schema.clone() };
            let config = config(ServiceKind::Graph, &prefix, &[]);
            let prepared = cim_graph::app::prepare_with(&config, &shutdown, options).await.unwrap();
            Running::spawn(prepared, schema, prefix.clone(), shutdown)
        };
        let shutdown = Shutdown::new();
        let agent = {
            let schema = unique("a");
            let options = cim_agent::app::AgentOptions { schema: schema.clone(), ..Default::default() };
            let config = config(ServiceKind::Agent, &prefix, &[]);
            let prepared = cim_agent::app::prepare_with(&config, &shutdown, options).await.unwrap();
            Running::spawn(prepared, schema, prefix.clone(), shutdown)
        };
        let objects = std::env::temp_dir().join(unique("objects"));
        let shutdown = Shutdown::new();
        let document = {
            let schema = unique("d");
            let vars = [("CIM_OBJECT_STORE_URL", objects.display().to_string())];
            let options = cim_document::app::DocumentOptions { schema: schema.clone(), ..Default::default() };
            let config = config(ServiceKind::Document, &prefix, &vars);
            let prepared = cim_document::app::prepare_with(&config, &shutdown, options);
            Running::spawn(prepared.await.unwrap(), schema, prefix.clone(), shutdown)
        };
        let workflow = Service { running: workflow_on(unique("w"), &prefix, &graph, &agent, &document).await };
        Domains { prefix, graph, agent, document, objects, workflow }
    }

    pub async fn agents(&self) -> Agents {
        AgentServiceClient::new(self.agent.channel().await)
    }

    pub async fn stop(self) {
        self.workflow.stop().await;
        self.document.stop().await;
        self.agent.stop().await;
        self.graph.stop().await;
        let _ = std::fs::remove_dir_all(&self.objects);
    }
}

/// A workflow service (or another replica of one) on `schema` whose steps call these services.
pub async fn workflow_on(
    schema: String,
    prefix: &str,
    graph: &Running,
    agent: &Running,
    document: &Running,
) -> Running {
    let vars = [
        ("CIM_WORKFLOW_GRAPH_URLS", format!("http://{}", graph.grpc)),
        ("CIM_WORKFLOW_AGENT_URLS", format!("http://{}", agent.grpc)),
        ("CIM_WORKFLOW_DOCUMENT_URLS", format!("http://{}", document.grpc)),
    ];
    let config = config(ServiceKind::Workflow, prefix, &vars);
    let shutdown = Shutdown::new();
    let options = WorkflowOptions { schema: schema.clone(), engine: fast() };
    let prepared = prepare_with(&config, &shutdown, options).await.unwrap();
    Running::spawn(prepared, schema, prefix.to_owned(), shutdown)
}

/// An active system agent with `capabilities` and a worker connected for it that completes
/// every task it is given with `{"done_by": <agent>, "payload": <the task's payload>}`. The
/// worker's task ids come out of the returned channel as it completes them.
pub async fn worker(c: &mut Agents, tenant: TenantId, capabilities: &[&str]) -> mpsc::UnboundedReceiver<String> {
    let deploy = pb::DeployAgentRequest {
        name: "reviewer".into(),
        agent_type: "system".into(),
        max_concurrent_tasks: 8,
        ..Default::default()
    };
    let agent = c.deploy_agent(req(tenant, deploy)).await.unwrap().into_inner().id;
    let names = capabilities.iter().map(|n| (*n).to_owned()).collect();
    let caps = pb::UpdateCapabilitiesRequest { agent_id: agent.clone(), capabilities: names, options: None };
    c.update_capabilities(req(tenant, caps)).await.unwrap();
    let activate = pb::AgentCommand { agent_id: agent.clone(), ..Default::default() };
    c.activate_agent(req(tenant, activate)).await.unwrap();

    let (tx, outgoing) = mpsc::channel(64);
    let hello = pb::Hello { agent_id: agent.clone(), ..Default::default() };
    tx.send(pb::WorkerMessage { kind: Some(In::Hello(hello)) }).await.unwrap();
    let mut rx = c.connect_agent(req(tenant, ReceiverStream::new(outgoing))).await.unwrap().into_inner();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held: Vec<String> = Vec::new();
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let heartbeat = pb::Heartbeat { task_ids: held.clone() };
                    if tx.send(pb::WorkerMessage { kind: Some(In::Heartbeat(heartbeat)) }).await.is_err() { return; }
                }
                message = rx.message() => match message {
                    Ok(Some(pb::DispatchMessage { kind: Some(Out::Assignment(a)) })) => {
                        let payload = cim_proto::json::struct_to_json(a.payload).unwrap_or_default();
                        let result = serde_json::json!({"done_by": agent, "payload": payload});
                        let completion = pb::TaskCompletion {
                            task_id: a.task_id.clone(),
                            result: Some(pb::task_completion::Result::ResultValue(
                                cim_proto::json::json_to_struct(result.as_object().unwrap()),
                            )),
                        };
                        held.push(a.task_id.clone());
                        if tx.send(pb::WorkerMessage { kind: Some(In::Completion(completion)) }).await.is_err() { return; }
                        let _ = done_tx.send(a.task_id);
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                }
            }
        }
    });
    done_rx
}
