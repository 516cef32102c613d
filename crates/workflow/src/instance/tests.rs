//! The instance's rules given/when/then, decided and applied without I/O (each event through the
//! store's round trip); time is whatever each command says.

use chrono::Duration;
use cim_core::ErrorCode;
use cim_runtime::status::HasErrorCode;
use cim_testkit::rules::run;
use serde_json::json;

use super::*;
use crate::events::Outreach;

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
        start: None,
    };
    run(&mut w, &command, &()).unwrap();
    // Started apart from created, so each test sees the first tick's events from `advance`.
    run(&mut w, &WorkflowCommand::Start, &()).unwrap();
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
    match run(w, &WorkflowCommand::Advance { instance: instance_id(), now: at, jitter: 0.0 }, &()) {
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
    let empty = Definition { name: "empty".into(), description: String::new(), steps: vec![], triggers: vec![] };
    let create = WorkflowCommand::Create {
        definition_id: AggregateId::new(),
        content_id: empty.content_id(),
        definition: empty,
        context: Map::new(),
        start: None,
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

fn instance_id() -> AggregateId {
    "01900000-0000-7000-8000-000000000001".parse().unwrap()
}

fn reached(w: &mut Workflow, step: &str, attempt: u32, outcome: Reach) -> Result<Vec<&'static str>, WorkflowError> {
    let command = WorkflowCommand::Reached { step: step.into(), attempt, outcome, now: ms(1), jitter: 0.0 };
    run(w, &command, &()).map(|events| events.iter().map(WorkflowEvent::event_type).collect())
}

fn deliver(w: &mut Workflow, step: &str, attempt: u32, event: Value) -> Result<Vec<&'static str>, WorkflowError> {
    let event = event.as_object().unwrap().clone();
    let command = WorkflowCommand::Deliver { step: step.into(), attempt, event, now: ms(1), jitter: 0.0 };
    run(w, &command, &()).map(|events| events.iter().map(WorkflowEvent::event_type).collect())
}

#[test]
fn an_integration_step_sends_its_request_once_and_completes_with_the_answer() {
    let mut w = running(
        json!([{"id": "add", "kind": "integration",
                "call": {"service": "graph", "method": "AddNode", "request": "{'graph_id': graph, 'node': {'labels': ['x']}}"}}]),
        json!({"graph": "g1"}),
    );
    assert_eq!(advance(&mut w, ms(0)), ["step_execution_started"]);
    let step = w.step("add").unwrap();
    let Some(Outreach::Call { request, .. }) = step.unsent() else { panic!("unsent: {step:?}") };
    assert_eq!(Value::Object(request.clone()), json!({"graph_id": "g1", "node": {"labels": ["x"]}}));
    // The engine sends, then reports: the answer completes the step; a second report is moot.
    let answer = json!({"version": 3}).as_object().unwrap().clone();
    assert_eq!(reached(&mut w, "add", 1, Reach::Answered(answer.clone())).unwrap(), ["step_execution_completed"]);
    assert_eq!(w.context["add"], json!({"version": 3}));
    assert!(matches!(reached(&mut w, "add", 1, Reach::Answered(answer)), Err(WorkflowError::NothingDue)));
    assert_eq!(advance(&mut w, ms(2)), ["workflow_completed"]);
}

#[test]
fn a_refused_call_fails_the_attempt_and_the_retry_sends_a_new_one() {
    let mut w = running(
        json!([{"id": "add", "kind": "integration", "retry": {"max_attempts": 2, "initial_backoff_ms": 10},
                "call": {"service": "graph", "method": "AddNode", "request": "{'graph_id': 'g'}"}}]),
        json!({}),
    );
    advance(&mut w, ms(0));
    assert_eq!(
        reached(&mut w, "add", 1, Reach::Refused("graph.AddNode: not_found".into())).unwrap(),
        ["step_execution_failed", "retry_scheduled"]
    );
    assert!(w.step("add").unwrap().unsent().is_none());
    advance(&mut w, ms(100));
    assert_eq!(w.step("add").unwrap().attempts, 2);
    assert!(w.step("add").unwrap().unsent().is_some());
    // A late report about attempt 1 changes nothing.
    assert!(reached(&mut w, "add", 1, Reach::Answered(Map::new())).is_err());
}

#[test]
fn an_agent_task_waits_for_its_own_task_and_fails_with_it() {
    let steps = json!([{"id": "review", "kind": "agent_task",
        "task": {"capabilities": ["text.review"], "payload": "{'doc': doc}", "priority": 5}}]);
    let mut w = running(steps.clone(), json!({"doc": "d1"}));
    advance(&mut w, ms(0));
    let step = w.step("review").unwrap();
    let Some(Outreach::Task { task_id, payload, priority, .. }) = step.unsent().cloned() else { panic!() };
    assert_eq!((Value::Object(payload), priority), (json!({"doc": "d1"}), 5));
    // The same instance, step and attempt always name the same task: sending again is harmless.
    let mut again = running(steps, json!({"doc": "d1"}));
    advance(&mut again, ms(0));
    assert!(matches!(again.step("review").unwrap().unsent(), Some(Outreach::Task { task_id: t, .. }) if *t == task_id));
    assert_eq!(w.step("review").unwrap().wait.as_ref().unwrap().aggregate_id, Some(task_id));
    assert_eq!(reached(&mut w, "review", 1, Reach::Submitted).unwrap(), ["agent_task_submitted"]);
    // Progress is not the end; the completion is.
    assert!(deliver(&mut w, "review", 1, json!({"event_type": "task_assigned"})).is_err());
    let done = json!({"event_type": "task_completed", "payload": {"result": {"ok": true}}});
    assert_eq!(deliver(&mut w, "review", 1, done.clone()).unwrap(), ["step_execution_completed"]);
    assert_eq!(w.context["review"], json!({"result": {"ok": true}}));
    assert!(deliver(&mut w, "review", 1, done).is_err(), "a redelivery changes nothing");

    // A paused run still takes its task's end; it goes on when resumed.
    let mut paused = running(
        json!([{"id": "t", "kind": "agent_task"}, {"id": "after", "kind": "parallel", "depends_on": ["t"]}]),
        json!({}),
    );
    advance(&mut paused, ms(0));
    reached(&mut paused, "t", 1, Reach::Submitted).unwrap();
    run(&mut paused, &WorkflowCommand::Pause { reason: String::new() }, &()).unwrap();
    let done = json!({"event_type": "task_completed", "payload": {}});
    assert_eq!(deliver(&mut paused, "t", 1, done).unwrap(), ["step_execution_completed"]);
    assert!(advance(&mut paused, ms(2)).is_empty(), "nothing runs while paused");
    run(&mut paused, &WorkflowCommand::Resume, &()).unwrap();
    assert_eq!(
        advance(&mut paused, ms(3)),
        ["step_execution_started", "step_execution_completed", "workflow_completed"]
    );

    let mut failing = running(json!([{"id": "t", "kind": "agent_task"}]), json!({}));
    advance(&mut failing, ms(0));
    reached(&mut failing, "t", 1, Reach::Submitted).unwrap();
    let failed = json!({"event_type": "task_failed", "payload": {"error": "boom"}});
    assert_eq!(deliver(&mut failing, "t", 1, failed).unwrap(), ["step_execution_failed", "workflow_failed"]);
}

#[test]
fn a_wait_names_its_aggregate_from_the_context_and_completes_with_the_event() {
    let mut w = running(
        json!([{"id": "approved", "kind": "wait_event", "timeout_ms": 1000,
                "event": {"subject": "document.evt.document.*.document_state_changed",
                          "aggregate_id": "doc", "condition": "event.payload.to == 'approved'"}}]),
        json!({"doc": "01900000-0000-7000-8000-0000000000d0"}),
    );
    advance(&mut w, ms(0));
    let wait = w.step("approved").unwrap().wait.clone().unwrap();
    assert_eq!(wait.aggregate_id.unwrap().to_string(), "01900000-0000-7000-8000-0000000000d0");
    let subject = "document.evt.document.01900000-0000-7000-8000-0000000000d0.document_state_changed";
    let other = json!({"payload": {"to": "in_review"}}).as_object().unwrap().clone();
    assert!(!takes(&wait, subject, &other).unwrap());
    let matching = json!({"event_type": "document_state_changed", "payload": {"to": "approved"}});
    assert!(takes(&wait, subject, matching.as_object().unwrap()).unwrap());
    assert!(!takes(&wait, "document.evt.document.x.document_created", matching.as_object().unwrap()).unwrap());
    assert_eq!(deliver(&mut w, "approved", 1, matching).unwrap(), ["step_execution_completed"]);
    assert_eq!(w.context["approved"]["payload"]["to"], "approved");

    // Nothing came within the timeout: the step fails like any late step.
    let mut late = running(
        json!([{"id": "w", "kind": "wait_event", "timeout_ms": 1000, "event": {"subject": "graph.evt.>"}}]),
        json!({}),
    );
    advance(&mut late, ms(0));
    assert_eq!(advance(&mut late, ms(1000)), ["step_execution_failed", "workflow_failed"]);
}

#[test]
fn a_child_workflow_step_completes_or_fails_with_its_child() {
    let child_definition = "01900000-0000-7000-8000-0000000000c0";
    let steps = json!([{"id": "sub", "kind": "workflow", "child": {"definition_id": child_definition, "context": "{'n': n + 1}"}}]);
    let mut w = running(steps, json!({"n": 1}));
    advance(&mut w, ms(0));
    let Some(Outreach::Child { instance_id: child, context, .. }) = w.step("sub").unwrap().unsent().cloned() else {
        panic!()
    };
    assert_eq!(Value::Object(context), json!({"n": 2}));
    assert_eq!(reached(&mut w, "sub", 1, Reach::ChildStarted).unwrap(), ["child_workflow_started"]);
    let done = json!({"event_type": "workflow_completed", "aggregate_id": child.to_string()});
    assert_eq!(deliver(&mut w, "sub", 1, done).unwrap(), ["step_execution_completed"]);
}

#[test]
fn outward_steps_are_checked_when_defined() {
    let refuse = |step: Value| {
        Definition::parse(json!({"name": "t", "steps": [step]}).as_object().unwrap()).unwrap_err().to_string()
    };
    assert!(refuse(json!({"id": "a", "kind": "integration"})).contains("needs call"));
    let e = refuse(
        json!({"id": "a", "kind": "integration", "call": {"service": "graph", "method": "Nope", "request": "{}"}}),
    );
    assert!(e.starts_with("definition.steps[0].call") && e.contains("AddNode"), "{e}");
    let e = refuse(
        json!({"id": "a", "kind": "integration", "call": {"service": "graph", "method": "AddNode", "request": "{"}}),
    );
    assert!(e.starts_with("definition.steps[0].call.request"), "{e}");
    let e = refuse(json!({"id": "a", "kind": "wait_event", "event": {"subject": "graph.evt"}}));
    assert!(e.starts_with("definition.steps[0].event.subject"), "{e}");
    // A stream the listener does not consume would never deliver: refused, not left waiting.
    let e = refuse(json!({"id": "a", "kind": "wait_event", "event": {"subject": "webhook.evt.>"}}));
    assert!(e.starts_with("definition.steps[0].event.subject") && e.contains("not listened to"), "{e}");
    let e = refuse(json!({"id": "a", "kind": "automated", "task": {}}));
    assert!(e.contains("only for agent_task"), "{e}");
    let trigger = |t: Value| {
        Definition::parse(
            json!({"name": "t", "steps": [{"id": "a", "kind": "parallel"}], "triggers": [t]}).as_object().unwrap(),
        )
    };
    assert!(trigger(json!({"subject": "document.evt.document.*.document_state_changed", "condition": "event.payload.to == 'in_review'"})).is_ok());
    let e = trigger(json!({"subject": "workflow.evt.>"})).unwrap_err().to_string();
    assert!(e.starts_with("definition.triggers[0].subject"), "{e}");
    let e = trigger(json!({"subject": "graph.evt.>", "aggregate_id": "x"})).unwrap_err().to_string();
    assert!(e.contains("only for wait_event"), "{e}");
}

#[test]
fn a_started_create_runs_its_first_tick_in_the_same_write() {
    let definition = definition(json!([
        {"id": "a", "kind": "automated", "set": {"x": "'1'"}},
        {"id": "b", "kind": "automated", "depends_on": ["a"], "set": {"y": "x + '2'"}},
        {"id": "wait", "kind": "timer", "depends_on": ["b"], "sleep_ms": 1000},
    ]));
    let create = |start| WorkflowCommand::Create {
        definition_id: AggregateId::new(),
        content_id: definition.content_id(),
        definition: definition.clone(),
        context: Map::new(),
        start,
    };
    let mut w = Workflow::default();
    let tick = Tick { instance: instance_id(), now: t0(), jitter: 0.0 };
    let events = run(&mut w, &create(Some(tick)), &()).unwrap();
    let types: Vec<_> = events.iter().map(WorkflowEvent::event_type).collect();
    assert_eq!(&types[..2], ["workflow_created", "workflow_started"]);
    assert_eq!(status(&w, "a"), StepStatus::Completed);
    assert_eq!(status(&w, "b"), StepStatus::Completed);
    assert_eq!(w.context.get("y"), Some(&json!("12")));
    // The timer the tick started fires a second after the tick, not after some later claim.
    assert_eq!(w.next_due(), Some(t0() + Duration::seconds(1)));
    assert!(advance(&mut w, t0() + Duration::milliseconds(999)).is_empty());
    assert!(advance(&mut w, t0() + Duration::seconds(1)).contains(&"workflow_completed"));

    // The same create as a draft decides nothing beyond itself.
    let mut draft = Workflow::default();
    assert_eq!(run(&mut draft, &create(None), &()).unwrap().len(), 1);
    assert_eq!(draft.status, WorkflowStatus::Draft);
}
