//! Steps that reach outside the instance (`integration`, `agent_task`, `workflow`) and steps
//! that wait for an event (`wait_event`, and the first two while their work runs elsewhere).
//!
//! The rules stay pure: starting such a step records what it will send ([`Outreach`], computed
//! from the context at that moment) and what it waits for ([`Wait`]); the engine sends it and
//! reports back with [`Reach`]; the event consumer hands a matching event in with `Deliver`.
//! Both are accepted only for the attempt they name while it runs, so a report or an event that
//! comes twice (a crash between sending and recording, a redelivery) changes nothing the
//! second time.

use chrono::{DateTime, Utc};
use cim_core::AggregateId;
use serde_json::{Map, Value};

use super::advance::fail;
use super::{Step, StepStatus, Workflow, WorkflowError, WorkflowStatus};
use crate::events::*;
use crate::expr::Expr;
use crate::spec::{StepKind, subject_domain};

/// What the engine's sending came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Reach {
    /// integration: the method's answer (the step completes with it).
    Answered(Map<String, Value>),
    /// The call was refused for good (a bad request, a rule): the attempt fails.
    Refused(String),
    /// agent_task: the agent service has the task; the step waits for its end.
    Submitted,
    /// workflow: the child runs; the step waits for its end.
    ChildStarted,
}

/// A UUIDv7 that is the same whenever it is derived from the same base and parts: the base's
/// timestamp (so ids still sort by time), the rest from a BLAKE3 hash of base and parts.
pub fn derived_id(base: AggregateId, parts: &[&str]) -> AggregateId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(base.as_uuid().as_bytes());
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize();
    let mut bytes = *base.as_uuid().as_bytes();
    bytes[6..].copy_from_slice(&hash.as_bytes()[..10]);
    bytes[6] = 0x70 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    AggregateId::from_uuid(uuid::Uuid::from_bytes(bytes)).unwrap_or(base)
}

/// The id of the task or child an attempt sends.
fn attempt_id(instance: AggregateId, step: &str, attempt: u32) -> AggregateId {
    derived_id(instance, &[step, &attempt.to_string()])
}

/// The events that start `step` (of an outward or waiting kind) as `attempt`.
pub(super) fn start(
    w: &Workflow,
    step: &Step,
    instance: AggregateId,
    attempt: u32,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    jitter: f64,
) -> Vec<WorkflowEvent> {
    let spec = &step.spec;
    let id = spec.id.clone();
    let planned: Result<(Option<Outreach>, Option<Wait>), String> = (|| match spec.kind {
        StepKind::Integration => {
            let call = spec.call.as_ref().ok_or("no call")?;
            let request = map(&call.request, &w.context).map_err(|e| format!("call.request: {e}"))?;
            let outreach = Outreach::Call { service: call.service.clone(), method: call.method.clone(), request };
            Ok((Some(outreach), None))
        }
        StepKind::AgentTask => {
            let task = spec.task.clone().unwrap_or_default();
            let payload = match &task.payload {
                Some(source) => map(source, &w.context).map_err(|e| format!("task.payload: {e}"))?,
                None => Map::new(),
            };
            let task_id = attempt_id(instance, &id, attempt);
            let wait = Wait { subject: "agent.evt.task.*.*".into(), aggregate_id: Some(task_id), condition: None };
            let outreach =
                Outreach::Task { task_id, capabilities: task.capabilities, payload, priority: task.priority };
            Ok((Some(outreach), Some(wait)))
        }
        StepKind::Workflow => {
            let child = spec.child.as_ref().ok_or("no child")?;
            let context = match &child.context {
                Some(source) => map(source, &w.context).map_err(|e| format!("child.context: {e}"))?,
                None => Map::new(),
            };
            let instance_id = attempt_id(instance, &id, attempt);
            let wait =
                Wait { subject: "workflow.evt.workflow.*.*".into(), aggregate_id: Some(instance_id), condition: None };
            Ok((Some(Outreach::Child { instance_id, definition_id: child.definition_id, context }), Some(wait)))
        }
        StepKind::WaitEvent => {
            let filter = spec.event.as_ref().ok_or("no event")?;
            let aggregate_id = match &filter.aggregate_id {
                Some(source) => Some(aggregate(source, &w.context).map_err(|e| format!("event.aggregate_id: {e}"))?),
                None => None,
            };
            Ok((
                None,
                Some(Wait { subject: filter.subject.clone(), aggregate_id, condition: filter.condition.clone() }),
            ))
        }
        _ => Err(format!("{} steps do not reach out", spec.kind.as_str())),
    })();
    match planned {
        Ok((outreach, wait)) => {
            let started_at = Some(now);
            vec![WorkflowEvent::StepStarted(StepExecutionStarted {
                step: id,
                attempt,
                started_at,
                deadline,
                outreach,
                wait,
            })]
        }
        Err(error) => {
            let started =
                StepExecutionStarted { step: id, attempt, started_at: Some(now), deadline, outreach: None, wait: None };
            let mut events = vec![WorkflowEvent::StepStarted(started)];
            events.extend(fail(step, attempt, error, now, jitter));
            events
        }
    }
}

/// The running attempt `attempt` of `step`, or why a report or event about it changes nothing.
/// A paused instance still takes them: its attempts went on elsewhere meanwhile, and an event
/// refused now would never come again.
fn running<'a>(w: &'a Workflow, step: &str, attempt: u32) -> Result<&'a Step, WorkflowError> {
    if !matches!(w.status, WorkflowStatus::Running | WorkflowStatus::Paused) {
        return Err(WorkflowError::NothingDue);
    }
    let s = w.step(step)?;
    if s.status != StepStatus::Running || s.attempts != attempt {
        return Err(WorkflowError::NothingDue);
    }
    Ok(s)
}

/// The engine's report on sending what `attempt` of `step` sends.
pub(super) fn reached(
    w: &Workflow,
    step: &str,
    attempt: u32,
    outcome: &Reach,
    now: DateTime<Utc>,
    jitter: f64,
) -> Result<Vec<WorkflowEvent>, WorkflowError> {
    let s = running(w, step, attempt)?;
    if s.unsent().is_none() {
        return Err(WorkflowError::NothingDue);
    }
    let id = step.to_owned();
    Ok(match (outcome, s.outreach.as_ref()) {
        (Reach::Answered(answer), Some(Outreach::Call { .. })) => {
            let output = Map::from_iter([(id.clone(), Value::Object(answer.clone()))]);
            vec![WorkflowEvent::StepCompleted(StepExecutionCompleted { step: id, output, by: String::new() })]
        }
        (Reach::Refused(error), _) => fail(s, attempt, error.clone(), now, jitter),
        (Reach::Submitted, Some(Outreach::Task { task_id, .. })) => {
            vec![WorkflowEvent::AgentTaskSubmitted(AgentTaskSubmitted { step: id, attempt, task_id: *task_id })]
        }
        (Reach::ChildStarted, Some(Outreach::Child { instance_id, .. })) => {
            vec![WorkflowEvent::ChildWorkflowStarted(ChildWorkflowStarted {
                step: id,
                attempt,
                instance_id: *instance_id,
            })]
        }
        _ => return Err(WorkflowError::NothingDue),
    })
}

/// A matching event for the waiting attempt `attempt` of `step`: `event` as the consumer saw it
/// (`event_type`, `aggregate_id`, `payload`, ...).
pub(super) fn deliver(
    w: &Workflow,
    step: &str,
    attempt: u32,
    event: &Map<String, Value>,
    now: DateTime<Utc>,
    jitter: f64,
) -> Result<Vec<WorkflowEvent>, WorkflowError> {
    let s = running(w, step, attempt)?;
    if s.wait.is_none() {
        return Err(WorkflowError::NothingDue);
    }
    let id = step.to_owned();
    let event_type = event.get("event_type").and_then(Value::as_str).unwrap_or_default();
    let payload = event.get("payload").cloned().unwrap_or(Value::Null);
    let field = |name: &str| payload.get(name).cloned().unwrap_or(Value::Null);
    let completed = |value: Value| {
        let output = Map::from_iter([(id.clone(), value)]);
        Ok(vec![WorkflowEvent::StepCompleted(StepExecutionCompleted { step: id.clone(), output, by: String::new() })])
    };
    match (s.spec.kind, event_type) {
        (StepKind::WaitEvent, _) => completed(Value::Object(event.clone())),
        (StepKind::AgentTask, "task_completed") => completed(payload),
        (StepKind::AgentTask, "task_failed") => {
            Ok(fail(s, attempt, format!("the agent task failed: {}", field("error")), now, jitter))
        }
        (StepKind::AgentTask, "task_cancelled" | "task_timed_out") => {
            Ok(fail(s, attempt, format!("the agent task ended: {event_type}"), now, jitter))
        }
        (StepKind::Workflow, "workflow_completed") => {
            completed(serde_json::json!({"instance_id": event.get("aggregate_id"), "status": "completed"}))
        }
        (StepKind::Workflow, "workflow_failed") => {
            Ok(fail(s, attempt, format!("the child workflow failed: {}", field("error")), now, jitter))
        }
        (StepKind::Workflow, "workflow_cancelled") => {
            Ok(fail(s, attempt, "the child workflow was cancelled".into(), now, jitter))
        }
        // Progress of the task or child (assigned, a step started): not its end.
        _ => Err(WorkflowError::NothingDue),
    }
}

/// A CEL expression that must yield a map (a request, a payload, a context).
fn map(source: &str, context: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    match Expr::parse(source)?.evaluate(context)? {
        Value::Object(map) => Ok(map),
        other => Err(format!("must be a map, got {other}")),
    }
}

/// A CEL expression that must yield an aggregate id.
fn aggregate(source: &str, context: &Map<String, Value>) -> Result<AggregateId, String> {
    match Expr::parse(source)?.evaluate(context)? {
        Value::String(s) => s.parse().map_err(|e| format!("{s:?}: {e}")),
        other => Err(format!("must be an id string, got {other}")),
    }
}

/// Whether a wait's filter and condition take `event` (as the consumer shows it), `subject`
/// being the event's subject without the deployment's prefix.
pub fn takes(wait: &Wait, subject: &str, event: &Map<String, Value>) -> Result<bool, String> {
    if subject_domain(&wait.subject).is_err() || !crate::spec::subject_matches(&wait.subject, subject) {
        return Ok(false);
    }
    match &wait.condition {
        None => Ok(true),
        Some(source) => {
            let scope = Map::from_iter([("event".to_owned(), Value::Object(event.clone()))]);
            Expr::parse(source)?.test(&scope)
        }
    }
}
