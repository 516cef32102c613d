//! Steps that reach other services, end to end against the real graph, agent and document
//! services (each in this process, own schema, one subject prefix): integration calls, agent
//! tasks done by a connected worker, waiting for an event, child workflows, cancellation that
//! reaches a pending task, and a review workflow a document event starts exactly once, even when
//! the event is delivered again.

#[path = "support/domains.rs"]
mod domains;
#[path = "support/service.rs"]
mod service;

use std::time::Duration;

use cim_core::TenantId;
use cim_proto::agent as apb;
use cim_proto::document as dpb;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_proto::graph as gpb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_proto::workflow as pb;
use cim_testkit::domain::req;
use domains::{Domains, worker};
use serde_json::{Value, json};
use service::*;

fn context(w: &pb::Workflow) -> serde_json::Map<String, Value> {
    cim_proto::json::struct_to_json(w.context.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn integration_steps_call_the_graph_service_once_per_attempt() {
    let d = Domains::start().await;
    let mut c = d.workflow.client().await;
    let mut graphs = GraphServiceClient::new(d.graph.channel().await);
    let tenant = TenantId::new();
    let (definition, _) = define(
        &mut c,
        tenant,
        json!({"name": "make a graph", "steps": [
            {"id": "create", "kind": "integration",
             "call": {"service": "graph", "method": "CreateGraph", "request": "{'name': name}"}},
            {"id": "add", "kind": "integration", "depends_on": ["create"],
             "call": {"service": "graph", "method": "AddNode",
                      "request": "{'graph_id': create.graph_id, 'node': {'id': 'n1', 'type': 'person', 'properties': {'name': who}}}"}}
        ]}),
    )
    .await;
    let id = start(&mut c, tenant, &definition, json!({"name": "team", "who": "Ada"})).await;
    let w = until_status(&mut c, tenant, &id, "completed").await;
    let graph_id = context(&w)["create"]["graph_id"].as_str().unwrap().to_owned();
    let graph = graphs.get_graph(req(tenant, gpb::GetGraphRequest { graph_id: graph_id.clone() }));
    let graph = graph.await.unwrap().into_inner();
    assert_eq!((graph.name.as_str(), graph.node_count), ("team", 1), "{graph:?}");
    assert_eq!(context(&w)["add"]["created_node_ids"], json!(["n1"]), "{:?}", context(&w));

    // A call the graph service refuses fails the attempt with its code and reason.
    let (bad, _) = define(
        &mut c,
        tenant,
        json!({"name": "bad call", "steps": [{"id": "add", "kind": "integration",
            "call": {"service": "graph", "method": "AddNode", "request": "{'graph_id': 'not-an-id', 'node': {'type': 'x'}}"}}]}),
    )
    .await;
    let id = start(&mut c, tenant, &bad, json!({})).await;
    let w = until_status(&mut c, tenant, &id, "failed").await;
    assert!(w.error.contains("graph.AddNode: invalid_argument"), "{}", w.error);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_tasks_waits_for_events_and_child_workflows() {
    let d = Domains::start().await;
    let mut c = d.workflow.client().await;
    let mut agents = d.agents().await;
    let mut graphs = GraphServiceClient::new(d.graph.channel().await);
    let tenant = TenantId::new();
    let mut done = worker(&mut agents, tenant, &["text.summarize"]).await;
    let (child, _) = define(
        &mut c,
        tenant,
        json!({"name": "child", "steps": [{"id": "double", "kind": "automated", "set": {"doubled": "n * 2"}}]}),
    )
    .await;
    let (parent, _) = define(
        &mut c,
        tenant,
        json!({"name": "parent", "steps": [
            {"id": "summary", "kind": "agent_task",
             "task": {"capabilities": ["text.summarize"], "payload": "{'text': text}", "priority": 7}},
            {"id": "node_in", "kind": "wait_event", "depends_on": ["summary"],
             "event": {"subject": "graph.evt.graph.*.node_added", "aggregate_id": "graph",
                       "condition": "event.payload.node_type == 'ticket'"}},
            {"id": "sub", "kind": "workflow", "depends_on": ["node_in"],
             "child": {"definition_id": child, "context": "{'n': 21}"}}
        ]}),
    )
    .await;
    let graph = graphs.create_graph(req(tenant, gpb::CreateGraphRequest { name: "g".into(), ..Default::default() }));
    let graph = graph.await.unwrap().into_inner().graph_id;
    let id = start(&mut c, tenant, &parent, json!({"text": "long text", "graph": graph})).await;

    // The worker gets the task with the payload computed from the context, and its result
    // becomes the step's output.
    let task = tokio::time::timeout(Duration::from_secs(20), done.recv()).await.unwrap().unwrap();
    let w = until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "node_in").status == "running").await;
    assert_eq!(context(&w)["summary"]["result"]["payload"], json!({"text": "long text"}), "{:?}", context(&w));
    let t = agents.get_task(req(tenant, apb::GetTaskRequest { task_id: task.clone() })).await.unwrap().into_inner();
    assert_eq!((t.state.as_str(), t.priority), ("completed", 7));

    // Only a node of the watched type on the watched graph is taken.
    let add = |node_type: &str| gpb::AddNodeRequest {
        graph_id: graph.clone(),
        node: Some(gpb::NodeSpec { r#type: node_type.into(), ..Default::default() }),
        options: None,
    };
    graphs.add_node(req(tenant, add("person"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(step(&get(&mut c, tenant, &id).await, "node_in").status, "running");
    graphs.add_node(req(tenant, add("ticket"))).await.unwrap();

    // Then the child runs to its end and the parent after it.
    let w = until_status(&mut c, tenant, &id, "completed").await;
    let ctx = context(&w);
    assert_eq!(ctx["node_in"]["payload"]["node_type"], "ticket");
    let child_id = ctx["sub"]["instance_id"].as_str().unwrap();
    let child_run = get(&mut c, tenant, child_id).await;
    assert_eq!((child_run.status.as_str(), &context(&child_run)["doubled"]), ("completed", &json!(42)));
    let kinds = types(&history(&mut c, tenant, &id).await).join(",");
    assert!(kinds.contains("agent_task_submitted") && kinds.contains("child_workflow_started"), "{kinds}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_run_cancels_its_pending_agent_task() {
    let d = Domains::start().await;
    let mut c = d.workflow.client().await;
    let mut agents = d.agents().await;
    let tenant = TenantId::new();
    // An agent that can, but never connects: the task waits in the queue.
    let deploy = apb::DeployAgentRequest { name: "away".into(), agent_type: "system".into(), ..Default::default() };
    let agent = agents.deploy_agent(req(tenant, deploy)).await.unwrap().into_inner().id;
    let skill =
        apb::UpdateCapabilitiesRequest { agent_id: agent, capabilities: vec!["rare.skill".into()], options: None };
    agents.update_capabilities(req(tenant, skill)).await.unwrap();
    let (definition, _) = define(
        &mut c,
        tenant,
        json!({"name": "nobody can", "steps": [{"id": "t", "kind": "agent_task", "task": {"capabilities": ["rare.skill"]}}]}),
    )
    .await;
    let id = start(&mut c, tenant, &definition, json!({})).await;
    let submitted = |events: &[pb::HistoryEvent]| events.iter().any(|e| e.event_type == "agent_task_submitted");
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while !submitted(&history(&mut c, tenant, &id).await) {
        assert!(tokio::time::Instant::now() < end, "never submitted: {:?}", get(&mut c, tenant, &id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = history(&mut c, tenant, &id).await;
    let event = events.iter().find(|e| e.event_type == "agent_task_submitted").unwrap();
    let task = cim_proto::json::struct_to_json(event.payload.clone()).unwrap()["task_id"].as_str().unwrap().to_owned();
    c.cancel_workflow(req(tenant, pb::WorkflowCommand { reason: "no longer needed".into(), ..command(&id) }))
        .await
        .unwrap();
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = agents.get_task(req(tenant, apb::GetTaskRequest { task_id: task.clone() })).await.unwrap().into_inner();
        if t.state == "cancelled" {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "the task was not cancelled: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_entering_review_starts_one_review_workflow_even_when_redelivered() {
    let mut d = Domains::start().await;
    let mut c = d.workflow.client().await;
    let mut agents = d.agents().await;
    let mut documents = DocumentServiceClient::new(d.document.channel().await);
    let tenant = TenantId::new();
    let _done = worker(&mut agents, tenant, &["text.review"]).await;
    let (review, _) = define(
        &mut c,
        tenant,
        json!({"name": "review", "triggers": [
            {"subject": "document.evt.document.*.state_changed", "condition": "event.payload.to == 'in_review'"}
        ], "steps": [
            {"id": "check", "kind": "agent_task",
             "task": {"capabilities": ["text.review"], "payload": "{'document': trigger.aggregate_id}"}},
            {"id": "approve", "kind": "approval", "role": "approver", "depends_on": ["check"]},
            {"id": "publish", "kind": "integration", "depends_on": ["approve"],
             "call": {"service": "document", "method": "ChangeState",
                      "request": "{'document_id': trigger.aggregate_id, 'state': 'approved', 'reason': 'reviewed'}"}}
        ]}),
    )
    .await;

    let created = documents
        .create_document(req(tenant, dpb::CreateDocumentRequest { title: "Plan".into(), ..Default::default() }));
    let document = created.await.unwrap().into_inner().document_id;
    use dpb::upload_content_request::Part;
    let start_part =
        dpb::UploadStart { document_id: document.clone(), content_type: "text/plain".into(), ..Default::default() };
    let parts = vec![
        dpb::UploadContentRequest { part: Some(Part::Start(start_part)) },
        dpb::UploadContentRequest { part: Some(Part::Chunk(b"the plan".to_vec())) },
    ];
    documents.upload_content(req(tenant, futures::stream::iter(parts))).await.unwrap();
    let to_review =
        dpb::ChangeStateRequest { document_id: document.clone(), state: "in_review".into(), ..Default::default() };
    documents.change_state(req(tenant, to_review)).await.unwrap();

    // The trigger started one instance; its agent task runs, then it waits for a person.
    let list = pb::ListWorkflowsRequest { definition_id: review.clone(), ..Default::default() };
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    let instance = loop {
        let found = c.list_workflows(req(tenant, list.clone())).await.unwrap().into_inner().workflows;
        if let Some(first) = found.first() {
            break first.instance_id.clone();
        }
        assert!(tokio::time::Instant::now() < end, "no instance started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    until(&mut c, tenant, &instance, Duration::from_secs(20), |w| step(w, "approve").status == "waiting_approval")
        .await;
    let approve =
        pb::ApprovalDecision { instance_id: instance.clone(), step_id: "approve".into(), ..Default::default() };
    c.approve_step(as_person(tenant, "user:rita", "writer, approver", approve)).await.unwrap();
    until_status(&mut c, tenant, &instance, "completed").await;
    let doc = documents.get_document(req(tenant, dpb::GetDocumentRequest { document_id: document.clone() }));
    assert_eq!(doc.await.unwrap().into_inner().state, "approved");

    // Every document event delivered again to a new replica (its durable consumer and inbox
    // gone): still one instance, and the document was approved once.
    let schema = d.workflow.running.schema.clone();
    d.workflow.running.stop_replica().await;
    let js = async_nats::jetstream::new(async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap());
    let prefix: cim_core::SubjectPrefix = d.prefix.parse().unwrap();
    let stream = js.get_stream(prefix.stream_name(cim_core::Domain::Document)).await.unwrap();
    stream.delete_consumer("workflow-listen-document").await.unwrap();
    let pool = d.document.pool.clone();
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {schema}.inbox"))).execute(&pool).await.unwrap();
    d.workflow.running = domains::workflow_on(schema, &d.prefix, &d.graph, &d.agent, &d.document).await;
    let mut c = d.workflow.client().await;
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(info) = stream.consumer_info("workflow-listen-document").await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
        {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "the document events were not delivered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = c.list_workflows(req(tenant, list)).await.unwrap().into_inner().workflows;
    assert_eq!(found.len(), 1, "{found:?}");
    let approvals: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.events WHERE event_type = 'state_changed' AND payload->>'to' = 'approved'",
        d.document.schema
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(approvals, 1);
    d.stop().await;
}
