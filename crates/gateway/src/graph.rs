//! `/api/v1/graphs/...`: every graph RPC as a REST route. Each later domain adds a module like
//! this one (its state, DTOs, handlers, `routes()`, and its paths in the OpenAPI document).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cim_auth::{Principal, Role};
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use http::Method;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, ToSchema};

use crate::cache::{Bumps, Local};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult};
use crate::rest::{CommandQuery, Props, exact_properties, idempotency_key, next_token, page, props, structure, ts};
use crate::upstream::Upstream;

/// What the graph routes use: the graph service, and this instance's cache to drop after a write.
#[derive(Debug)]
pub struct GraphState {
    pub upstream: Upstream<GraphServiceClient<Channel>>,
    pub local_cache: Arc<Local>,
    pub bumps: Bumps,
}

// ---- representations ----

#[derive(Debug, Serialize, ToSchema)]
pub struct Graph {
    pub graph_id: String,
    pub name: String,
    pub description: String,
    #[schema(value_type = Object)]
    pub properties: Props,
    /// `active` or `archived`.
    pub status: String,
    pub version: u64,
    pub node_count: u64,
    pub edge_count: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    pub id: String,
    #[serde(rename = "type")]
    pub node_type: String,
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Edge {
    pub id: String,
    #[serde(rename = "type")]
    pub edge_type: String,
    pub source: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub properties: Props,
}

/// What every command returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResult {
    pub graph_id: String,
    /// The graph's version after the command.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// True when an earlier command with the same Idempotency-Key already did this (the other
    /// fields repeat its answer).
    pub replayed: bool,
    /// Ids of the nodes this command added (generated ids included), in order.
    pub created_node_ids: Vec<String>,
    /// Ids of the edges this command added, in order.
    pub created_edge_ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GraphPage {
    pub items: Vec<Graph>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodePage {
    pub items: Vec<Node>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EdgePage {
    pub items: Vec<Edge>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Neighbor {
    pub node: Node,
    pub via: Edge,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Neighbors {
    pub items: Vec<Neighbor>,
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Visit {
    pub node: Node,
    pub depth: u32,
    pub parent_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Traversal {
    pub visits: Vec<Visit>,
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShortestPath {
    pub found: bool,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Not found because the search reached the server's node bound first: a path may exist.
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    pub graph: Graph,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

// ---- requests ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGraph {
    /// A UUID; generated when absent.
    #[serde(default)]
    pub graph_id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameGraph {
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub node_type: String,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub edge_type: String,
    pub source: String,
    pub target: String,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProperties {
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub properties: Props,
}

/// One change of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    AddNode {
        #[serde(default)]
        id: Option<String>,
        #[serde(rename = "type")]
        node_type: String,
        #[serde(default)]
        #[serde(deserialize_with = "exact_properties")]
        #[schema(value_type = Object)]
        properties: Props,
    },
    AddEdge {
        #[serde(default)]
        id: Option<String>,
        #[serde(rename = "type")]
        edge_type: String,
        source: String,
        target: String,
        #[serde(default)]
        #[serde(deserialize_with = "exact_properties")]
        #[schema(value_type = Object)]
        properties: Props,
    },
    UpdateNode {
        id: String,
        #[serde(deserialize_with = "exact_properties")]
        #[schema(value_type = Object)]
        properties: Props,
    },
    UpdateEdge {
        id: String,
        #[serde(deserialize_with = "exact_properties")]
        #[schema(value_type = Object)]
        properties: Props,
    },
    RemoveNode {
        id: String,
    },
    RemoveEdge {
        id: String,
    },
    Rename {
        name: String,
    },
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Out,
    In,
    Both,
}

impl Direction {
    fn pb(self) -> i32 {
        match self {
            Direction::Out => pb::Direction::Out as i32,
            Direction::In => pb::Direction::In as i32,
            Direction::Both => pb::Direction::Both as i32,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraverseRequest {
    pub start: String,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub edge_types: Vec<String>,
    pub max_depth: u32,
    pub max_nodes: u32,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListGraphsQuery {
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
    pub include_archived: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListNodesQuery {
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub node_type: Option<String>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListEdgesQuery {
    /// Only edges touching this node.
    pub node_id: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub edge_type: Option<String>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NeighborsQuery {
    pub direction: Option<Direction>,
    /// Comma-separated edge types.
    pub edge_types: Option<String>,
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    pub from: String,
    pub to: String,
    pub direction: Option<Direction>,
    pub edge_types: Option<String>,
    pub max_depth: Option<u32>,
}

// ---- conversions ----

fn graph(g: pb::Graph) -> Graph {
    Graph {
        graph_id: g.graph_id,
        name: g.name,
        description: g.description,
        properties: props(g.properties),
        status: g.status,
        version: g.version,
        node_count: g.node_count,
        edge_count: g.edge_count,
        created_at: ts(g.created_at),
        updated_at: ts(g.updated_at),
    }
}

fn node(n: pb::Node) -> Node {
    Node { id: n.id, node_type: n.r#type, properties: props(n.properties) }
}

fn edge(e: pb::Edge) -> Edge {
    Edge { id: e.id, edge_type: e.r#type, source: e.source, target: e.target, properties: props(e.properties) }
}

fn result(r: pb::CommandResponse) -> CommandResult {
    CommandResult {
        graph_id: r.graph_id,
        version: r.version,
        event_ids: r.event_ids,
        replayed: r.replayed,
        created_node_ids: r.created_node_ids,
        created_edge_ids: r.created_edge_ids,
    }
}

fn types(list: Option<String>) -> Vec<String> {
    list.map(|l| l.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()).unwrap_or_default()
}

fn options(q: &CommandQuery, headers: &HeaderMap) -> Option<cim_proto::common::CommandOptions> {
    Some(cim_proto::common::CommandOptions {
        expected_version: q.expected_version,
        idempotency_key: idempotency_key(headers),
    })
}

fn created(r: pb::CommandResponse) -> impl IntoResponse {
    (StatusCode::CREATED, Json(result(r)))
}

fn done(r: pb::CommandResponse) -> impl IntoResponse {
    (StatusCode::OK, Json(result(r)))
}

/// After a successful command through this gateway its graph's cache is dropped at once (the
/// event consumer does the same for changes made elsewhere).
async fn changed(state: &GraphState, graph_id: &str) {
    state.local_cache.bump(graph_id);
    if let Err(e) = state.bumps.bump(graph_id).await {
        tracing::debug!(error = %e, "cache not invalidated (redis unavailable)");
    }
}

// ---- handlers ----

/// A graph command, then this gateway's cache of the graph dropped.
macro_rules! command {
    ($state:ident, $p:ident, $graph_id:expr, $call:ident, $msg:expr) => {{
        let r = crate::rest::command!($state.upstream, $p, $call, $msg);
        changed(&$state, $graph_id).await;
        r
    }};
}

macro_rules! query {
    ($state:ident, $p:ident, $call:ident, $msg:expr) => {
        crate::rest::query!($state.upstream, $p, $call, $msg)
    };
}

/// Create a graph
///
/// Creates an empty graph in the caller's tenant. `graph_id` may be chosen by the client (a UUIDv7); otherwise the server makes one. Needs the writer role.
#[utoipa::path(post, path = "/api/v1/graphs", tag = "graphs", request_body = CreateGraph,
    params(CommandQuery),
    responses((status = 201, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateGraph>,
) -> ApiResult<impl IntoResponse> {
    let graph_id = body.graph_id.clone().unwrap_or_default();
    let msg = pb::CreateGraphRequest {
        graph_id,
        name: body.name,
        description: body.description,
        properties: structure(&body.properties),
        options: options(&q, &headers),
    };
    let r = command!(state, p, "", create_graph, msg);
    Ok(created(r))
}

/// List graphs
///
/// The tenant's graphs in id order, a page at a time (`page_token` from the previous page). Archived graphs only with `include_archived=true`.
#[utoipa::path(get, path = "/api/v1/graphs", tag = "graphs", params(ListGraphsQuery),
    responses((status = 200, body = GraphPage), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list_graphs(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListGraphsQuery>,
) -> ApiResult<Json<GraphPage>> {
    let msg = pb::ListGraphsRequest {
        page: page(q.page_size, q.page_token),
        include_archived: q.include_archived.unwrap_or(false),
    };
    let r = query!(state, p, list_graphs, msg);
    Ok(Json(GraphPage { items: r.graphs.into_iter().map(graph).collect(), next_page_token: next_token(r.page) }))
}

/// Get a graph
///
/// A graph's name, description, properties, status, version and counts.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}", tag = "graphs", params(("graph_id" = String, Path)),
    responses((status = 200, body = Graph), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
) -> ApiResult<Json<Graph>> {
    Ok(Json(graph(query!(state, p, get_graph, pb::GetGraphRequest { graph_id }))))
}

/// Rename a graph
///
/// Sets a new name. `expected_version` makes the change conditional (409 when the graph moved on).
#[utoipa::path(patch, path = "/api/v1/graphs/{graph_id}", tag = "graphs", request_body = RenameGraph,
    params(("graph_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn rename_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RenameGraph>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::RenameGraphRequest { graph_id: graph_id.clone(), name: body.name, options: options(&q, &headers) };
    Ok(done(command!(state, p, &graph_id, rename_graph, msg)))
}

/// Archive a graph
///
/// Archives the graph: it stays readable, and refuses further changes (422).
#[utoipa::path(delete, path = "/api/v1/graphs/{graph_id}", tag = "graphs",
    params(("graph_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn archive_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::ArchiveGraphRequest { graph_id: graph_id.clone(), options: options(&q, &headers) };
    Ok(done(command!(state, p, &graph_id, archive_graph, msg)))
}

/// Add a node
///
/// Adds one node; its id is generated when absent and returned in `created_node_ids`.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/nodes", tag = "nodes", request_body = NodeSpec,
    params(("graph_id" = String, Path), CommandQuery),
    responses((status = 201, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn add_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NodeSpec>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::AddNodeRequest {
        graph_id: graph_id.clone(),
        node: Some(pb::NodeSpec {
            id: body.id.unwrap_or_default(),
            r#type: body.node_type,
            properties: structure(&body.properties),
        }),
        options: options(&q, &headers),
    };
    Ok(created(command!(state, p, &graph_id, add_node, msg)))
}

/// List nodes
///
/// The graph's nodes in id order, optionally of one `type`, a page at a time.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/nodes", tag = "nodes",
    params(("graph_id" = String, Path), ListNodesQuery),
    responses((status = 200, body = NodePage), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list_nodes(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListNodesQuery>,
) -> ApiResult<Json<NodePage>> {
    let msg = pb::ListNodesRequest {
        graph_id,
        r#type: q.node_type.unwrap_or_default(),
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state, p, list_nodes, msg);
    Ok(Json(NodePage { items: r.nodes.into_iter().map(node).collect(), next_page_token: next_token(r.page) }))
}

/// Get a node
///
/// One node with its type and properties.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}", tag = "nodes",
    params(("graph_id" = String, Path), ("node_id" = String, Path)),
    responses((status = 200, body = Node), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Node>> {
    Ok(Json(node(query!(state, p, get_node, pb::GetNodeRequest { graph_id, node_id }))))
}

/// Set a node's properties
///
/// Replaces the node's property document.
#[utoipa::path(patch, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}", tag = "nodes", request_body = SetProperties,
    params(("graph_id" = String, Path), ("node_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn update_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetProperties>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::UpdateNodeRequest {
        graph_id: graph_id.clone(),
        node_id,
        properties: structure(&body.properties),
        options: options(&q, &headers),
    };
    Ok(done(command!(state, p, &graph_id, update_node, msg)))
}

/// Remove a node
///
/// Removes the node; a node that still has edges is refused (422).
#[utoipa::path(delete, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}", tag = "nodes",
    params(("graph_id" = String, Path), ("node_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn remove_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::RemoveNodeRequest { graph_id: graph_id.clone(), node_id, options: options(&q, &headers) };
    Ok(done(command!(state, p, &graph_id, remove_node, msg)))
}

/// Add an edge
///
/// Adds one edge between two existing nodes; its id is generated when absent and returned in `created_edge_ids`.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/edges", tag = "edges", request_body = EdgeSpec,
    params(("graph_id" = String, Path), CommandQuery),
    responses((status = 201, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn add_edge(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EdgeSpec>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::AddEdgeRequest {
        graph_id: graph_id.clone(),
        edge: Some(pb::EdgeSpec {
            id: body.id.unwrap_or_default(),
            r#type: body.edge_type,
            source: body.source,
            target: body.target,
            properties: structure(&body.properties),
        }),
        options: options(&q, &headers),
    };
    Ok(created(command!(state, p, &graph_id, add_edge, msg)))
}

/// List edges
///
/// The graph's edges in id order, optionally touching one node or of one `type`, a page at a time.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/edges", tag = "edges",
    params(("graph_id" = String, Path), ListEdgesQuery),
    responses((status = 200, body = EdgePage), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list_edges(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListEdgesQuery>,
) -> ApiResult<Json<EdgePage>> {
    let msg = pb::ListEdgesRequest {
        graph_id,
        node_id: q.node_id.unwrap_or_default(),
        r#type: q.edge_type.unwrap_or_default(),
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state, p, list_edges, msg);
    Ok(Json(EdgePage { items: r.edges.into_iter().map(edge).collect(), next_page_token: next_token(r.page) }))
}

/// Set an edge's properties
///
/// Replaces the edge's property document.
#[utoipa::path(patch, path = "/api/v1/graphs/{graph_id}/edges/{edge_id}", tag = "edges", request_body = SetProperties,
    params(("graph_id" = String, Path), ("edge_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn update_edge(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, edge_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SetProperties>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::UpdateEdgeRequest {
        graph_id: graph_id.clone(),
        edge_id,
        properties: structure(&body.properties),
        options: options(&q, &headers),
    };
    Ok(done(command!(state, p, &graph_id, update_edge, msg)))
}

/// Remove an edge
///
/// Removes the edge.
#[utoipa::path(delete, path = "/api/v1/graphs/{graph_id}/edges/{edge_id}", tag = "edges",
    params(("graph_id" = String, Path), ("edge_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn remove_edge(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, edge_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::RemoveEdgeRequest { graph_id: graph_id.clone(), edge_id, options: options(&q, &headers) };
    Ok(done(command!(state, p, &graph_id, remove_edge, msg)))
}

fn change(c: Change) -> pb::GraphChange {
    use pb::graph_change::Change as C;
    let c = match c {
        Change::AddNode { id, node_type, properties } => C::AddNode(pb::NodeSpec {
            id: id.unwrap_or_default(),
            r#type: node_type,
            properties: structure(&properties),
        }),
        Change::AddEdge { id, edge_type, source, target, properties } => C::AddEdge(pb::EdgeSpec {
            id: id.unwrap_or_default(),
            r#type: edge_type,
            source,
            target,
            properties: structure(&properties),
        }),
        Change::UpdateNode { id, properties } => {
            C::UpdateNode(pb::UpdateProperties { id, properties: structure(&properties) })
        }
        Change::UpdateEdge { id, properties } => {
            C::UpdateEdge(pb::UpdateProperties { id, properties: structure(&properties) })
        }
        Change::RemoveNode { id } => C::RemoveNode(id),
        Change::RemoveEdge { id } => C::RemoveEdge(id),
        Change::Rename { name } => C::Rename(name),
    };
    pb::GraphChange { change: Some(c) }
}

/// Apply a batch of changes
///
/// Applies every change or none, as one command and one version step per change; ids created by the batch are returned.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/batch", tag = "graphs", request_body = Batch,
    params(("graph_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn apply_batch(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Batch>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::ApplyBatchRequest {
        graph_id: graph_id.clone(),
        changes: body.changes.into_iter().map(change).collect(),
        options: options(&q, &headers),
    };
    Ok(done(command!(state, p, &graph_id, apply_batch, msg)))
}

/// Neighbours of a node
///
/// The edges at a node (out, in or both) with the node at their other end, in edge-id order, at most `limit`; `truncated` says more exist.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}/neighbors", tag = "queries",
    params(("graph_id" = String, Path), ("node_id" = String, Path), NeighborsQuery),
    responses((status = 200, body = Neighbors), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn neighbors(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<NeighborsQuery>,
) -> ApiResult<Json<Neighbors>> {
    let msg = pb::NeighborsRequest {
        graph_id,
        node_id,
        direction: q.direction.unwrap_or_default().pb(),
        edge_types: types(q.edge_types),
        limit: q.limit.unwrap_or(0),
    };
    let r = query!(state, p, neighbors, msg);
    let items =
        r.neighbors.into_iter().filter_map(|n| Some(Neighbor { node: node(n.node?), via: edge(n.via?) })).collect();
    Ok(Json(Neighbors { items, truncated: r.truncated }))
}

/// Breadth-first traversal
///
/// Visits nodes breadth-first from `start` up to `max_depth` hops: the first `max_nodes` in BFS order (frontier order, then edge id), with `truncated` true exactly when a node within the depth was left out.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/traverse", tag = "queries", request_body = TraverseRequest,
    params(("graph_id" = String, Path)),
    responses((status = 200, body = Traversal), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn traverse(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiJson(body): ApiJson<TraverseRequest>,
) -> ApiResult<Json<Traversal>> {
    let msg = pb::TraverseRequest {
        graph_id,
        start_node_id: body.start,
        direction: body.direction.pb(),
        edge_types: body.edge_types,
        max_depth: body.max_depth,
        max_nodes: body.max_nodes,
    };
    let r = query!(state, p, traverse, msg);
    let visits = r
        .visits
        .into_iter()
        .filter_map(|v| {
            Some(Visit { node: node(v.node?), depth: v.depth, parent_id: Some(v.parent_id).filter(|s| !s.is_empty()) })
        })
        .collect();
    Ok(Json(Traversal { visits, truncated: r.truncated }))
}

/// Shortest path
///
/// Fewest hops from `from` to `to` within `max_depth`. `truncated` says the search reached the server's node bound before finding a path.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/shortest-path", tag = "queries",
    params(("graph_id" = String, Path), PathQuery),
    responses((status = 200, body = ShortestPath), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn shortest_path(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> ApiResult<Json<ShortestPath>> {
    let msg = pb::ShortestPathRequest {
        graph_id,
        from_node_id: q.from,
        to_node_id: q.to,
        direction: q.direction.unwrap_or_default().pb(),
        edge_types: types(q.edge_types),
        max_depth: q.max_depth.unwrap_or(0),
    };
    let r = query!(state, p, shortest_path, msg);
    Ok(Json(ShortestPath {
        found: r.found,
        nodes: r.nodes.into_iter().map(node).collect(),
        edges: r.edges.into_iter().map(edge).collect(),
        truncated: r.truncated,
    }))
}

/// The graph at a past version
///
/// The graph, its nodes and edges as they were after its first `version` events, folded from the verified event history.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/versions/{version}", tag = "queries",
    params(("graph_id" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = Snapshot), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn graph_at_version(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, version)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Snapshot>> {
    let r = query!(state, p, get_graph_at_version, pb::GetGraphAtVersionRequest { graph_id, version });
    let g = r.graph.ok_or_else(|| ApiError::new(cim_core::ErrorCode::Internal, "snapshot without graph"))?;
    Ok(Json(Snapshot {
        graph: graph(g),
        nodes: r.nodes.into_iter().map(node).collect(),
        edges: r.edges.into_iter().map(edge).collect(),
    }))
}

/// The role each route needs (one of `app::ROUTE_ROLES`, which `crate::authz` checks).
pub const ROUTE_ROLES: &[(Method, &str, Option<Role>)] = &[
    (Method::POST, "/api/v1/graphs", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/graphs/{graph_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/graphs/{graph_id}", Some(Role::Writer)),
    (Method::POST, "/api/v1/graphs/{graph_id}/nodes", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs/{graph_id}/nodes", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}/nodes/{node_id}", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/graphs/{graph_id}/nodes/{node_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/graphs/{graph_id}/nodes/{node_id}", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs/{graph_id}/nodes/{node_id}/neighbors", Some(Role::Reader)),
    (Method::POST, "/api/v1/graphs/{graph_id}/edges", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs/{graph_id}/edges", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/graphs/{graph_id}/edges/{edge_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/graphs/{graph_id}/edges/{edge_id}", Some(Role::Writer)),
    (Method::POST, "/api/v1/graphs/{graph_id}/batch", Some(Role::Writer)),
    // A query with a body: reading needs no more than the reader role.
    (Method::POST, "/api/v1/graphs/{graph_id}/traverse", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}/shortest-path", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}/versions/{version}", Some(Role::Reader)),
];

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<GraphState>: FromRef<S>,
{
    Router::new()
        .route("/api/v1/graphs", post(create_graph).get(list_graphs))
        .route("/api/v1/graphs/{graph_id}", get(get_graph).patch(rename_graph).delete(archive_graph))
        .route("/api/v1/graphs/{graph_id}/nodes", post(add_node).get(list_nodes))
        .route("/api/v1/graphs/{graph_id}/nodes/{node_id}", get(get_node).patch(update_node).delete(remove_node))
        .route("/api/v1/graphs/{graph_id}/nodes/{node_id}/neighbors", get(neighbors))
        .route("/api/v1/graphs/{graph_id}/edges", post(add_edge).get(list_edges))
        .route("/api/v1/graphs/{graph_id}/edges/{edge_id}", axum::routing::patch(update_edge).delete(remove_edge))
        .route("/api/v1/graphs/{graph_id}/batch", post(apply_batch))
        .route("/api/v1/graphs/{graph_id}/traverse", post(traverse))
        .route("/api/v1/graphs/{graph_id}/shortest-path", get(shortest_path))
        .route("/api/v1/graphs/{graph_id}/versions/{version}", get(graph_at_version))
}
