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
use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use cim_auth::Principal;
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::problem::ApiResult;
use crate::rest::{
    CommandQuery, Options, Page, Props, StateChange, command, exact_properties, page, props, query, structure, ts,
};
use crate::routes::{DomainRoutes, Purpose, routes};
use crate::upstream::Upstream;
use cim_proto::common::CommandOptions;
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
/// The agent routes: the role each needs, its handler (whose annotation gives method and path).
pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AgentState>: FromRef<S>,
{
    DomainRoutes::new(purpose)
        .writer(routes!(deploy_agent))
        .reader(routes!(list_agents))
        .reader(routes!(get_agent))
        .reader(routes!(agent_at_version))
        .writer(routes!(assign_model))
        .writer(routes!(configure_system_prompt))
        .writer(routes!(update_capabilities))
        .admin(routes!(grant_permissions))
        .admin(routes!(revoke_permissions))
        .writer(routes!(enable_tools))
        .writer(routes!(disable_tools))
        .writer(routes!(set_concurrency_limit))
        .writer(routes!(activate_agent))
        .writer(routes!(suspend_agent))
        .writer(routes!(mark_agent_offline))
        .admin(routes!(decommission_agent))
        .writer(routes!(send_message))
        .writer(routes!(submit_task))
        .reader(routes!(list_tasks))
        .reader(routes!(get_task))
        .writer(routes!(cancel_task))
        // Routing answers which agent would take a task: a read, with a body.
        .reader(routes!(route_task))
}
