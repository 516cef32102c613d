//! Nodes, edges and batches of changes inside a graph.

use super::*;

/// Add a node
///
/// Adds one node; its id is generated when absent and returned in `created_node_ids`.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/nodes", tag = "nodes", request_body = NodeSpec,
    params(("graph_id" = String, Path), CommandQuery), responses((status = 201, body = CommandResult)))]
pub async fn add_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<NodeSpec>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::AddNodeRequest { graph_id, node: Some(body.into()), options };
    Ok(created(command!(state.upstream, p, add_node, msg)))
}

/// List nodes
///
/// The graph's nodes in id order, optionally of one `type`, a page at a time.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/nodes", tag = "nodes",
    params(("graph_id" = String, Path), ListNodesQuery), responses((status = 200, body = Page<Node>)))]
pub async fn list_nodes(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListNodesQuery>,
) -> ApiResult<Json<Page<Node>>> {
    let msg = pb::ListNodesRequest {
        graph_id,
        r#type: q.node_type.unwrap_or_default(),
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state.upstream, p, list_nodes, msg);
    Ok(Page::of(r.nodes, node, r.page))
}

/// Get a node
///
/// One node with its type and properties.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}", tag = "nodes",
    params(("graph_id" = String, Path), ("node_id" = String, Path)), responses((status = 200, body = Node)))]
pub async fn get_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Node>> {
    Ok(Json(node(query!(state.upstream, p, get_node, pb::GetNodeRequest { graph_id, node_id }))))
}

/// Set a node's properties
///
/// Replaces the node's property document.
#[utoipa::path(patch, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}", tag = "nodes", request_body = SetProperties,
    params(("graph_id" = String, Path), ("node_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn update_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<SetProperties>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::UpdateNodeRequest { graph_id, node_id, properties: structure(&body.properties), options };
    Ok(done(command!(state.upstream, p, update_node, msg)))
}

/// Remove a node
///
/// Removes the node; a node that still has edges is refused (422).
#[utoipa::path(delete, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}", tag = "nodes",
    params(("graph_id" = String, Path), ("node_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn remove_node(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, node_id)): ApiPath<(String, String)>,
    Options(options): Options,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::RemoveNodeRequest { graph_id, node_id, options };
    Ok(done(command!(state.upstream, p, remove_node, msg)))
}

/// Add an edge
///
/// Adds one edge between two existing nodes; its id is generated when absent and returned in `created_edge_ids`.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/edges", tag = "edges", request_body = EdgeSpec,
    params(("graph_id" = String, Path), CommandQuery), responses((status = 201, body = CommandResult)))]
pub async fn add_edge(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<EdgeSpec>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::AddEdgeRequest { graph_id, edge: Some(body.into()), options };
    Ok(created(command!(state.upstream, p, add_edge, msg)))
}

/// List edges
///
/// The graph's edges in id order, optionally touching one node or of one `type`, a page at a time.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/edges", tag = "edges",
    params(("graph_id" = String, Path), ListEdgesQuery), responses((status = 200, body = Page<Edge>)))]
pub async fn list_edges(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListEdgesQuery>,
) -> ApiResult<Json<Page<Edge>>> {
    let msg = pb::ListEdgesRequest {
        graph_id,
        node_id: q.node_id.unwrap_or_default(),
        r#type: q.edge_type.unwrap_or_default(),
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state.upstream, p, list_edges, msg);
    Ok(Page::of(r.edges, edge, r.page))
}

/// Set an edge's properties
///
/// Replaces the edge's property document.
#[utoipa::path(patch, path = "/api/v1/graphs/{graph_id}/edges/{edge_id}", tag = "edges", request_body = SetProperties,
    params(("graph_id" = String, Path), ("edge_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn update_edge(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, edge_id)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<SetProperties>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::UpdateEdgeRequest { graph_id, edge_id, properties: structure(&body.properties), options };
    Ok(done(command!(state.upstream, p, update_edge, msg)))
}

/// Remove an edge
///
/// Removes the edge.
#[utoipa::path(delete, path = "/api/v1/graphs/{graph_id}/edges/{edge_id}", tag = "edges",
    params(("graph_id" = String, Path), ("edge_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn remove_edge(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, edge_id)): ApiPath<(String, String)>,
    Options(options): Options,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::RemoveEdgeRequest { graph_id, edge_id, options };
    Ok(done(command!(state.upstream, p, remove_edge, msg)))
}

/// Apply a batch of changes
///
/// Applies every change or none, as one command and one version step per change; ids created by the batch are returned.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/batch", tag = "graphs", request_body = Batch,
    params(("graph_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn apply_batch(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Batch>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::ApplyBatchRequest { graph_id, changes: body.changes.into_iter().map(Into::into).collect(), options };
    Ok(done(command!(state.upstream, p, apply_batch, msg)))
}
