//! The instance's rules given/when/then, decided and applied without I/O (each event through the
//! store's round trip); time is whatever each command says.

use chrono::Duration;
use cim_core::ErrorCode;
use cim_runtime::status::HasErrorCode;
use cim_testkit::rules::run;
use serde_json::json;

use super::*;

fn definition(steps: Value) -> Definition {
    Definition::parse(json!({"name": "test", "steps": steps}).as_object().unwrap()).unwrap()
}

/// Given a running instance of `steps` with `context`.
fn running(steps: Value, context: Value) -> Workflow {
    let mut w = Workflow::default();
    let definition = definition(steps);
    let command = WorkflowCommand::Create {
        definition_id: AggregateId::new(),
        content_id: definition.content_id(),
        definition,
        context: context.as_object().unwrap().clone(),
        start: true,
    };
    run(&mut w, &command, &()).unwrap();
    assert_eq!(w.status, WorkflowStatus::Running);
    w
}

fn t0() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn ms(n: i64) -> DateTime<Utc> {
    t0() + Duration::milliseconds(n)
}

fn advance(w: &mut Workflow, at: DateTime<Utc>) -> Vec<&'static str> {
    match run(w, &WorkflowCommand::Advance { now: at, jitter: 0.0 }, &()) {
        Ok(events) => events.iter().map(WorkflowEvent::event_type).collect(),
        Err(WorkflowError::NothingDue) => vec![],
        Err(e) => panic!("advance: {e}"),
    }
}

fn status(w: &Workflow, step: &str) -> StepStatus {
    w.step(step).unwrap().status
}

fn person(actor: &str, roles: &[&str]) -> Person {
    Person { actor: actor.into(), roles: roles.iter().map(|r| (*r).to_owned()).collect() }
}

fn refused(w: &mut Workflow, command: WorkflowCommand) -> (ErrorCode, String) {
    let e = run(w, &command, &()).unwrap_err();
    (e.code(), e.to_string())
}

#[test]
fn no_start_without_steps_and_a_draft_starts_once() {
    let mut w = Workflow::default();
    let empty = Definition { name: "empty".into(), description: String::new(), steps: vec![] };
    let create = WorkflowCommand::Create {
        definition_id: AggregateId::new(),
        content_id: empty.content_id(),
        definition: empty,
        context: Map::new(),
        start: false,
    };
    run(&mut w, &create, &()).unwrap();
    assert_eq!(w.status, WorkflowStatus::Draft);
    assert_eq!(refused(&mut w, WorkflowCommand::Start).0, ErrorCode::FailedPrecondition);
    assert_eq!(run(&mut w, &WorkflowCommand::Start, &()).unwrap_err(), WorkflowError::NoSteps);

    let mut w = running(json!([{"id": "a", "kind": "manual"}]), json!({}));
    let (code, message) = refused(&mut w, WorkflowCommand::Start);
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::FailedPrecondition, "the workflow is running; only a draft starts")
    );
}

#[test]
fn a_step_starts_only_when_its_dependencies_are_met() {
    let mut w = running(
        json!([{"id": "a", "kind": "manual"}, {"id": "b", "kind": "automated", "depends_on": ["a"], "set": {"n": "1"}}]),
        json!({}),
    );
    assert_eq!(advance(&mut w, t0()), ["step_execution_started"]);
    assert_eq!((status(&w, "a"), status(&w, "b")), (StepStatus::Running, StepStatus::Pending));
    assert!(advance(&mut w, ms(10)).is_empty(), "b waits for a person to finish a");

    let done = WorkflowCommand::CompleteStep { step: "a".into(), by: person("user:ann", &[]), output: Map::new() };
    run(&mut w, &done, &()).unwrap();
    let events = advance(&mut w, ms(20));
    assert_eq!(events, ["step_execution_started", "step_execution_completed", "workflow_completed"]);
    assert_eq!(w.context["n"], json!(1));
    assert_eq!(w.status, WorkflowStatus::Completed);
}

#[test]
fn a_decision_skips_the_branch_not_taken_and_the_join_runs() {
    let mut w = running(
        json!([
            {"id": "total", "kind": "automated", "set": {"total": "price * qty"}},
            {"id": "big", "kind": "decision", "depends_on": ["total"], "condition": "total > 100",
             "when_true": ["escalate"], "when_false": ["file"]},
            {"id": "escalate", "kind": "automated", "depends_on": ["big"], "set": {"level": "'high'"}},
            {"id": "file", "kind": "automated", "depends_on": ["big"], "set": {"level": "'low'"}},
            {"id": "after_file", "kind": "parallel", "depends_on": ["file"]},
            {"id": "join", "kind": "parallel", "depends_on": ["escalate", "file"]}
        ]),
        json!({"price": 30, "qty": 5}),
    );
    advance(&mut w, t0());
    assert_eq!(w.status, WorkflowStatus::Completed);
    assert_eq!((w.context["total"].clone(), w.context["big"].clone()), (json!(150), json!(true)));
    assert_eq!(w.context["level"], json!("high"));
    assert_eq!(status(&w, "file"), StepStatus::Skipped);
    assert_eq!(status(&w, "after_file"), StepStatus::Skipped, "every dependency was skipped");
    assert_eq!(status(&w, "join"), StepStatus::Completed, "one dependency completed");
}

#[test]
fn a_failed_step_retries_while_attempts_are_below_its_maximum() {
    let steps = json!([{"id": "calc", "kind": "automated", "set": {"double": "price * 2"},
        "retry": {"max_attempts": 3, "initial_backoff_ms": 100, "max_backoff_ms": 1000}}]);
    let mut w = running(steps.clone(), json!({}));
    assert_eq!(advance(&mut w, t0()), ["step_execution_started", "step_execution_failed", "retry_scheduled"]);
    let calc = w.step("calc").unwrap();
    assert_eq!((calc.status, calc.attempts, calc.retry_at), (StepStatus::Pending, 1, Some(ms(50))));
    assert_eq!(w.next_due(), Some(ms(50)));
    assert!(advance(&mut w, ms(49)).is_empty(), "never before the backoff");
    assert_eq!(advance(&mut w, ms(50)), ["step_execution_started", "step_execution_failed", "retry_scheduled"]);
    assert_eq!(w.step("calc").unwrap().retry_at, Some(ms(150)), "the backoff doubled");
    let events = advance(&mut w, ms(150));
    assert_eq!(events, ["step_execution_started", "step_execution_failed", "workflow_failed"]);
    assert_eq!((w.status, w.step("calc").unwrap().attempts), (WorkflowStatus::Failed, 3));
    assert!(w.error.starts_with("calc: set.double:"), "{}", w.error);

    // The same step succeeds on its retry once the context has what it needs.
    let mut w = running(steps, json!({}));
    advance(&mut w, t0());
    run(&mut w, &WorkflowCommand::SetVariable { key: "price".into(), value: json!(21) }, &()).unwrap();
    assert_eq!(advance(&mut w, ms(50)), ["step_execution_started", "step_execution_completed", "workflow_completed"]);
    assert_eq!((w.context["double"].clone(), w.step("calc").unwrap().attempts), (json!(42), 2));
}

#[test]
fn only_manual_and_approval_steps_are_assigned_to_people() {
    let mut w = running(
        json!([{"id": "auto", "kind": "timer", "sleep_ms": 1000}, {"id": "ok", "kind": "approval", "role": "manager"}]),
        json!({}),
    );
    let assign = |step: &str| WorkflowCommand::AssignTask { step: step.into(), assignee: "user:bob".into() };
    let (code, message) = refused(&mut w, assign("auto"));
    assert_eq!(code, ErrorCode::FailedPrecondition);
    assert!(message.contains("only manual and approval steps are assigned to people"), "{message}");
    assert_eq!(refused(&mut w, assign("nope")).0, ErrorCode::NotFound);
    run(&mut w, &assign("ok"), &()).unwrap();
    assert_eq!(w.step("ok").unwrap().assignee.as_deref(), Some("user:bob"));
}

#[test]
fn an_approval_needs_the_role_or_the_assignee_and_a_rejection_fails_the_run() {
    let steps = json!([{"id": "ok", "kind": "approval", "role": "manager"}, {"id": "after", "kind": "parallel", "depends_on": ["ok"]}]);
    let mut w = running(steps.clone(), json!({}));
    let approve = |by: Person| WorkflowCommand::Approve { step: "ok".into(), by, comment: "fine".into() };
    assert_eq!(
        refused(&mut w, approve(person("user:eve", &["writer"]))).0,
        ErrorCode::FailedPrecondition,
        "not asked yet"
    );
    assert_eq!(advance(&mut w, t0()), ["step_execution_started", "step_approval_requested"]);
    assert_eq!(status(&w, "ok"), StepStatus::WaitingApproval);
    assert_eq!(refused(&mut w, approve(person("user:eve", &["writer"]))).0, ErrorCode::PermissionDenied);
    let events = run(&mut w, &approve(person("user:max", &["manager"])), &()).unwrap();
    assert_eq!(
        events.iter().map(WorkflowEvent::event_type).collect::<Vec<_>>(),
        ["step_approval_granted", "step_execution_completed"]
    );
    assert_eq!(w.context["ok"], json!({"approved": true, "by": "user:max"}));
    assert_eq!(advance(&mut w, ms(1)), ["step_execution_started", "step_execution_completed", "workflow_completed"]);

    let mut w = running(steps, json!({}));
    advance(&mut w, t0());
    run(&mut w, &WorkflowCommand::AssignTask { step: "ok".into(), assignee: "user:bob".into() }, &()).unwrap();
    let reject = WorkflowCommand::Reject { step: "ok".into(), by: person("user:bob", &[]), comment: "no".into() };
    run(&mut w, &reject, &()).unwrap();
    assert_eq!(
        (w.status, status(&w, "ok"), status(&w, "after")),
        (WorkflowStatus::Failed, StepStatus::Failed, StepStatus::Pending)
    );
}

#[test]
fn a_timer_fires_once_and_never_early() {
    let mut w = running(json!([{"id": "wait", "kind": "timer", "sleep_ms": 1000}]), json!({}));
    assert_eq!(advance(&mut w, t0()), ["step_execution_started", "timer_scheduled"]);
    assert_eq!(w.next_due(), Some(ms(1000)));
    assert!(advance(&mut w, ms(999)).is_empty());
    assert_eq!(advance(&mut w, ms(1000)), ["timer_fired", "step_execution_completed", "workflow_completed"]);
    assert!(advance(&mut w, ms(2000)).is_empty());
}

#[test]
fn a_step_past_its_timeout_fails() {
    let mut w = running(json!([{"id": "ok", "kind": "approval", "role": "r", "timeout_ms": 500}]), json!({}));
    advance(&mut w, t0());
    assert_eq!(w.next_due(), Some(ms(500)));
    assert!(advance(&mut w, ms(499)).is_empty());
    assert_eq!(advance(&mut w, ms(500)), ["step_execution_failed", "workflow_failed"]);
    assert!(w.error.contains("timed out"), "{}", w.error);
}

#[test]
fn pause_resume_and_cancel_follow_the_state_machine() {
    let mut w = running(json!([{"id": "wait", "kind": "timer", "sleep_ms": 10}]), json!({}));
    advance(&mut w, t0());
    let (code, message) = refused(&mut w, WorkflowCommand::Resume);
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::FailedPrecondition, "the workflow is running; only a paused workflow resumes")
    );
    run(&mut w, &WorkflowCommand::Pause { reason: "hold".into() }, &()).unwrap();
    assert_eq!(w.next_due(), None, "a paused workflow waits for nothing");
    assert!(advance(&mut w, ms(100)).is_empty(), "nothing runs while paused");
    assert_eq!(refused(&mut w, WorkflowCommand::Pause { reason: String::new() }).0, ErrorCode::FailedPrecondition);
    run(&mut w, &WorkflowCommand::Resume, &()).unwrap();
    assert_eq!(advance(&mut w, ms(100)), ["timer_fired", "step_execution_completed", "workflow_completed"]);
    assert_eq!(refused(&mut w, WorkflowCommand::Cancel { reason: String::new() }).0, ErrorCode::FailedPrecondition);

    let mut w =
        running(json!([{"id": "m", "kind": "manual"}, {"id": "n", "kind": "manual", "depends_on": ["m"]}]), json!({}));
    advance(&mut w, t0());
    run(&mut w, &WorkflowCommand::Pause { reason: String::new() }, &()).unwrap();
    run(&mut w, &WorkflowCommand::Cancel { reason: "no longer needed".into() }, &()).unwrap();
    assert_eq!(
        (w.status, status(&w, "m"), status(&w, "n")),
        (WorkflowStatus::Cancelled, StepStatus::Cancelled, StepStatus::Cancelled)
    );
    for command in [
        WorkflowCommand::Resume,
        WorkflowCommand::SetVariable { key: "k".into(), value: json!(1) },
        WorkflowCommand::Signal { name: "s".into(), payload: Map::new() },
    ] {
        assert_eq!(refused(&mut w, command).0, ErrorCode::FailedPrecondition);
    }
}

#[test]
fn signals_land_in_the_context() {
    let mut w = running(json!([{"id": "m", "kind": "manual"}]), json!({"signals": 3}));
    let payload = json!({"ok": true}).as_object().unwrap().clone();
    run(&mut w, &WorkflowCommand::Signal { name: "shipped".into(), payload }, &()).unwrap();
    assert_eq!(w.context["signals"], json!({"shipped": {"ok": true}}));
}
