//! Tasks: submitting, cancelling and reading them, and the routing dry run. Agents receive and
//! finish tasks over their own gRPC stream (not REST), which a later version of the service adds.

use super::*;

/// Submit a task
///
/// Queues a task for an active agent whose capabilities cover `required_capabilities`. A required capability no agent of the tenant declares is refused (400 naming it): a typo would otherwise wait in the queue until its deadline. Needs the writer role.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = SubmitTask, params(CommandQuery),
    responses((status = 201, body = TaskCommandResult)))]
pub async fn submit_task(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<SubmitTask>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::SubmitTaskRequest {
        task_id: body.task_id.unwrap_or_default(),
        required_capabilities: body.required_capabilities,
        payload: structure(&body.payload),
        priority: body.priority,
        deadline: body.deadline.map(|d| crate::rest::timestamp("deadline", &d)).transpose()?,
        correlation: body.correlation,
        options,
    };
    Ok((StatusCode::CREATED, task_done(command!(state.upstream, p, submit_task, msg))))
}

/// Cancel a task
///
/// A queued or assigned task ends as cancelled. A finished task (completed, failed, cancelled, timed out) is refused (422). Needs the writer role.
#[utoipa::path(post, path = "/api/v1/tasks/{task_id}/cancel", tag = "tasks", request_body = CancelTask,
    params(("task_id" = String, Path), CommandQuery), responses((status = 200, body = TaskCommandResult)))]
pub async fn cancel_task(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(task_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<CancelTask>,
) -> ApiResult<Json<TaskCommandResult>> {
    let msg = pb::CancelTaskRequest { task_id, reason: body.reason, options };
    Ok(task_done(command!(state.upstream, p, cancel_task, msg)))
}

/// Get a task
///
/// The task's state, requirements, payload, holder and lease, attempts, and its result or error once finished.
#[utoipa::path(get, path = "/api/v1/tasks/{task_id}", tag = "tasks", params(("task_id" = String, Path)),
    responses((status = 200, body = Task)))]
pub async fn get_task(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(task_id): ApiPath<String>,
) -> ApiResult<Json<Task>> {
    Ok(Json(task(query!(state.upstream, p, get_task, pb::GetTaskRequest { task_id }))))
}

/// List tasks
///
/// The tenant's tasks, newest first, a page at a time; optionally those in one state.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(ListTasksQuery),
    responses((status = 200, body = Page<Task>)))]
pub async fn list_tasks(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListTasksQuery>,
) -> ApiResult<Json<Page<Task>>> {
    let msg = pb::ListTasksRequest { state: q.state.unwrap_or_default(), page: page(q.page_size, q.page_token) };
    let r = query!(state.upstream, p, list_tasks, msg);
    Ok(Page::of(r.tasks, task, r.page))
}

/// Where a task would go
///
/// A dry run of capability routing, changing nothing: among active agents with a free slot whose capabilities cover the requirements, the least over-provisioned, then the least loaded. Unknown capabilities are refused (400) as on submission.
#[utoipa::path(post, path = "/api/v1/tasks/route", tag = "tasks", request_body = RouteTask,
    responses((status = 200, body = RouteDecision)))]
pub async fn route_task(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<RouteTask>,
) -> ApiResult<Json<RouteDecision>> {
    let msg = pb::RouteTaskRequest { required_capabilities: body.required_capabilities };
    Ok(Json(route_decision(query!(state.upstream, p, route_task, msg))))
}
