//! The engine's whole decision for one running instance at one instant: start every step whose
//! dependencies are met (an automated, parallel or decision step finishes at once, and its
//! output can make its dependents ready in the same tick), fire due timers, time out late
//! attempts, schedule retries or fail the run, and complete it when every step has completed or
//! been skipped. Pure: a step is started only from `pending` and a timer fired only while it is
//! scheduled, so two engines deciding on the same version write the same events, and only one
//! of those writes lands.

use chrono::{DateTime, Duration, Utc};
use cim_core::AggregateId;
use serde_json::{Map, Value};

use super::{Step, StepStatus, Workflow, WorkflowStatus};
use crate::events::*;
use crate::expr::Expr;
use crate::spec::StepKind;
use cim_aggregate::Aggregate;

/// What became due at `now`, folded pass after pass until nothing more happens.
pub(super) fn advance(state: &Workflow, instance: AggregateId, now: DateTime<Utc>, jitter: f64) -> Vec<WorkflowEvent> {
    let mut scratch = state.clone();
    let mut out = Vec::new();
    // Every pass that says something moves a step forward; a step moves forward a bounded
    // number of times (its attempts are bounded), so this ends.
    while scratch.status == WorkflowStatus::Running {
        let events = pass(&scratch, instance, now, jitter);
        if events.is_empty() {
            break;
        }
        for event in &events {
            scratch.apply(event);
        }
        out.extend(events);
    }
    out
}

fn pass(w: &Workflow, instance: AggregateId, now: DateTime<Utc>, jitter: f64) -> Vec<WorkflowEvent> {
    let mut events = Vec::new();
    for step in &w.steps {
        let decided = match step.status {
            StepStatus::Pending => ready(w, step, now).map(|skip| match skip {
                true => vec![WorkflowEvent::StepSkipped(StepSkipped {
                    step: step.spec.id.clone(),
                    reason: "every dependency was skipped".into(),
                })],
                false => start(w, step, instance, now, jitter),
            }),
            StepStatus::Running | StepStatus::WaitingApproval => due(step, now, jitter),
            _ => None,
        };
        if let Some(decided) = decided {
            let ended = decided.iter().any(|e| matches!(e, WorkflowEvent::Failed(_)));
            events.extend(decided);
            if ended {
                return events;
            }
        }
    }
    if events.is_empty() && w.steps.iter().all(|s| s.status.lets_dependents_run()) {
        events.push(WorkflowEvent::Completed(WorkflowTransition::default()));
    }
    events
}

/// Whether a pending step may go ahead now: `Some(true)` when every dependency was skipped (so
/// is it), `Some(false)` when it starts, `None` while it waits (on a dependency or a retry).
fn ready(w: &Workflow, step: &Step, now: DateTime<Utc>) -> Option<bool> {
    if step.retry_at.is_some_and(|at| at > now) {
        return None;
    }
    let deps: Vec<&Step> = step.spec.depends_on.iter().filter_map(|d| w.step(d).ok()).collect();
    if !deps.iter().all(|d| d.status.lets_dependents_run()) {
        return None;
    }
    Some(!deps.is_empty() && deps.iter().all(|d| d.status == StepStatus::Skipped))
}

fn start(w: &Workflow, step: &Step, instance: AggregateId, now: DateTime<Utc>, jitter: f64) -> Vec<WorkflowEvent> {
    let id = step.spec.id.clone();
    let attempt = step.attempts + 1;
    let deadline = step.spec.timeout_ms.map(|ms| now + Duration::milliseconds(ms as i64));
    if step.spec.kind.reaches_out() || step.spec.kind == StepKind::WaitEvent {
        return super::outreach::start(w, step, instance, attempt, deadline, now, jitter);
    }
    // A step the service runs itself is a span of the trace that advanced it: StartWorkflow's
    // when it runs in the start's first tick, the command's that made it ready otherwise.
    let _span =
        tracing::info_span!("workflow.step", otel.kind = "internal", step = %id, kind = ?step.spec.kind, attempt)
            .entered();
    let started =
        StepExecutionStarted { step: id.clone(), attempt, started_at: Some(now), deadline, outreach: None, wait: None };
    let mut events = vec![WorkflowEvent::StepStarted(started)];
    let completed = |output: Map<String, Value>| {
        WorkflowEvent::StepCompleted(StepExecutionCompleted { step: id.clone(), output, by: String::new() })
    };
    match step.spec.kind {
        StepKind::Automated => match computed(step, &w.context) {
            Ok(output) => events.push(completed(output)),
            Err(error) => events.extend(fail(step, attempt, error, now, jitter)),
        },
        StepKind::Parallel => events.push(completed(Map::new())),
        StepKind::Decision => match decided(step, &w.context) {
            Ok(taken) => {
                let mut output = Map::new();
                output.insert(id.clone(), Value::Bool(taken));
                events.push(completed(output));
                let not_taken = if taken { &step.spec.when_false } else { &step.spec.when_true };
                for skipped in not_taken {
                    let reason = format!("decision {id:?} was {taken}");
                    events.push(WorkflowEvent::StepSkipped(StepSkipped { step: skipped.clone(), reason }));
                }
            }
            Err(error) => events.extend(fail(step, attempt, error, now, jitter)),
        },
        StepKind::Timer => {
            let fire_at = match (step.spec.until, step.spec.sleep_ms) {
                (Some(until), _) => until,
                (None, ms) => now + Duration::milliseconds(ms.unwrap_or_default() as i64),
            };
            events.push(WorkflowEvent::TimerScheduled(TimerScheduled { step: id.clone(), fire_at }));
        }
        // Waits for a person (CompleteStep).
        StepKind::Manual => {}
        StepKind::Approval => {
            let role = step.spec.role.clone().unwrap_or_default();
            events.push(WorkflowEvent::ApprovalRequested(StepApprovalRequested { step: id.clone(), role }));
        }
        // Started by `outreach::start` above.
        StepKind::Integration | StepKind::AgentTask | StepKind::WaitEvent | StepKind::Workflow => {}
    }
    events
}

/// A running step's timer or timeout, if one has come.
fn due(step: &Step, now: DateTime<Utc>, jitter: f64) -> Option<Vec<WorkflowEvent>> {
    let id = &step.spec.id;
    if let Some(fire_at) = step.fire_at.filter(|at| *at <= now) {
        return Some(vec![
            WorkflowEvent::TimerFired(TimerFired { step: id.clone(), fire_at }),
            WorkflowEvent::StepCompleted(StepExecutionCompleted {
                step: id.clone(),
                output: Map::new(),
                by: String::new(),
            }),
        ]);
    }
    let deadline = step.deadline.filter(|at| *at <= now)?;
    let error =
        format!("timed out at {} (timeout_ms {})", deadline.to_rfc3339(), step.spec.timeout_ms.unwrap_or_default());
    Some(fail(step, step.attempts, error, now, jitter))
}

/// A failed attempt: retried after a backoff while attempts remain, else the end of the run.
pub(super) fn fail(step: &Step, attempt: u32, error: String, now: DateTime<Utc>, jitter: f64) -> Vec<WorkflowEvent> {
    let id = step.spec.id.clone();
    let policy = step.spec.retry_policy();
    let failed = WorkflowEvent::StepFailed(StepExecutionFailed { step: id.clone(), attempt, error: error.clone() });
    if attempt < policy.max_attempts {
        // At least a millisecond: a retry is never due in the tick that failed it.
        let wait = policy.backoff_ms(attempt, jitter).max(1);
        let next_at = now + Duration::milliseconds(wait as i64);
        vec![failed, WorkflowEvent::RetryScheduled(RetryScheduled { step: id, attempt: attempt + 1, next_at })]
    } else {
        vec![failed, WorkflowEvent::Failed(WorkflowFailed { step: id, error })]
    }
}

/// An automated step's output: each `set` expression over the context.
fn computed(step: &Step, context: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut output = Map::new();
    for (key, source) in &step.spec.set {
        let value = Expr::parse(source).and_then(|e| e.evaluate(context)).map_err(|e| format!("set.{key}: {e}"))?;
        output.insert(key.clone(), value);
    }
    Ok(output)
}

fn decided(step: &Step, context: &Map<String, Value>) -> Result<bool, String> {
    let source = step.spec.condition.as_deref().unwrap_or_default();
    Expr::parse(source).and_then(|e| e.test(context)).map_err(|e| format!("condition: {e}"))
}
