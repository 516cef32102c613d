//! The workflow domain's events, listed once per aggregate (`cim_core::domain_events!`): a
//! definition's versions, and an instance's life in the reference CIM's vocabulary plus what
//! durability needs (timers, scheduled retries, signals). Every step event names its step, so
//! the history reads as the step's story without the definition beside it.

use chrono::{DateTime, Utc};
use cim_core::AggregateId;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::Definition;

/// A definition's first version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionCreated {
    pub content_id: String,
    pub definition: Definition,
}

/// A later version; earlier ones stay readable by their content id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionRevised {
    pub content_id: String,
    pub definition: Definition,
}

cim_core::domain_events! {
    pub enum DefinitionEvent {
        Created(DefinitionCreated) = "workflow_definition_created",
        Revised(DefinitionRevised) = "workflow_definition_revised",
    }
}

/// The instance with its own copy of the definition version it runs: a later version never
/// changes a running instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowCreated {
    pub definition_id: AggregateId,
    pub content_id: String,
    pub definition: Definition,
    #[serde(default)]
    pub context: Map<String, Value>,
}

/// A lifecycle step with nothing more to say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowTransition {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowFailed {
    /// The step whose failure ended the workflow.
    pub step: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextVariableSet {
    pub key: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepExecutionStarted {
    pub step: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the attempt started (the engine's clock as it decided); absent in events written
    /// before it was recorded. The step duration metric counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the attempt times out (the step's timeout_ms after it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// What the engine sends for this attempt, computed from the context as it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outreach: Option<Outreach>,
    /// The event the attempt waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
}

/// What a step that reaches out sends. Ids are derived from the instance, step and attempt, so
/// sending again after a crash names the same task or child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outreach {
    /// integration: a method of another service.
    Call { service: String, method: String, request: Map<String, Value> },
    /// agent_task: a task for the agent service.
    Task { task_id: AggregateId, capabilities: Vec<String>, payload: Map<String, Value>, priority: u32 },
    /// workflow: a child instance of a definition's current version.
    Child { instance_id: AggregateId, definition_id: AggregateId, context: Map<String, Value> },
}

/// The events of one domain a waiting step takes: the subject filter (without the
/// deployment's prefix), one aggregate if named, and a CEL condition over `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<AggregateId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// The agent service accepted the step's task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTaskSubmitted {
    pub step: String,
    pub attempt: u32,
    pub task_id: AggregateId,
}

/// The step's child instance exists and runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildWorkflowStarted {
    pub step: String,
    pub attempt: u32,
    pub instance_id: AggregateId,
}

/// The output is merged into the instance context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepExecutionCompleted {
    pub step: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub output: Map<String, Value>,
    /// The person who completed a manual step.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepExecutionFailed {
    pub step: String,
    pub attempt: u32,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSkipped {
    pub step: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepApprovalRequested {
    pub step: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepApprovalDecided {
    pub step: String,
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssigned {
    pub step: String,
    pub assignee: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerScheduled {
    pub step: String,
    pub fire_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerFired {
    pub step: String,
    pub fire_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryScheduled {
    pub step: String,
    /// The attempt that will run.
    pub attempt: u32,
    pub next_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalReceived {
    pub name: String,
    #[serde(default)]
    pub payload: Map<String, Value>,
}

cim_core::domain_events! {
    pub enum WorkflowEvent {
        Created(WorkflowCreated) = "workflow_created",
        Started(WorkflowTransition) = "workflow_started",
        Completed(WorkflowTransition) = "workflow_completed",
        Failed(WorkflowFailed) = "workflow_failed",
        Paused(WorkflowTransition) = "workflow_paused",
        Resumed(WorkflowTransition) = "workflow_resumed",
        Cancelled(WorkflowTransition) = "workflow_cancelled",
        ContextVariableSet(ContextVariableSet) = "workflow_context_variable_set",
        StepStarted(StepExecutionStarted) = "step_execution_started",
        StepCompleted(StepExecutionCompleted) = "step_execution_completed",
        StepFailed(StepExecutionFailed) = "step_execution_failed",
        StepSkipped(StepSkipped) = "step_skipped",
        ApprovalRequested(StepApprovalRequested) = "step_approval_requested",
        ApprovalGranted(StepApprovalDecided) = "step_approval_granted",
        ApprovalRejected(StepApprovalDecided) = "step_approval_rejected",
        TaskAssigned(TaskAssigned) = "task_assigned",
        TimerScheduled(TimerScheduled) = "timer_scheduled",
        TimerFired(TimerFired) = "timer_fired",
        RetryScheduled(RetryScheduled) = "retry_scheduled",
        SignalReceived(SignalReceived) = "signal_received",
        AgentTaskSubmitted(AgentTaskSubmitted) = "agent_task_submitted",
        ChildWorkflowStarted(ChildWorkflowStarted) = "child_workflow_started",
    }
}
