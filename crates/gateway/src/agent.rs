//! `/api/v1/agents/...` and `/api/v1/tasks/...`: every unary RPC of `cim.agent.v1` as a REST
//! route, at its `google.api.http` path and verb. [`dto`]: the JSON; [`registry`]: deploying,
//! reading and configuring agents; [`lifecycle`]: activate, suspend, offline, decommission;
//! [`tasks`]: submit, cancel, read, route. This file: the routes' state, the tables and the
//! router. The agents' own worker stream is gRPC only: a stream is no REST route.

mod conversation;
mod dto;
mod lifecycle;
mod registry;
mod tasks;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use cim_auth::{Principal, Role};
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use http::Method;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::ApiResult;
use crate::rest::{
    CommandQuery, Props, command, exact_properties, idempotency_key, next_token, page, props, query, structure, ts,
};
use crate::upstream::Upstream;
use conversation::*;
pub use conversation::{Completed, Failed, MessageChunk, NewMessage};
pub use dto::*;
use lifecycle::*;
use registry::*;
use tasks::*;

/// What the agent routes use: the agent service (`CIM_GATEWAY_AGENT_URLS`).
#[derive(Debug)]
pub struct AgentState {
    pub upstream: Upstream<AgentServiceClient<Channel>>,
    /// Conversations: no deadline, a response streams as long as the agent writes it.
    pub conversation: Upstream<AgentServiceClient<Channel>>,
}

/// The route whose response streams for as long as the agent answers (no deadline, no
/// idempotent replay of a stream).
pub const CONVERSATION_ROUTE: &str = "/api/v1/agents/{agent_id}/messages";

/// The role each route needs (one of `app::ROUTE_ROLES`, which `crate::authz` checks). Readers
/// read, and ask where a task would go (a dry run that changes nothing). Writers deploy,
/// configure and move agents through their lifecycle, and submit and cancel tasks. Admins alone
/// grant and revoke permissions (what an agent may access is a security boundary, like a
/// document's retention) and decommission an agent (final, nothing undoes it).
pub const ROUTE_ROLES: &[(Method, &str, Option<Role>)] = &[
    (Method::POST, "/api/v1/agents", Some(Role::Writer)),
    (Method::GET, "/api/v1/agents", Some(Role::Reader)),
    (Method::GET, "/api/v1/agents/{agent_id}", Some(Role::Reader)),
    (Method::GET, "/api/v1/agents/{agent_id}/as-of/{version}", Some(Role::Reader)),
    (Method::PUT, "/api/v1/agents/{agent_id}/model", Some(Role::Writer)),
    (Method::PUT, "/api/v1/agents/{agent_id}/system-prompt", Some(Role::Writer)),
    (Method::PUT, "/api/v1/agents/{agent_id}/capabilities", Some(Role::Writer)),
    (Method::POST, "/api/v1/agents/{agent_id}/permissions/grant", Some(Role::Admin)),
    (Method::POST, "/api/v1/agents/{agent_id}/permissions/revoke", Some(Role::Admin)),
    (Method::POST, "/api/v1/agents/{agent_id}/tools/enable", Some(Role::Writer)),
    (Method::POST, "/api/v1/agents/{agent_id}/tools/disable", Some(Role::Writer)),
    (Method::PUT, "/api/v1/agents/{agent_id}/concurrency-limit", Some(Role::Writer)),
    (Method::POST, "/api/v1/agents/{agent_id}/activate", Some(Role::Writer)),
    (Method::POST, "/api/v1/agents/{agent_id}/suspend", Some(Role::Writer)),
    (Method::POST, "/api/v1/agents/{agent_id}/offline", Some(Role::Writer)),
    (Method::POST, "/api/v1/agents/{agent_id}/decommission", Some(Role::Admin)),
    (Method::POST, CONVERSATION_ROUTE, Some(Role::Writer)),
    (Method::POST, "/api/v1/tasks", Some(Role::Writer)),
    (Method::GET, "/api/v1/tasks", Some(Role::Reader)),
    (Method::GET, "/api/v1/tasks/{task_id}", Some(Role::Reader)),
    (Method::POST, "/api/v1/tasks/{task_id}/cancel", Some(Role::Writer)),
    (Method::POST, "/api/v1/tasks/route", Some(Role::Reader)),
];

/// This domain's paths in the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(
    deploy_agent,
    list_agents,
    get_agent,
    agent_at_version,
    assign_model,
    configure_system_prompt,
    update_capabilities,
    grant_permissions,
    revoke_permissions,
    enable_tools,
    disable_tools,
    set_concurrency_limit,
    activate_agent,
    suspend_agent,
    mark_agent_offline,
    decommission_agent,
    send_message,
    submit_task,
    list_tasks,
    get_task,
    cancel_task,
    route_task,
))]
#[derive(Debug)]
pub struct Api;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AgentState>: FromRef<S>,
{
    let a = "/api/v1/agents/{agent_id}";
    Router::new()
        .route("/api/v1/agents", post(deploy_agent).get(list_agents))
        .route(a, get(get_agent))
        .route(&format!("{a}/as-of/{{version}}"), get(agent_at_version))
        .route(&format!("{a}/model"), put(assign_model))
        .route(&format!("{a}/system-prompt"), put(configure_system_prompt))
        .route(&format!("{a}/capabilities"), put(update_capabilities))
        .route(&format!("{a}/permissions/grant"), post(grant_permissions))
        .route(&format!("{a}/permissions/revoke"), post(revoke_permissions))
        .route(&format!("{a}/tools/enable"), post(enable_tools))
        .route(&format!("{a}/tools/disable"), post(disable_tools))
        .route(&format!("{a}/concurrency-limit"), put(set_concurrency_limit))
        .route(&format!("{a}/activate"), post(activate_agent))
        .route(&format!("{a}/suspend"), post(suspend_agent))
        .route(&format!("{a}/offline"), post(mark_agent_offline))
        .route(&format!("{a}/decommission"), post(decommission_agent))
        .route(CONVERSATION_ROUTE, post(send_message))
        .route("/api/v1/tasks", post(submit_task).get(list_tasks))
        // A literal segment wins over `{task_id}`: `route` is never read as a task id.
        .route("/api/v1/tasks/route", post(route_task))
        .route("/api/v1/tasks/{task_id}", get(get_task))
        .route("/api/v1/tasks/{task_id}/cancel", post(cancel_task))
}
