//! The registry: deploying agents, reading them, and configuring what they are (model, prompt,
//! capabilities, permissions, tools, concurrency limit).

use super::*;

/// Deploy an agent
///
/// Registers an agent (human, ai, system or external) in the caller's tenant, in state `deployed`: it gets no tasks until activated. Needs the writer role.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", request_body = DeployAgent, params(CommandQuery),
    responses((status = 201, body = AgentCommandResult)))]
pub async fn deploy_agent(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<DeployAgent>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::DeployAgentRequest {
        agent_id: body.agent_id.unwrap_or_default(),
        name: body.name,
        agent_type: body.agent_type,
        owner: body.owner,
        max_concurrent_tasks: body.max_concurrent_tasks,
        options,
    };
    Ok((StatusCode::CREATED, agent_done(command!(state.upstream, p, deploy_agent, msg))))
}

/// List agents
///
/// The tenant's agents, newest first, a page at a time; optionally those in one state, or holding every one of some capabilities.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", params(ListAgentsQuery),
    responses((status = 200, body = Page<Agent>)))]
pub async fn list_agents(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ListAgentsQuery>,
) -> ApiResult<Json<Page<Agent>>> {
    let msg = pb::ListAgentsRequest {
        state: q.state.unwrap_or_default(),
        capabilities: list(q.capabilities),
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state.upstream, p, list_agents, msg);
    Ok(Page::of(r.agents, agent, r.page))
}

/// Get an agent
///
/// The agent's type, state, capabilities, permissions, tools, model, prompt and load.
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}", tag = "agents", params(("agent_id" = String, Path)),
    responses((status = 200, body = Agent)))]
pub async fn get_agent(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(agent(query!(state.upstream, p, get_agent, pb::GetAgentRequest { agent_id }))))
}

/// The agent at a past version
///
/// The agent as it was after its first `version` events, folded from its verified history (its load is not part of it: 0).
#[utoipa::path(get, path = "/api/v1/agents/{agent_id}/as-of/{version}", tag = "agents",
    params(("agent_id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Agent)))]
pub async fn agent_at_version(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath((agent_id, version)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Agent>> {
    let msg = pb::GetAgentAtVersionRequest { agent_id, version };
    Ok(Json(agent(query!(state.upstream, p, get_agent_at_version, msg))))
}

/// Assign a model configuration
///
/// The model an AI agent answers with (provider, model, parameters); an AI agent activates only with one. Other agent types are refused (422).
#[utoipa::path(put, path = "/api/v1/agents/{agent_id}/model", tag = "agents", request_body = ModelConfiguration,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn assign_model(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<ModelConfiguration>,
) -> ApiResult<Json<AgentCommandResult>> {
    let model =
        pb::ModelConfiguration { provider: body.provider, model: body.model, parameters: structure(&body.parameters) };
    let msg = pb::AssignModelConfigurationRequest { agent_id, model: Some(model), options };
    Ok(agent_done(command!(state.upstream, p, assign_model_configuration, msg)))
}

/// Configure the system prompt
///
/// The instructions an AI agent starts every conversation with (at most 64 KiB). Other agent types are refused (422).
#[utoipa::path(put, path = "/api/v1/agents/{agent_id}/system-prompt", tag = "agents", request_body = SystemPrompt,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn configure_system_prompt(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<SystemPrompt>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = pb::ConfigureSystemPromptRequest { agent_id, system_prompt: body.system_prompt, options };
    Ok(agent_done(command!(state.upstream, p, configure_system_prompt, msg)))
}

/// Replace the capabilities
///
/// The whole set of capabilities the agent declares (dotted snake_case names such as `code_review`); tasks are routed by them.
#[utoipa::path(put, path = "/api/v1/agents/{agent_id}/capabilities", tag = "agents", request_body = Capabilities,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn update_capabilities(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Capabilities>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = pb::UpdateCapabilitiesRequest { agent_id, capabilities: body.capabilities, options };
    Ok(agent_done(command!(state.upstream, p, update_capabilities, msg)))
}

/// The four routes that add or remove names from one of the agent's sets.
fn names_request(agent_id: String, options: Option<CommandOptions>, body: Names) -> pb::NamesRequest {
    pb::NamesRequest { agent_id, names: body.names, options }
}

/// Grant permissions
///
/// Adds to what the agent may access (`documents.read`, ...); granting only what it holds already is refused (422). Needs the admin role: permissions are the agent's security boundary.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/permissions/grant", tag = "agents", request_body = Names,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn grant_permissions(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Names>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = names_request(agent_id, options, body);
    Ok(agent_done(command!(state.upstream, p, grant_permissions, msg)))
}

/// Revoke permissions
///
/// Removes permissions the agent holds. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/permissions/revoke", tag = "agents", request_body = Names,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn revoke_permissions(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Names>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = names_request(agent_id, options, body);
    Ok(agent_done(command!(state.upstream, p, revoke_permissions, msg)))
}

/// Enable tools
///
/// Adds tools the agent may call (`web_search`, ...).
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/tools/enable", tag = "agents", request_body = Names,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn enable_tools(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Names>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = names_request(agent_id, options, body);
    Ok(agent_done(command!(state.upstream, p, enable_tools, msg)))
}

/// Disable tools
///
/// Removes tools the agent may call.
#[utoipa::path(post, path = "/api/v1/agents/{agent_id}/tools/disable", tag = "agents", request_body = Names,
    params(("agent_id" = String, Path), CommandQuery), responses((status = 200, body = AgentCommandResult)))]
pub async fn disable_tools(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Names>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = names_request(agent_id, options, body);
    Ok(agent_done(command!(state.upstream, p, disable_tools, msg)))
}

/// Set the concurrency limit
///
/// How many tasks the agent holds at once (1 to 1000); only an agent with a free slot is given a task.
#[utoipa::path(put, path = "/api/v1/agents/{agent_id}/concurrency-limit", tag = "agents",
    request_body = ConcurrencyLimit, params(("agent_id" = String, Path), CommandQuery),
    responses((status = 200, body = AgentCommandResult)))]
pub async fn set_concurrency_limit(
    State(state): State<Arc<AgentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(agent_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<ConcurrencyLimit>,
) -> ApiResult<Json<AgentCommandResult>> {
    let msg = pb::SetConcurrencyLimitRequest { agent_id, max_concurrent_tasks: body.max_concurrent_tasks, options };
    Ok(agent_done(command!(state.upstream, p, set_concurrency_limit, msg)))
}
