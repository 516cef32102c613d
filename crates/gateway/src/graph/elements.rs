//! Nodes, edges and batches of changes inside a graph.

use super::*;

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
        graph_id,
        node: Some(pb::NodeSpec {
            id: body.id.unwrap_or_default(),
            r#type: body.node_type,
            properties: structure(&body.properties),
        }),
        options: options(&q, &headers),
    };
    Ok(created(command!(state.upstream, p, add_node, msg)))
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
    let r = query!(state.upstream, p, list_nodes, msg);
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
    Ok(Json(node(query!(state.upstream, p, get_node, pb::GetNodeRequest { graph_id, node_id }))))
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
        graph_id,
        node_id,
        properties: structure(&body.properties),
        options: options(&q, &headers),
    };
    Ok(done(command!(state.upstream, p, update_node, msg)))
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
    let msg = pb::RemoveNodeRequest { graph_id, node_id, options: options(&q, &headers) };
    Ok(done(command!(state.upstream, p, remove_node, msg)))
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
        graph_id,
        edge: Some(pb::EdgeSpec {
            id: body.id.unwrap_or_default(),
            r#type: body.edge_type,
            source: body.source,
            target: body.target,
            properties: structure(&body.properties),
        }),
        options: options(&q, &headers),
    };
    Ok(created(command!(state.upstream, p, add_edge, msg)))
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
    let r = query!(state.upstream, p, list_edges, msg);
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
        graph_id,
        edge_id,
        properties: structure(&body.properties),
        options: options(&q, &headers),
    };
    Ok(done(command!(state.upstream, p, update_edge, msg)))
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
    let msg = pb::RemoveEdgeRequest { graph_id, edge_id, options: options(&q, &headers) };
    Ok(done(command!(state.upstream, p, remove_edge, msg)))
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
        graph_id,
        changes: body.changes.into_iter().map(change).collect(),
        options: options(&q, &headers),
    };
    Ok(done(command!(state.upstream, p, apply_batch, msg)))
}
