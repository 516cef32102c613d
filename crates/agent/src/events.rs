//! The agent domain's events, listed once per aggregate (`cim_core::domain_events!`): the agent's
//! registry and conversations, and the task's life from submission to its one outcome. Names
//! follow the reference CIM's vocabulary.
//!
//! Tasks are shaped for the dispatcher that pushes them to connected agents: an assignment names
//! the holder and how long its lease runs, every later fact about a held task names the holder
//! it concerns, so a projection (or a stream consumer) can keep each agent's load without
//! reading the task's history.

use chrono::{DateTime, Utc};
use cim_core::AggregateId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::agent::{AgentState, AgentType, FinishReason, ModelConfiguration, ResponseErrorType, TokenUsage};
use crate::names::Names;
use crate::task::TaskResult;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentDeployed {
    /// Who answers for the agent: `user:<sub>`, `org:<id>`, ... (the deploying actor by default).
    pub owner: String,
    pub name: String,
    pub agent_type: AgentType,
    /// How many tasks the agent holds at once.
    pub max_concurrent_tasks: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfigurationAssigned {
    #[serde(flatten)]
    pub model: ModelConfiguration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemPromptConfigured {
    pub prompt: String,
}

/// The whole set after the update: what routing matches against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesUpdated {
    pub capabilities: Names,
}

/// Only the permissions this grant or revocation changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionsChanged {
    pub permissions: Names,
}

/// Only the tools this change enabled or disabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsChanged {
    pub tools: Names,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConcurrencyLimitSet {
    pub max_concurrent_tasks: u32,
}

/// A lifecycle step; the new state is the event's type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTransition {
    pub previous_state: AgentState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageSent {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub content: String,
}

/// A whole response; the chunks it streamed in are not events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseCompleted {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub content: String,
    pub token_usage: TokenUsage,
    pub finish_reason: FinishReason,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFailed {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub error_type: ResponseErrorType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Whether sending the message again may succeed.
    pub recoverable: bool,
}

cim_core::domain_events! {
    pub enum AgentEvent {
        Deployed(AgentDeployed) = "agent_deployed",
        ModelConfigurationAssigned(ModelConfigurationAssigned) = "model_configuration_assigned",
        SystemPromptConfigured(SystemPromptConfigured) = "system_prompt_configured",
        CapabilitiesUpdated(CapabilitiesUpdated) = "capabilities_updated",
        PermissionsGranted(PermissionsChanged) = "permissions_granted",
        PermissionsRevoked(PermissionsChanged) = "permissions_revoked",
        ToolsEnabled(ToolsChanged) = "tools_enabled",
        ToolsDisabled(ToolsChanged) = "tools_disabled",
        ConcurrencyLimitSet(ConcurrencyLimitSet) = "concurrency_limit_set",
        Activated(AgentTransition) = "agent_activated",
        Suspended(AgentTransition) = "agent_suspended",
        WentOffline(AgentTransition) = "agent_went_offline",
        Decommissioned(AgentTransition) = "agent_decommissioned",
        MessageSent(MessageSent) = "message_sent",
        ResponseCompleted(ResponseCompleted) = "response_completed",
        ResponseFailed(ResponseFailed) = "response_failed",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSubmitted {
    /// Empty: any active agent may take it.
    pub required_capabilities: Names,
    pub payload: Map<String, Value>,
    /// Higher runs first; equal priorities run oldest first.
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// The submitter's reference (a workflow instance and step, ...), echoed with the outcome.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub correlation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssigned {
    pub agent: AggregateId,
    pub lease_until: DateTime<Utc>,
    /// 1 for the first assignment; reassignments count on.
    pub attempt: u32,
}

/// A heartbeat from the holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskLeaseExtended {
    pub agent: AggregateId,
    pub lease_until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCompleted {
    pub agent: AggregateId,
    #[serde(flatten)]
    pub result: TaskResult,
}

/// Final: a retryable failure tells the submitter (a workflow's retry policy) that submitting
/// again may succeed; the task itself does not run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub agent: AggregateId,
    pub error: String,
    pub retryable: bool,
}

/// The holder's lease lapsed: the task goes to `to`, or back to the queue when `to` is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReassigned {
    pub from: AggregateId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<AggregateId>,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
}

/// `holder` is the agent to tell (over its stream) that its work is void.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCancelled {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<AggregateId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTimedOut {
    pub deadline: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<AggregateId>,
}

cim_core::domain_events! {
    pub enum TaskEvent {
        Submitted(TaskSubmitted) = "task_submitted",
        Assigned(TaskAssigned) = "task_assigned",
        LeaseExtended(TaskLeaseExtended) = "task_lease_extended",
        Completed(TaskCompleted) = "task_completed",
        Failed(TaskFailed) = "task_failed",
        Reassigned(TaskReassigned) = "task_reassigned",
        Cancelled(TaskCancelled) = "task_cancelled",
        TimedOut(TaskTimedOut) = "task_timed_out",
    }
}
