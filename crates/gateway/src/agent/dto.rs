//! The agent and task routes' JSON: representations, requests, query parameters, and their
//! conversions from the gRPC messages. Names of capabilities, permissions and tools are checked
//! by the service (dotted snake_case); a bad one is a 400 naming the list entry.

use super::*;

/// A model as an AI agent is configured with it (request and representation alike).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfiguration {
    /// A provider name: `openai`, `anthropic`, `ollama`, ...
    pub provider: String,
    /// The provider's model name, e.g. `llama3:8b`.
    pub model: String,
    /// Provider settings (temperature, max_tokens, ...): at most 16 KiB, 8 levels deep.
    #[serde(default, deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub parameters: Props,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Agent {
    pub agent_id: String,
    pub name: String,
    /// human, ai, system or external.
    pub agent_type: String,
    pub owner: String,
    /// deployed, active, suspended, offline or decommissioned.
    pub state: String,
    pub capabilities: Vec<String>,
    pub permissions: Vec<String>,
    pub tools: Vec<String>,
    /// Absent until assigned (AI agents only).
    pub model: Option<ModelConfiguration>,
    pub system_prompt: String,
    pub max_concurrent_tasks: u32,
    /// Tasks the agent holds now (0 in a past version: tasks are their own aggregates).
    pub running_tasks: u32,
    /// The agent's version (its number of events), for `expected_version`.
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Task {
    pub task_id: String,
    /// queued, assigned, completed, failed, cancelled or timed_out.
    pub state: String,
    pub required_capabilities: Vec<String>,
    #[schema(value_type = Object)]
    pub payload: Props,
    pub priority: u32,
    pub deadline: Option<String>,
    pub correlation: String,
    /// The agent holding the task (or, once finished, the last one that held it).
    pub holder: Option<String>,
    pub lease_until: Option<String>,
    /// How many times the task was given to an agent.
    pub attempts: u32,
    /// Set when completed with a JSON result.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Props>,
    /// Set when completed with a document holding the result: its content id.
    pub result_cid: Option<String>,
    /// Set when failed.
    pub error: Option<String>,
    pub retryable: bool,
    /// The task's version (its number of events), for `expected_version`.
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// What every agent command returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentCommandResult {
    pub agent_id: String,
    /// The agent's version after the command.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// True when an earlier command with the same Idempotency-Key already did this.
    pub replayed: bool,
}

/// What every task command returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskCommandResult {
    pub task_id: String,
    /// The task's version after the command.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// True when an earlier command with the same Idempotency-Key already did this.
    pub replayed: bool,
}

/// Where a task with these requirements would go now.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteDecision {
    /// Absent when no agent can take the task now.
    pub agent_id: Option<String>,
    /// The chosen agent's capabilities beyond the required ones.
    pub extra_capabilities: u32,
    /// The chosen agent's load: tasks held and its limit.
    pub running_tasks: u32,
    pub max_concurrent_tasks: u32,
    /// Active agents covering the requirements, with or without a free slot.
    pub covering_agents: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployAgent {
    /// A UUIDv7; generated when absent.
    #[serde(default)]
    pub agent_id: Option<String>,
    pub name: String,
    /// human, ai, system or external.
    pub agent_type: String,
    /// Who answers for the agent (`user:<sub>`, `org:<id>`, ...); absent: the caller.
    #[serde(default)]
    pub owner: String,
    /// Tasks the agent holds at once, 1 to 1000 (default 1).
    #[serde(default)]
    pub max_concurrent_tasks: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemPrompt {
    /// At most 64 KiB.
    pub system_prompt: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// The whole set (it replaces the current one), at most 64 names.
    pub capabilities: Vec<String>,
}

/// Permissions to grant or revoke, or tools to enable or disable.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Names {
    pub names: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// 1 to 1000.
    pub max_concurrent_tasks: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    /// A UUIDv7; generated when absent.
    #[serde(default)]
    pub task_id: Option<String>,
    /// At most 32 names, each declared by some agent of the tenant; empty: any active agent.
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    /// What the agent works on: at most 256 KiB, 32 levels deep.
    #[serde(default, deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub payload: Props,
    /// 0 to 1000; higher runs first, equal priorities oldest first.
    #[serde(default)]
    pub priority: u32,
    /// RFC 3339, in the future: the task times out then.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The submitter's own reference (a workflow instance and step, ...), at most 200 bytes.
    #[serde(default)]
    pub correlation: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelTask {
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTask {
    #[serde(default)]
    pub required_capabilities: Vec<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAgentsQuery {
    /// deployed, active, suspended, offline or decommissioned.
    pub state: Option<String>,
    /// Comma-separated: agents holding every one of them.
    pub capabilities: Option<String>,
    /// 1 to 500 (default 50).
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// queued, assigned, completed, failed, cancelled or timed_out.
    pub state: Option<String>,
    /// 1 to 500 (default 50).
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

/// Empty strings of the proto (an absent value) as absent JSON fields.
fn present(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(super) fn model(m: pb::ModelConfiguration) -> ModelConfiguration {
    ModelConfiguration { provider: m.provider, model: m.model, parameters: props(m.parameters) }
}

pub(super) fn agent(a: pb::Agent) -> Agent {
    Agent {
        agent_id: a.agent_id,
        name: a.name,
        agent_type: a.agent_type,
        owner: a.owner,
        state: a.state,
        capabilities: a.capabilities,
        permissions: a.permissions,
        tools: a.tools,
        model: a.model.map(model),
        system_prompt: a.system_prompt,
        max_concurrent_tasks: a.max_concurrent_tasks,
        running_tasks: a.running_tasks,
        version: a.version,
        created_at: ts(a.created_at),
        updated_at: ts(a.updated_at),
    }
}

pub(super) fn task(t: pb::Task) -> Task {
    let (result, result_cid) = match t.result {
        Some(pb::task::Result::ResultValue(v)) => (Some(props(Some(v))), None),
        Some(pb::task::Result::ResultCid(cid)) => (None, present(cid)),
        None => (None, None),
    };
    Task {
        task_id: t.task_id,
        state: t.state,
        required_capabilities: t.required_capabilities,
        payload: props(t.payload),
        priority: t.priority,
        deadline: ts(t.deadline),
        correlation: t.correlation,
        holder: present(t.holder),
        lease_until: ts(t.lease_until),
        attempts: t.attempts,
        result,
        result_cid,
        error: present(t.error),
        retryable: t.retryable,
        version: t.version,
        created_at: ts(t.created_at),
        updated_at: ts(t.updated_at),
    }
}

pub(super) fn route_decision(r: pb::RouteTaskResponse) -> RouteDecision {
    RouteDecision {
        agent_id: present(r.agent_id),
        extra_capabilities: r.extra_capabilities,
        running_tasks: r.running_tasks,
        max_concurrent_tasks: r.max_concurrent_tasks,
        covering_agents: r.covering_agents,
    }
}

pub(super) fn agent_done(r: pb::CommandResponse) -> Json<AgentCommandResult> {
    Json(AgentCommandResult { agent_id: r.id, version: r.version, event_ids: r.event_ids, replayed: r.replayed })
}

pub(super) fn task_done(r: pb::CommandResponse) -> Json<TaskCommandResult> {
    Json(TaskCommandResult { task_id: r.id, version: r.version, event_ids: r.event_ids, replayed: r.replayed })
}

/// A comma-separated query list, blanks dropped.
pub(super) fn list(s: Option<String>) -> Vec<String> {
    s.map(|l| l.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()).unwrap_or_default()
}
