//! What an instance's committed events say about its steps, for the step metrics: how long each
//! attempt ran until it ended (completed, failed, or cancelled with the run), and the retries
//! scheduled, by step kind. Called through [`Aggregate::committed`](cim_aggregate::Aggregate),
//! so once per written event whichever command wrote it (the engine's advance, a person's
//! approval, a delivered event, a start) and never for a decision that lost a race.

use chrono::{DateTime, Utc};

use super::{StepStatus, Workflow};
use crate::events::WorkflowEvent;
use crate::metrics::{RETRIES_TOTAL, STEP_DURATION};
use crate::spec::StepKind;

/// One attempt that ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ended {
    pub kind: StepKind,
    /// `completed`, `failed` or `cancelled`.
    pub outcome: &'static str,
    pub seconds: f64,
}

/// What `events`, decided on `before` and committed at `now`, did to steps.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Observed {
    pub ended: Vec<Ended>,
    /// The kind of each step a retry was scheduled for.
    pub retried: Vec<StepKind>,
}

pub(super) fn record(before: &Workflow, events: &[WorkflowEvent], now: DateTime<Utc>) {
    let observed = observe(before, events, now);
    for end in observed.ended {
        metrics::histogram!(STEP_DURATION, "kind" => end.kind.as_str(), "outcome" => end.outcome).record(end.seconds);
    }
    for kind in observed.retried {
        metrics::counter!(RETRIES_TOTAL, "kind" => kind.as_str()).increment(1);
    }
}

pub(super) fn observe(before: &Workflow, events: &[WorkflowEvent], now: DateTime<Utc>) -> Observed {
    // A create that starts the run brings its steps with it.
    let created = events.iter().find_map(|e| match e {
        WorkflowEvent::Created(c) => Some(&c.definition.steps),
        _ => None,
    });
    let kind_of = |id: &str| {
        before
            .steps
            .iter()
            .map(|s| &s.spec)
            .chain(created.into_iter().flatten())
            .find(|spec| spec.id == id)
            .map(|spec| spec.kind)
    };
    // The attempts running as the events go: those of `before`, then those the events start.
    let mut running: Vec<(&str, Option<DateTime<Utc>>)> = before
        .steps
        .iter()
        .filter(|s| matches!(s.status, StepStatus::Running | StepStatus::WaitingApproval))
        .map(|s| (s.spec.id.as_str(), s.started_at))
        .collect();
    let mut observed = Observed::default();
    // The attempt of `id` ends: its duration, if it was running and its start is known (an
    // attempt started before starts were recorded has none to tell).
    let end = |running: &mut Vec<(&str, Option<DateTime<Utc>>)>, id: &str, outcome: &'static str| {
        let at = running.iter().position(|(s, _)| *s == id)?;
        let (_, started) = running.swap_remove(at);
        let seconds = (now - started?).to_std().unwrap_or_default().as_secs_f64();
        Some(Ended { kind: kind_of(id)?, outcome, seconds })
    };
    for event in events {
        match event {
            WorkflowEvent::StepStarted(e) => {
                running.retain(|(s, _)| *s != e.step);
                running.push((e.step.as_str(), e.started_at));
            }
            WorkflowEvent::StepCompleted(e) => observed.ended.extend(end(&mut running, &e.step, "completed")),
            WorkflowEvent::StepFailed(e) => observed.ended.extend(end(&mut running, &e.step, "failed")),
            WorkflowEvent::Cancelled(_) => {
                for (id, _) in running.clone() {
                    observed.ended.extend(end(&mut running, id, "cancelled"));
                }
            }
            WorkflowEvent::RetryScheduled(e) => observed.retried.extend(kind_of(&e.step)),
            _ => {}
        }
    }
    observed
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use cim_aggregate::Aggregate;
    use cim_core::AggregateId;
    use serde_json::{Map, json};

    use super::*;
    use crate::instance::{Tick, WorkflowCommand};
    use crate::spec::Definition;

    fn t0() -> DateTime<Utc> {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn ms(n: i64) -> DateTime<Utc> {
        t0() + Duration::milliseconds(n)
    }

    /// Decides `command` on `w`, observes its events as committed at `committed`, applies them.
    fn commit(w: &mut Workflow, command: &WorkflowCommand, committed: DateTime<Utc>) -> Observed {
        let events = w.decide(command, &()).unwrap();
        let observed = observe(w, &events, committed);
        for event in &events {
            w.apply(event);
        }
        observed
    }

    fn advance(at: DateTime<Utc>) -> WorkflowCommand {
        WorkflowCommand::Advance { instance: AggregateId::new(), now: at, jitter: 0.0 }
    }

    fn ended(kind: StepKind, outcome: &'static str, ms: i64) -> Ended {
        Ended { kind, outcome, seconds: ms as f64 / 1000.0 }
    }

    /// A run started at `t0` in its create (the engine's first tick in the same write).
    fn started(steps: serde_json::Value) -> (Workflow, Observed) {
        let definition = Definition::parse(json!({"name": "t", "steps": steps}).as_object().unwrap()).unwrap();
        let create = WorkflowCommand::Create {
            definition_id: AggregateId::new(),
            content_id: definition.content_id(),
            definition,
            context: Map::new(),
            start: Some(Tick { instance: AggregateId::new(), now: t0(), jitter: 0.0 }),
        };
        let mut w = Workflow::default();
        let observed = commit(&mut w, &create, ms(3));
        (w, observed)
    }

    #[test]
    fn an_attempt_runs_from_its_decided_start_to_the_commit_of_its_end() {
        // The automated step ends in the create that starts it: its kind comes from the create.
        let (mut w, first) = started(json!([
            {"id": "a", "kind": "automated"},
            {"id": "nap", "kind": "timer", "depends_on": ["a"], "sleep_ms": 1000}
        ]));
        assert_eq!(first, Observed { ended: vec![ended(StepKind::Automated, "completed", 3)], retried: vec![] });
        // The timer, started in that write, ends in a later one.
        let fired = commit(&mut w, &advance(ms(1000)), ms(1010));
        assert_eq!(fired.ended, [ended(StepKind::Timer, "completed", 1010)]);
    }

    #[test]
    fn a_failed_attempt_counts_its_retry_and_a_cancel_ends_what_runs() {
        let retry = json!({"max_attempts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 100});
        let (mut w, first) = started(json!([
            {"id": "calc", "kind": "automated", "set": {"x": "missing * 2"}, "retry": retry},
            {"id": "wait", "kind": "manual"}
        ]));
        assert_eq!(first.ended, [ended(StepKind::Automated, "failed", 3)]);
        assert_eq!(first.retried, [StepKind::Automated]);
        // The last attempt fails the run: no retry.
        let last = commit(&mut w, &advance(ms(500)), ms(501));
        assert_eq!(last, Observed { ended: vec![ended(StepKind::Automated, "failed", 1)], retried: vec![] });

        let (mut w, _) =
            started(json!([{"id": "wait", "kind": "manual"}, {"id": "nap", "kind": "timer", "sleep_ms": 9000}]));
        let cancelled = commit(&mut w, &WorkflowCommand::Cancel { reason: String::new() }, ms(2000));
        let mut kinds: Vec<_> = cancelled.ended.iter().map(|e| (e.kind.as_str(), e.outcome, e.seconds)).collect();
        kinds.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(kinds, [("manual", "cancelled", 2.0), ("timer", "cancelled", 2.0)]);
    }
}
