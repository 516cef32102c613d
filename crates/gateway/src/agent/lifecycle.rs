//! The agent's lifecycle: deployed → active; active → suspended | offline; suspended | offline →
//! active; offline → suspended; any → decommissioned (final). Another transition is a 422 naming
//! both states.

use super::*;

/// A lifecycle command: the agent, the reason recorded with the event, the options.
fn lifecycle(agent_id: String, reason: String, options: Option<CommandOptions>) -> pb::AgentCommand {
    pb::AgentCommand { agent_id, reason, options }
}

/// Activate an agent
///
/// From deployed, suspended or offline: the agent is given tasks again. An AI agent without a model configuration is refused (422).
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/activate", tag = "agent lifecycle",
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn activate_agent(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = lifecycle(agent_id, String::new(), options);
    Ok(agent_done(command!(state.upstream, p, activate_agent, msg)))
}

/// Suspend an agent
///
/// An active or offline agent stops being given tasks until it is activated again.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/suspend", tag = "agent lifecycle", request_body = StateChange,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn suspend_agent(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = lifecycle(agent_id, body.reason, options);
    Ok(agent_done(command!(state.upstream, p, suspend_agent, msg)))
}

/// Mark an agent offline
///
/// An active agent that cannot be reached; it is given no tasks until it is activated again.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/offline", tag = "agent lifecycle", request_body = StateChange,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn mark_agent_offline(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = lifecycle(agent_id, body.reason, options);
    Ok(agent_done(command!(state.upstream, p, mark_agent_offline, msg)))
}

/// Decommission an agent
///
/// Final: every later command on the agent is refused (422). Needs the admin role, since it cannot be undone.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/decommission", tag = "agent lifecycle",
    request_body = StateChange, params(("agent_id" = String, Path), CommandQuery),
    responses((status = 200, body = AgentCommandResult)))]
pub async fn decommission_agent(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    OptionalJson(body): OptionalJson<StateChange>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = lifecycle(agent_id, body.reason, options);
    Ok(agent_done(command!(state.upstream, p, decommission_agent, msg)))
}
