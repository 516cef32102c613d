//! What each domain's public API answers for one tenant, every list paged to its end and every
//! item read on its own: the restored services must give exactly the original's answers.

use cim_core::TenantId;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_proto::common::PageRequest;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
use cim_proto::{agent as apb, document as dpb, graph as gpb, workflow as wpb};
use cim_testkit::domain::req;

use crate::world::Services;

fn page(token: &str) -> Option<PageRequest> {
    Some(PageRequest { page_size: 0, page_token: token.to_owned() })
}

/// Calls `list` with each page token until the last page; every page's answer.
async fn pages<R, F, Fut>(mut list: F) -> Vec<R>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (R, String)>,
{
    let (mut out, mut token) = (Vec::new(), String::new());
    loop {
        let (answer, next) = list(token).await;
        out.push(answer);
        if next.is_empty() {
            return out;
        }
        token = next;
    }
}

/// Every answer, by domain, as text (prost's `Debug` names every field).
pub async fn answers(s: &Services, tenant: TenantId) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut put = |domain: &'static str, answer: &dyn std::fmt::Debug| out.push((domain, format!("{answer:?}")));

    let g = GraphServiceClient::new(s.graph.channel().await);
    let graphs = pages(|token| {
        let mut g = g.clone();
        async move {
            let r = gpb::ListGraphsRequest { page: page(&token), include_archived: true };
            let got = g.list_graphs(req(tenant, r)).await.unwrap().into_inner();
            let next = got.page.clone().unwrap_or_default().next_page_token;
            (got, next)
        }
    })
    .await;
    for list in &graphs {
        put("graph", list);
        for graph in &list.graphs {
            let id = graph.graph_id.clone();
            let r = gpb::GetGraphRequest { graph_id: id.clone() };
            put("graph", &g.clone().get_graph(req(tenant, r)).await.unwrap().into_inner());
            let nodes = pages(|token| {
                let (mut g, id) = (g.clone(), id.clone());
                async move {
                    let r = gpb::ListNodesRequest { graph_id: id, page: page(&token), ..Default::default() };
                    let got = g.list_nodes(req(tenant, r)).await.unwrap().into_inner();
                    let next = got.page.clone().unwrap_or_default().next_page_token;
                    (got, next)
                }
            })
            .await;
            nodes.iter().for_each(|n| put("graph", n));
        }
    }

    let d = DocumentServiceClient::new(s.document.channel().await);
    let documents = pages(|token| {
        let mut d = d.clone();
        async move {
            let r = dpb::SearchDocumentsRequest { page: page(&token), ..Default::default() };
            let got = d.search_documents(req(tenant, r)).await.unwrap().into_inner();
            let next = got.page.clone().unwrap_or_default().next_page_token;
            (got, next)
        }
    })
    .await;
    for list in &documents {
        put("document", list);
        for doc in &list.documents {
            let r = dpb::GetDocumentRequest { document_id: doc.document_id.clone() };
            put("document", &d.clone().get_document(req(tenant, r)).await.unwrap().into_inner());
            let r = dpb::ListVersionsRequest { document_id: doc.document_id.clone() };
            put("document", &d.clone().list_versions(req(tenant, r)).await.unwrap().into_inner());
        }
    }

    let a = AgentServiceClient::new(s.agent.channel().await);
    let agents = pages(|token| {
        let mut a = a.clone();
        async move {
            let r = apb::ListAgentsRequest { page: page(&token), ..Default::default() };
            let got = a.list_agents(req(tenant, r)).await.unwrap().into_inner();
            let next = got.page.clone().unwrap_or_default().next_page_token;
            (got, next)
        }
    })
    .await;
    agents.iter().for_each(|l| put("agent", l));
    let tasks = pages(|token| {
        let mut a = a.clone();
        async move {
            let r = apb::ListTasksRequest { page: page(&token), ..Default::default() };
            let got = a.list_tasks(req(tenant, r)).await.unwrap().into_inner();
            let next = got.page.clone().unwrap_or_default().next_page_token;
            (got, next)
        }
    })
    .await;
    for list in &tasks {
        put("agent", list);
        for task in &list.tasks {
            let r = apb::GetTaskRequest { task_id: task.task_id.clone() };
            put("agent", &a.clone().get_task(req(tenant, r)).await.unwrap().into_inner());
        }
    }

    let w = WorkflowServiceClient::new(s.workflow.channel().await);
    let definitions = pages(|token| {
        let mut w = w.clone();
        async move {
            let r = wpb::ListDefinitionsRequest { page: page(&token) };
            let got = w.list_definitions(req(tenant, r)).await.unwrap().into_inner();
            let next = got.page.clone().unwrap_or_default().next_page_token;
            (got, next)
        }
    })
    .await;
    for list in &definitions {
        put("workflow", list);
        for def in &list.definitions {
            let r = wpb::GetDefinitionRequest { definition_id: def.definition_id.clone(), content_id: String::new() };
            put("workflow", &w.clone().get_definition(req(tenant, r)).await.unwrap().into_inner());
        }
    }
    let instances = pages(|token| {
        let mut w = w.clone();
        async move {
            let r = wpb::ListWorkflowsRequest { page: page(&token), ..Default::default() };
            let got = w.list_workflows(req(tenant, r)).await.unwrap().into_inner();
            let next = got.page.clone().unwrap_or_default().next_page_token;
            (got, next)
        }
    })
    .await;
    for list in &instances {
        put("workflow", list);
        for wf in &list.workflows {
            let r = wpb::GetWorkflowRequest { instance_id: wf.instance_id.clone() };
            put("workflow", &w.clone().get_workflow(req(tenant, r)).await.unwrap().into_inner());
            let r = wpb::GetWorkflowHistoryRequest { instance_id: wf.instance_id.clone() };
            put("workflow", &w.clone().get_workflow_history(req(tenant, r)).await.unwrap().into_inner());
        }
    }
    out
}

/// The two services answer alike; fails naming the first answer that differs.
pub async fn assert_same_answers(original: &Services, restored: &Services, tenant: TenantId) {
    let (a, b) = (answers(original, tenant).await, answers(restored, tenant).await);
    for (domain, _) in crate::world::DOMAINS {
        let n = a.iter().filter(|(d, _)| *d == domain).count();
        assert!(n > 1, "{domain}: the API answered nothing to compare ({n})");
    }
    if let Some(((domain, x), (_, y))) = a.iter().zip(&b).find(|(x, y)| x != y) {
        panic!("{domain}: the restored service answers differently:\noriginal: {x}\nrestored: {y}");
    }
    assert_eq!(a.len(), b.len(), "as many answers");
}
