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

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult};
use crate::rest::{
    CommandQuery, Props, command, exact_properties, idempotency_key, next_token, page, props, query, structure, ts,
};
use crate::upstream::Upstream;

mod dto;

pub use dto::*;

/// What the graph routes use: the graph service. (A write's cached reads are dropped by the cache
/// layer, as for every domain: `crate::cache`.)
#[derive(Debug)]
pub struct GraphState {
    pub upstream: Upstream<GraphServiceClient<Channel>>,
}

mod elements;
mod walks;

pub use elements::*;
pub use walks::*;

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
    let r = command!(state.upstream, p, create_graph, msg);
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
    let r = query!(state.upstream, p, list_graphs, msg);
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
    Ok(Json(graph(query!(state.upstream, p, get_graph, pb::GetGraphRequest { graph_id }))))
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
    let msg = pb::RenameGraphRequest { graph_id, name: body.name, options: options(&q, &headers) };
    Ok(done(command!(state.upstream, p, rename_graph, msg)))
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
    let msg = pb::ArchiveGraphRequest { graph_id, options: options(&q, &headers) };
    Ok(done(command!(state.upstream, p, archive_graph, msg)))
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
