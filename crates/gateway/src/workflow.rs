//! `/api/v1/workflow-definitions/...` and `/api/v1/workflows/...`: every unary RPC of
//! `cim.workflow.v1` as a REST route, at its `google.api.http` path and verb. [`dto`]: the JSON;
//! [`definitions`]: creating, revising and reading definitions; [`instances`]: starting, steering
//! and reading instances, and the people's part of their steps. This file: the routes' state and
//! the route table.

mod definitions;
mod dto;
mod instances;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, FromRef, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cim_auth::Principal;
use cim_proto::workflow as pb;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
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
use definitions::*;
pub use dto::*;
use instances::*;

#[derive(Debug)]
pub struct WorkflowState {
    pub upstream: Upstream<WorkflowServiceClient<Channel>>,
}

/// The workflow routes: the role each needs, its handler (whose annotation gives method and
/// path). Approving, rejecting and completing a step need only the writer role here: the step
/// itself says who may act on it (its role or its assignee), which the service checks.
pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<WorkflowState>: FromRef<S>,
{
    DomainRoutes::new(purpose)
        .writer(routes!(create_definition))
        .writer(routes!(revise_definition))
        .reader(routes!(get_definition))
        .reader(routes!(list_definitions))
        .writer(routes!(start_workflow))
        .writer(routes!(pause_workflow))
        .writer(routes!(resume_workflow))
        .writer(routes!(cancel_workflow))
        .writer(routes!(set_context_variable))
        .writer(routes!(send_signal))
        .writer(routes!(assign_task))
        .writer(routes!(complete_step))
        .writer(routes!(approve_step))
        .writer(routes!(reject_step))
        .reader(routes!(get_workflow))
        .reader(routes!(list_workflows))
        .reader(routes!(workflow_history))
        .reader(routes!(workflow_at_version))
}
