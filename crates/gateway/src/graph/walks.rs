//! Reads that walk the graph (neighbours, traversal, shortest path) and the graph as of a
//! version.

use super::*;

/// Neighbours of a node
///
/// The edges at a node (out, in or both) with the node at their other end, in edge-id order, at most `limit`; `truncated` says more exist.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}/nodes/{node_id}/neighbors", tag = "queries",
    params(("graph_id" = String, Path), ("node_id" = String, Path), NeighborsQuery),
    responses((status = 200, body = Neighbors)))]
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
    let r = query!(state.upstream, p, neighbors, msg);
    let items =
        r.neighbors.into_iter().filter_map(|n| Some(Neighbor { node: node(n.node?), via: edge(n.via?) })).collect();
    Ok(Json(Neighbors { items, truncated: r.truncated }))
}

/// Breadth-first traversal
///
/// Visits nodes breadth-first from `start` up to `max_depth` hops: the first `max_nodes` in BFS order (frontier order, then edge id), with `truncated` true exactly when a node within the depth was left out.
#[utoipa::path(post, path = "/api/v1/graphs/{graph_id}/traverse", tag = "queries", request_body = TraverseRequest,
    params(("graph_id" = String, Path)), responses((status = 200, body = Traversal)))]
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
    let r = query!(state.upstream, p, traverse, msg);
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
    params(("graph_id" = String, Path), PathQuery), responses((status = 200, body = ShortestPath)))]
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
    let r = query!(state.upstream, p, shortest_path, msg);
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
    params(("graph_id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Snapshot)))]
pub async fn graph_at_version(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath((graph_id, version)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Snapshot>> {
    let r = query!(state.upstream, p, get_graph_at_version, pb::GetGraphAtVersionRequest { graph_id, version });
    let g = r.graph.ok_or_else(|| ApiError::new(cim_core::ErrorCode::Internal, "snapshot without graph"))?;
    Ok(Json(Snapshot {
        graph: graph(g),
        nodes: r.nodes.into_iter().map(node).collect(),
        edges: r.edges.into_iter().map(edge).collect(),
    }))
}
