//! The gRPC edge: parse requests into domain commands, run them in one transaction with the
//! event append and the projections, and answer queries from the projections.

use std::time::Instant;

use cim_aggregate::{AsOf, CommandExecutor, CommandOptions};
use cim_core::AggregateId;
use cim_eventstore::EventStore;
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_server::GraphService;
use cim_runtime::edge::{Caller, KeysetPage, handle};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::convert::{
    self, aggregate_id, edge_id, node_id, optional_edge_id, optional_node_id, struct_to_json, type_name,
};
use crate::domain::{Change, GraphCommand, GraphState, Limits};
use crate::error::ServiceError;
use crate::group_commit::GraphStatement;
use crate::metrics::QUERY_DURATION_SECONDS;
use crate::projection::{GraphFacts, GraphProjection};
use crate::queries::{self, Dir, QueryLimits, Walk};

mod command_path;

#[derive(Debug, Clone)]
pub struct GraphApi {
    executor: CommandExecutor<GraphState>,
    pool: PgPool,
    query: QueryLimits,
}

fn properties(
    field: &str,
    s: Option<prost_types::Struct>,
) -> Result<cim_core::events::graph::Properties, ServiceError> {
    struct_to_json(field, s)
}

fn node_change(spec: Option<pb::NodeSpec>, prefix: &str) -> Result<Change, ServiceError> {
    let spec = spec.ok_or_else(|| ServiceError::invalid(prefix, "required"))?;
    Ok(Change::AddNode {
        id: optional_node_id(&format!("{prefix}.id"), &spec.id)?,
        node_type: type_name(&format!("{prefix}.type"), &spec.r#type)?,
        properties: properties(&format!("{prefix}.properties"), spec.properties)?,
    })
}

fn edge_change(spec: Option<pb::EdgeSpec>, prefix: &str) -> Result<Change, ServiceError> {
    let spec = spec.ok_or_else(|| ServiceError::invalid(prefix, "required"))?;
    Ok(Change::AddEdge {
        id: optional_edge_id(&format!("{prefix}.id"), &spec.id)?,
        edge_type: type_name(&format!("{prefix}.type"), &spec.r#type)?,
        source: node_id(&format!("{prefix}.source"), &spec.source)?,
        target: node_id(&format!("{prefix}.target"), &spec.target)?,
        properties: properties(&format!("{prefix}.properties"), spec.properties)?,
    })
}

fn batch_change(i: usize, change: pb::GraphChange) -> Result<Change, ServiceError> {
    use pb::graph_change::Change as C;
    let field = |f: &str| format!("changes[{i}].{f}");
    match change.change {
        None => Err(ServiceError::invalid(format!("changes[{i}]"), "empty change")),
        Some(C::AddNode(spec)) => node_change(Some(spec), &field("add_node")),
        Some(C::AddEdge(spec)) => edge_change(Some(spec), &field("add_edge")),
        Some(C::UpdateNode(u)) => Ok(Change::UpdateNode {
            id: node_id(&field("update_node.id"), &u.id)?,
            properties: properties(&field("update_node.properties"), u.properties)?,
        }),
        Some(C::UpdateEdge(u)) => Ok(Change::UpdateEdge {
            id: edge_id(&field("update_edge.id"), &u.id)?,
            properties: properties(&field("update_edge.properties"), u.properties)?,
        }),
        Some(C::RemoveNode(id)) => Ok(Change::RemoveNode { id: node_id(&field("remove_node"), &id)? }),
        Some(C::RemoveEdge(id)) => Ok(Change::RemoveEdge { id: edge_id(&field("remove_edge"), &id)? }),
        Some(C::Rename(name)) => Ok(Change::Rename { name }),
    }
}

/// A node or edge page token (the last id of the page before), checked like an id before it
/// reaches SQL: anything else was not issued by this service.
fn page_after<T: ToString>(
    parse: fn(&str, &str) -> Result<Option<T>, ServiceError>,
    token: &str,
) -> Result<Option<String>, ServiceError> {
    parse("page.page_token", token)
        .map(|id| id.map(|id| id.to_string()))
        .map_err(|_| ServiceError::invalid("page.page_token", "not a token this service issued"))
}

fn types(field: &str, list: &[String]) -> Result<Vec<String>, ServiceError> {
    list.iter().map(|t| type_name(field, t).map(|t| t.as_str().to_owned())).collect()
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GraphService for GraphApi {
    async fn create_graph(&self, req: Request<pb::CreateGraphRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = if r.graph_id.is_empty() { AggregateId::new() } else { aggregate_id("graph_id", &r.graph_id)? };
            let command = GraphCommand::Create {
                name: r.name,
                description: r.description,
                properties: properties("properties", r.properties)?,
            };
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn rename_graph(&self, req: Request<pb::RenameGraphRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![Change::Rename { name: r.name }]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn archive_graph(&self, req: Request<pb::ArchiveGraphRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            self.execute(caller, graph, GraphCommand::Archive, r.options).await
        })
        .await
    }

    async fn add_node(&self, req: Request<pb::AddNodeRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![node_change(r.node, "node")?]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![Change::UpdateNode {
                id: node_id("node_id", &r.node_id)?,
                properties: properties("properties", r.properties)?,
            }]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![Change::RemoveNode { id: node_id("node_id", &r.node_id)? }]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn add_edge(&self, req: Request<pb::AddEdgeRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![edge_change(r.edge, "edge")?]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn update_edge(&self, req: Request<pb::UpdateEdgeRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![Change::UpdateEdge {
                id: edge_id("edge_id", &r.edge_id)?,
                properties: properties("properties", r.properties)?,
            }]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn remove_edge(&self, req: Request<pb::RemoveEdgeRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let command = GraphCommand::Apply(vec![Change::RemoveEdge { id: edge_id("edge_id", &r.edge_id)? }]);
            self.execute(caller, graph, command, r.options).await
        })
        .await
    }

    async fn apply_batch(&self, req: Request<pb::ApplyBatchRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let changes =
                r.changes.into_iter().enumerate().map(|(i, c)| batch_change(i, c)).collect::<Result<Vec<_>, _>>()?;
            self.execute(caller, graph, GraphCommand::Apply(changes), r.options).await
        })
        .await
    }

    async fn get_graph(&self, req: Request<pb::GetGraphRequest>) -> Reply<pb::Graph> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            queries::get_graph(&self.pool, caller.tenant, graph).await
        })
        .await
    }

    async fn list_graphs(&self, req: Request<pb::ListGraphsRequest>) -> Reply<pb::ListGraphsResponse> {
        handle(req, |caller, r| async move {
            let page = KeysetPage::parse(r.page, self.query.default_page, self.query.max_page)?;
            let (graphs, next) = queries::list_graphs(&self.pool, caller.tenant, page, r.include_archived).await?;
            Ok::<_, ServiceError>(pb::ListGraphsResponse { graphs, page: Some(next) })
        })
        .await
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> Reply<pb::Node> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let node = node_id("node_id", &r.node_id)?;
            queries::ensure_graph(&self.pool, caller.tenant, graph).await?;
            queries::get_node(&self.pool, graph, node.as_str()).await
        })
        .await
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Reply<pb::ListNodesResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let node_type = if r.r#type.is_empty() { None } else { Some(type_name("type", &r.r#type)?) };
            let page = r.page.unwrap_or_default();
            let size = self.query.page_size(page.page_size)?;
            queries::ensure_graph(&self.pool, caller.tenant, graph).await?;
            let after = page_after(optional_node_id, &page.page_token)?;
            let (nodes, next) =
                queries::list_nodes(&self.pool, graph, node_type.as_ref().map(|t| t.as_str()), size, after.as_deref())
                    .await?;
            Ok::<_, ServiceError>(pb::ListNodesResponse {
                nodes,
                page: Some(cim_proto::common::PageResponse { next_page_token: next }),
            })
        })
        .await
    }

    async fn list_edges(&self, req: Request<pb::ListEdgesRequest>) -> Reply<pb::ListEdgesResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let node = optional_node_id("node_id", &r.node_id)?;
            let edge_type = if r.r#type.is_empty() { None } else { Some(type_name("type", &r.r#type)?) };
            let page = r.page.unwrap_or_default();
            let size = self.query.page_size(page.page_size)?;
            let after = page_after(optional_edge_id, &page.page_token)?;
            queries::ensure_graph(&self.pool, caller.tenant, graph).await?;
            let (edges, next) = queries::list_edges(
                &self.pool,
                graph,
                node.as_ref().map(|n| n.as_str()),
                edge_type.as_ref().map(|t| t.as_str()),
                size,
                after.as_deref(),
            )
            .await?;
            Ok::<_, ServiceError>(pb::ListEdgesResponse {
                edges,
                page: Some(cim_proto::common::PageResponse { next_page_token: next }),
            })
        })
        .await
    }

    async fn neighbors(&self, req: Request<pb::NeighborsRequest>) -> Reply<pb::NeighborsResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let node = node_id("node_id", &r.node_id)?;
            let types = types("edge_types", &r.edge_types)?;
            let limit = match r.limit {
                0 => self.query.default_page,
                n if n <= self.query.max_neighbors => n,
                n => {
                    return Err(ServiceError::invalid(
                        "limit",
                        format!("{n} is above the maximum {}", self.query.max_neighbors),
                    ));
                }
            };
            self.timed(
                "neighbors",
                queries::neighbors(
                    &self.pool,
                    caller.tenant,
                    graph,
                    node.as_str(),
                    Dir::from_proto(r.direction)?,
                    &types,
                    limit,
                ),
            )
            .await
        })
        .await
    }

    async fn traverse(&self, req: Request<pb::TraverseRequest>) -> Reply<pb::TraverseResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let start = node_id("start_node_id", &r.start_node_id)?;
            let types = types("edge_types", &r.edge_types)?;
            if r.max_depth == 0 || r.max_depth > self.query.max_depth {
                return Err(ServiceError::invalid("max_depth", format!("required, 1 to {}", self.query.max_depth)));
            }
            if r.max_nodes == 0 || r.max_nodes > self.query.max_nodes {
                return Err(ServiceError::invalid("max_nodes", format!("required, 1 to {}", self.query.max_nodes)));
            }
            queries::ensure_node(&self.pool, caller.tenant, graph, start.as_str()).await?;
            self.timed(
                "traverse",
                queries::traverse(
                    &self.pool,
                    graph,
                    start.as_str(),
                    &Walk { dir: Dir::from_proto(r.direction)?, types, max_depth: r.max_depth, max_nodes: r.max_nodes },
                ),
            )
            .await
        })
        .await
    }

    async fn shortest_path(&self, req: Request<pb::ShortestPathRequest>) -> Reply<pb::ShortestPathResponse> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let from = node_id("from_node_id", &r.from_node_id)?;
            let to = node_id("to_node_id", &r.to_node_id)?;
            let types = types("edge_types", &r.edge_types)?;
            if r.max_depth == 0 || r.max_depth > self.query.max_depth {
                return Err(ServiceError::invalid("max_depth", format!("required, 1 to {}", self.query.max_depth)));
            }
            queries::ensure_node(&self.pool, caller.tenant, graph, from.as_str()).await?;
            queries::ensure_node(&self.pool, caller.tenant, graph, to.as_str()).await?;
            self.timed(
                "shortest_path",
                queries::shortest_path(
                    &self.pool,
                    graph,
                    from.as_str(),
                    to.as_str(),
                    &Walk {
                        dir: Dir::from_proto(r.direction)?,
                        types,
                        max_depth: r.max_depth,
                        max_nodes: self.query.max_nodes,
                    },
                ),
            )
            .await
        })
        .await
    }

    async fn get_graph_at_version(&self, req: Request<pb::GetGraphAtVersionRequest>) -> Reply<pb::GraphSnapshot> {
        handle(req, |caller, r| async move {
            let graph = aggregate_id("graph_id", &r.graph_id)?;
            let as_of = self
                .timed("at_version", async { Ok(self.executor.at_version(caller.tenant, graph, r.version).await?) })
                .await?;
            Ok::<_, ServiceError>(snapshot(graph, as_of))
        })
        .await
    }
}

fn snapshot(graph: AggregateId, as_of: AsOf<GraphState>) -> pb::GraphSnapshot {
    let AsOf { state, version, created_at, updated_at } = as_of;
    let g = graph.to_string();
    pb::GraphSnapshot {
        graph: Some(pb::Graph {
            graph_id: g.clone(),
            name: state.name.clone(),
            description: state.description.clone(),
            properties: Some(convert::json_to_struct(&state.properties)),
            status: if state.archived { "archived" } else { "active" }.to_owned(),
            version,
            node_count: state.nodes.len() as u64,
            edge_count: state.edges.len() as u64,
            created_at: Some(convert::timestamp(created_at)),
            updated_at: Some(convert::timestamp(updated_at)),
        }),
        nodes: state
            .nodes
            .iter()
            .map(|(id, n)| pb::Node {
                graph_id: g.clone(),
                id: id.to_string(),
                r#type: n.node_type.to_string(),
                properties: Some(convert::json_to_struct(&n.properties)),
            })
            .collect(),
        edges: state
            .edges
            .iter()
            .map(|(id, e)| pb::Edge {
                graph_id: g.clone(),
                id: id.to_string(),
                r#type: e.edge_type.to_string(),
                source: e.source.to_string(),
                target: e.target.to_string(),
                properties: Some(convert::json_to_struct(&e.properties)),
            })
            .collect(),
    }
}
