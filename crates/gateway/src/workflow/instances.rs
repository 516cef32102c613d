//! Workflow instances: starting and steering them, the people's part of their steps (assign,
//! complete, approve, reject), and reading them (now, their history, as of a version).

use super::*;

/// Start a workflow
///
/// Starts an instance of a definition's current version (or the one `content_id` names), pinned to that version, with an initial context.
#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows", request_body = StartWorkflow, params(CommandQuery),
    responses((status = 201, body = WorkflowCommandResult)))]
pub async fn start_workflow(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<StartWorkflow>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::StartWorkflowRequest {
        instance_id: body.instance_id.unwrap_or_default(),
        definition_id: body.definition_id,
        content_id: body.content_id.unwrap_or_default(),
        context: structure(&body.context),
        options,
    };
    Ok((StatusCode::CREATED, done(command!(state.upstream, p, start_workflow, msg))))
}

/// Pause a workflow
///
/// A running workflow starts no further steps until it is resumed; timers that come due wait for it.
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/pause", tag = "workflows", request_body = StateChange,
    params(("instance_id" = String, Path), CommandQuery), responses((status = 200, body = WorkflowCommandResult)))]
pub async fn pause_workflow(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(instance_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::WorkflowCommand { instance_id, reason: body.reason, options };
    Ok(done(command!(state.upstream, p, pause_workflow, msg)))
}

/// Resume a workflow
///
/// A paused workflow runs again from where it stopped.
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/resume", tag = "workflows", request_body = StateChange,
    params(("instance_id" = String, Path), CommandQuery), responses((status = 200, body = WorkflowCommandResult)))]
pub async fn resume_workflow(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(instance_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::WorkflowCommand { instance_id, reason: body.reason, options };
    Ok(done(command!(state.upstream, p, resume_workflow, msg)))
}

/// Cancel a workflow
///
/// Ends a running or paused workflow for good; its pending steps are cancelled.
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/cancel", tag = "workflows", request_body = StateChange,
    params(("instance_id" = String, Path), CommandQuery), responses((status = 200, body = WorkflowCommandResult)))]
pub async fn cancel_workflow(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(instance_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::WorkflowCommand { instance_id, reason: body.reason, options };
    Ok(done(command!(state.upstream, p, cancel_workflow, msg)))
}

/// Set a context variable
///
/// Sets one top-level key of the instance's context to a JSON value; decisions and later steps read it.
#[utoipa::path(put, path = "/api/v1/workflows/{instance_id}/context/{key}", tag = "workflows", request_body = ContextValue,
    params(("instance_id" = String, Path), ("key" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn set_context_variable(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, key)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<ContextValue>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let value = Some(cim_proto::json::json_to_value(&body.value));
    let msg = pb::SetContextVariableRequest { instance_id, key, value, options };
    Ok(done(command!(state.upstream, p, set_context_variable, msg)))
}

/// Send a signal
///
/// Records a named signal with its payload in the instance's context (under `signals.<name>`).
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/signals/{name}", tag = "workflows", request_body = Signal,
    params(("instance_id" = String, Path), ("name" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn send_signal(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, name)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<Signal>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::SendSignalRequest { instance_id, name, payload: structure(&body.payload), options };
    Ok(done(command!(state.upstream, p, send_signal, msg)))
}

/// Assign a step to a person
///
/// Only manual and approval steps are assigned to people; the assignee may then act on the step whatever their roles.
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/steps/{step_id}/assign", tag = "workflow steps",
    request_body = Assignment, params(("instance_id" = String, Path), ("step_id" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn assign_task(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, step_id)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<Assignment>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::AssignTaskRequest { instance_id, step_id, assignee: body.assignee, options };
    Ok(done(command!(state.upstream, p, assign_task, msg)))
}

/// Complete a manual step
///
/// A running manual step is done; its output feeds the instance's context. Only its assignee or a holder of its role may complete it (403).
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/steps/{step_id}/complete", tag = "workflow steps",
    request_body = StepOutput, params(("instance_id" = String, Path), ("step_id" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn complete_step(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, step_id)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<StepOutput>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::CompleteStepRequest { instance_id, step_id, output: structure(&body.output), options };
    Ok(done(command!(state.upstream, p, complete_step, msg)))
}

/// Approve a step
///
/// A step waiting for approval is approved and the workflow goes on. Only its assignee or a holder of its role may decide (403).
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/steps/{step_id}/approve", tag = "workflow steps",
    request_body = ApprovalDecision, params(("instance_id" = String, Path), ("step_id" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn approve_step(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, step_id)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<ApprovalDecision>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::ApprovalDecision { instance_id, step_id, comment: body.comment, options };
    Ok(done(command!(state.upstream, p, approve_step, msg)))
}

/// Reject a step
///
/// A step waiting for approval is rejected, which fails the workflow. Only its assignee or a holder of its role may decide (403).
#[utoipa::path(post, path = "/api/v1/workflows/{instance_id}/steps/{step_id}/reject", tag = "workflow steps",
    request_body = ApprovalDecision, params(("instance_id" = String, Path), ("step_id" = String, Path), CommandQuery),
    responses((status = 200, body = WorkflowCommandResult)))]
pub async fn reject_step(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, step_id)): ApiPath<(String, String)>,
    Options(options): Options,
    ApiJson(body): ApiJson<ApprovalDecision>,
) -> ApiResult<Json<WorkflowCommandResult>> {
    let msg = pb::ApprovalDecision { instance_id, step_id, comment: body.comment, options };
    Ok(done(command!(state.upstream, p, reject_step, msg)))
}

/// Get a workflow
///
/// The instance's status, context and every step with its status, attempts, assignee and due time.
#[utoipa::path(get, path = "/api/v1/workflows/{instance_id}", tag = "workflows", params(("instance_id" = String, Path)),
    responses((status = 200, body = Workflow)))]
pub async fn get_workflow(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(instance_id): ApiPath<String>,
) -> ApiResult<Json<Workflow>> {
    Ok(Json(workflow(query!(state.upstream, p, get_workflow, pb::GetWorkflowRequest { instance_id }))))
}

/// List workflows
///
/// The tenant's instances, newest first, a page at a time; optionally of one status, definition or correlation id, or created in a time range.
#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows", params(ListWorkflowsQuery),
    responses((status = 200, body = Page<WorkflowSummary>)))]
pub async fn list_workflows(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListWorkflowsQuery>,
) -> ApiResult<Json<Page<WorkflowSummary>>> {
    let instant = |field: &str, s: Option<String>| s.map(|s| crate::rest::timestamp(field, &s)).transpose();
    let msg = pb::ListWorkflowsRequest {
        status: q.status.unwrap_or_default(),
        definition_id: q.definition_id.unwrap_or_default(),
        correlation_id: q.correlation_id.unwrap_or_default(),
        created_after: instant("created_after", q.created_after)?,
        created_before: instant("created_before", q.created_before)?,
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state.upstream, p, list_workflows, msg);
    Ok(Page::of(r.workflows, summary, r.page))
}

/// A workflow's history
///
/// Every event of the instance in order, each with its hash and the hash before it (the chain the store verifies).
#[utoipa::path(get, path = "/api/v1/workflows/{instance_id}/history", tag = "workflows",
    params(("instance_id" = String, Path)), responses((status = 200, body = WorkflowHistory)))]
pub async fn workflow_history(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath(instance_id): ApiPath<String>,
) -> ApiResult<Json<WorkflowHistory>> {
    let msg = pb::GetWorkflowHistoryRequest { instance_id };
    Ok(Json(history(query!(state.upstream, p, get_workflow_history, msg))))
}

/// The workflow at a past version
///
/// The instance as it was after its first `version` events, folded from its verified history.
#[utoipa::path(get, path = "/api/v1/workflows/{instance_id}/as-of/{version}", tag = "workflows",
    params(("instance_id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Workflow)))]
pub async fn workflow_at_version(
    State(state): State<Arc<WorkflowState>>,
    Extension(p): Extension<Principal>,
    ApiPath((instance_id, version)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Workflow>> {
    let msg = pb::GetWorkflowAtVersionRequest { instance_id, version };
    Ok(Json(workflow(query!(state.upstream, p, get_workflow_at_version, msg))))
}
