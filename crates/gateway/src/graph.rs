//! `/api/v1/graphs/...`: every graph RPC as a REST route. Each later domain adds a module like
//! this one (its state, DTOs, handlers, `routes()`, and its paths in the OpenAPI document).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cim_auth::Principal;
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult};
use crate::rest::{CommandQuery, Options, Page, Props, command, exact_properties, page, props, query, structure, ts};
use crate::routes::{DomainRoutes, Purpose, routes};
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
#[utoipa::path(post, path = "/api/v1/graphs", tag = "graphs", request_body = CreateGraph, params(CommandQuery),
    responses((status = 201, body = CommandResult)))]
pub async fn create_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<CreateGraph>,
) -> ApiResult<impl IntoResponse> {
    let graph_id = body.graph_id.clone().unwrap_or_default();
    let msg = pb::CreateGraphRequest {
        graph_id,
        name: body.name,
        description: body.description,
        properties: structure(&body.properties),
        options,
    };
    let r = command!(state.upstream, p, create_graph, msg);
    Ok(created(r))
}

/// List graphs
///
/// The tenant's graphs in id order, a page at a time (`page_token` from the previous page). Archived graphs only with `include_archived=true`.
#[utoipa::path(get, path = "/api/v1/graphs", tag = "graphs", params(ListGraphsQuery),
    responses((status = 200, body = Page<Graph>)))]
pub async fn list_graphs(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListGraphsQuery>,
) -> ApiResult<Json<Page<Graph>>> {
    let msg = pb::ListGraphsRequest {
        page: page(q.page_size, q.page_token),
        include_archived: q.include_archived.unwrap_or(false),
    };
    let r = query!(state.upstream, p, list_graphs, msg);
    Ok(Page::of(r.graphs, graph, r.page))
}

/// Get a graph
///
/// A graph's name, description, properties, status, version and counts.
#[utoipa::path(get, path = "/api/v1/graphs/{graph_id}", tag = "graphs", params(("graph_id" = String, Path)),
    responses((status = 200, body = Graph)))]
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
    params(("graph_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn rename_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<RenameGraph>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::RenameGraphRequest { graph_id, name: body.name, options };
    Ok(done(command!(state.upstream, p, rename_graph, msg)))
}

/// Archive a graph
///
/// Archives the graph: it stays readable, and refuses further changes (422).
#[utoipa::path(delete, path = "/api/v1/graphs/{graph_id}", tag = "graphs",
    params(("graph_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn archive_graph(
    State(state): State<Arc<GraphState>>,
    Extension(p): Extension<Principal>,
    ApiPath(graph_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::ArchiveGraphRequest { graph_id, options };
    Ok(done(command!(state.upstream, p, archive_graph, msg)))
}

/// The graph routes: the role each needs, its handler (whose annotation gives method and path).
pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<GraphState>: FromRef<S>,
{
    DomainRoutes::new(purpose)
        .writer(routes!(create_graph))
        .reader(routes!(list_graphs))
        .reader(routes!(get_graph))
        .writer(routes!(rename_graph))
        .writer(routes!(archive_graph))
        .writer(routes!(add_node))
        .reader(routes!(list_nodes))
        .reader(routes!(get_node))
        .writer(routes!(update_node))
        .writer(routes!(remove_node))
        .reader(routes!(neighbors))
        .writer(routes!(add_edge))
        .reader(routes!(list_edges))
        .writer(routes!(update_edge))
        .writer(routes!(remove_edge))
        .writer(routes!(apply_batch))
        // A query with a body: reading needs no more than the reader role.
        .reader(routes!(traverse))
        .reader(routes!(shortest_path))
        .reader(routes!(graph_at_version))
}
