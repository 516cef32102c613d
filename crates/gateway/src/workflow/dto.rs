//! The workflow routes' JSON: representations, requests, query parameters, and their
//! conversions from the gRPC messages.

use super::*;

/// What every workflow command returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowCommandResult {
    /// The definition's or the instance's id.
    pub id: String,
    /// Its version after the command (its number of events), for `expected_version`.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// True when an earlier command with the same Idempotency-Key already did this.
    pub replayed: bool,
    /// Definition commands: the content id (CIDv1) of the version written.
    pub content_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Definition {
    pub definition_id: String,
    pub name: String,
    /// The content id of the version shown.
    pub content_id: String,
    /// The definition document: `{name, description, steps: [...]}`.
    #[schema(value_type = Object)]
    pub definition: Props,
    /// Every version's content id, oldest first.
    pub versions: Vec<String>,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Step {
    pub step_id: String,
    /// manual, automated, decision, approval, integration, parallel, timer, agent_task, wait_event
    /// or workflow.
    pub kind: String,
    /// pending, running, completed, failed, skipped, cancelled or waiting_approval.
    pub status: String,
    pub depends_on: Vec<String>,
    pub attempts: u32,
    pub assignee: Option<String>,
    pub error: Option<String>,
    /// A timer's firing time, a retry's next attempt, or a running step's timeout.
    pub due_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Workflow {
    pub instance_id: String,
    pub definition_id: String,
    /// The definition version this instance runs (pinned when it started).
    pub content_id: String,
    pub name: String,
    /// draft, running, completed, failed, paused or cancelled.
    pub status: String,
    #[schema(value_type = Object)]
    pub context: Props,
    pub steps: Vec<Step>,
    /// Why a failed workflow failed.
    pub error: Option<String>,
    pub correlation_id: Option<String>,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowSummary {
    pub instance_id: String,
    pub definition_id: String,
    pub content_id: String,
    pub name: String,
    pub status: String,
    pub correlation_id: Option<String>,
    pub version: u64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// One event of an instance's hash-chained history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEvent {
    pub sequence: u64,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: Option<String>,
    pub actor: String,
    #[schema(value_type = Object)]
    pub payload: Props,
    pub hash: String,
    pub prev_hash: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowHistory {
    pub instance_id: String,
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDefinition {
    /// A UUIDv7; generated when absent.
    #[serde(default)]
    pub definition_id: Option<String>,
    /// `{name, description, steps: [{id, kind, depends_on, ...}]}`, validated by the service
    /// (cycles, unknown kinds, expressions that do not parse are refused naming the field).
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub definition: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub definition: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartWorkflow {
    /// A UUIDv7; generated when absent.
    #[serde(default)]
    pub instance_id: Option<String>,
    pub definition_id: String,
    /// The definition version to run; the current one when absent.
    #[serde(default)]
    pub content_id: Option<String>,
    /// The initial context (at most 256 KiB).
    #[serde(default, deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub context: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextValue {
    #[serde(deserialize_with = "crate::rest::exact_value")]
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    /// Kept in the context under `signals.<name>`.
    #[serde(default, deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub payload: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The person's actor, e.g. `user:alice`.
    pub assignee: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepOutput {
    /// Feeds the instance's context.
    #[serde(default, deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub output: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DefinitionQuery {
    /// A version's content id; the current version when absent.
    pub content_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListWorkflowsQuery {
    pub status: Option<String>,
    pub definition_id: Option<String>,
    pub correlation_id: Option<String>,
    /// RFC 3339: created at or after.
    pub created_after: Option<String>,
    /// RFC 3339: created before.
    pub created_before: Option<String>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

fn present(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

pub(super) fn done(r: pb::CommandResponse) -> Json<WorkflowCommandResult> {
    Json(WorkflowCommandResult {
        id: r.id,
        version: r.version,
        event_ids: r.event_ids,
        replayed: r.replayed,
        content_id: present(r.content_id),
    })
}

pub(super) fn definition(d: pb::Definition) -> Definition {
    Definition {
        definition_id: d.definition_id,
        name: d.name,
        content_id: d.content_id,
        definition: props(d.definition),
        versions: d.versions,
        version: d.version,
        created_at: ts(d.created_at),
        updated_at: ts(d.updated_at),
    }
}

fn step(s: pb::Step) -> Step {
    Step {
        step_id: s.step_id,
        kind: s.kind,
        status: s.status,
        depends_on: s.depends_on,
        attempts: s.attempts,
        assignee: present(s.assignee),
        error: present(s.error),
        due_at: ts(s.due_at),
    }
}

pub(super) fn workflow(w: pb::Workflow) -> Workflow {
    Workflow {
        instance_id: w.instance_id,
        definition_id: w.definition_id,
        content_id: w.content_id,
        name: w.name,
        status: w.status,
        context: props(w.context),
        steps: w.steps.into_iter().map(step).collect(),
        error: present(w.error),
        correlation_id: present(w.correlation_id),
        version: w.version,
        created_at: ts(w.created_at),
        updated_at: ts(w.updated_at),
    }
}

pub(super) fn summary(w: pb::WorkflowSummary) -> WorkflowSummary {
    WorkflowSummary {
        instance_id: w.instance_id,
        definition_id: w.definition_id,
        content_id: w.content_id,
        name: w.name,
        status: w.status,
        correlation_id: present(w.correlation_id),
        version: w.version,
        created_at: ts(w.created_at),
        updated_at: ts(w.updated_at),
    }
}

pub(super) fn history(h: pb::WorkflowHistory) -> WorkflowHistory {
    let event = |e: pb::HistoryEvent| HistoryEvent {
        sequence: e.sequence,
        event_id: e.event_id,
        event_type: e.event_type,
        occurred_at: ts(e.occurred_at),
        actor: e.actor,
        payload: props(e.payload),
        hash: e.hash,
        prev_hash: e.prev_hash,
    };
    WorkflowHistory { instance_id: h.instance_id, events: h.events.into_iter().map(event).collect() }
}
