//! The task's rules, decided and applied without any I/O; time is whatever each command says.

use chrono::{Duration, Utc};
use cim_aggregate::Aggregate;
use cim_core::ErrorCode;
use cim_runtime::status::HasErrorCode;
use serde_json::json;

use super::*;

fn run(task: &mut Task, command: TaskCommand) -> Result<Vec<TaskEvent>, TaskError> {
    let events = task.decide(&command, &())?;
    for event in &events {
        let stored = crate::through_the_store(event, AGGREGATE_TYPE);
        assert_eq!(&stored, event);
        task.apply(&stored);
    }
    Ok(events)
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn submission() -> Submission {
    Submission {
        required_capabilities: ["ocr".parse().unwrap()].into(),
        payload: json!({"document": "0190a5b2-7c3e-7000-8000-000000000001", "pages": [1, 2]})
            .as_object()
            .unwrap()
            .clone(),
        priority: 5,
        deadline: Some(now() + Duration::hours(1)),
        correlation: "workflow:run-7/step-3".into(),
    }
}

fn submitted() -> Task {
    let mut task = Task::default();
    run(&mut task, TaskCommand::Submit { submission: submission(), now: now() }).unwrap();
    task
}

fn assigned(agent: AggregateId) -> Task {
    let mut task = submitted();
    run(
        &mut task,
        TaskCommand::Assign { agent, lease_until: now() + Duration::seconds(30), now: now(), attempts: None },
    )
    .unwrap();
    task
}

fn complete(agent: AggregateId, at: DateTime<Utc>) -> TaskCommand {
    TaskCommand::Complete {
        agent,
        result: TaskResult::Value(json!({"text": "done"}).as_object().unwrap().clone()),
        now: at,
    }
}

fn fail(agent: AggregateId, at: DateTime<Utc>) -> TaskCommand {
    TaskCommand::Fail { agent, error: "model unavailable".into(), retryable: true, now: at }
}

fn extend(agent: AggregateId, at: DateTime<Utc>) -> TaskCommand {
    TaskCommand::ExtendLease { agent, lease_until: at + Duration::seconds(60), now: at }
}

/// A task in each state, with its holder (if it has one).
fn task_in(state: TaskState, agent: AggregateId) -> Task {
    let mut task = match state {
        TaskState::Queued => return submitted(),
        _ => assigned(agent),
    };
    let step = match state {
        TaskState::Queued | TaskState::Assigned => return task,
        TaskState::Completed => complete(agent, now()),
        TaskState::Failed => fail(agent, now()),
        TaskState::Cancelled => TaskCommand::Cancel { reason: "not needed".into() },
        TaskState::TimedOut => TaskCommand::TimeOut { now: task.deadline.unwrap() + Duration::seconds(1) },
    };
    run(&mut task, step).unwrap();
    assert_eq!(task.state, state);
    task
}

#[test]
fn the_transition_table() {
    use TaskState::*;
    let holder = AggregateId::new();
    let other = AggregateId::new();
    let soon = now() + Duration::seconds(30);
    let assign = TaskCommand::Assign { agent: holder, lease_until: soon, now: now(), attempts: None };
    let cancel = TaskCommand::Cancel { reason: String::new() };
    // (from, command, the state after, or None when refused with FAILED_PRECONDITION)
    let table: Vec<(TaskState, TaskCommand, Option<TaskState>)> = vec![
        (Queued, assign.clone(), Some(Assigned)),
        (Queued, complete(holder, now()), None),
        (Queued, fail(holder, now()), None),
        (Queued, extend(holder, now()), None),
        (Queued, cancel.clone(), Some(Cancelled)),
        (Assigned, assign.clone(), None),
        (Assigned, complete(holder, now()), Some(Completed)),
        (Assigned, complete(other, now()), None),
        (Assigned, fail(holder, now()), Some(Failed)),
        (Assigned, fail(other, now()), None),
        (Assigned, extend(holder, now()), Some(Assigned)),
        (Assigned, extend(other, now()), None),
        (Assigned, cancel.clone(), Some(Cancelled)),
        (Completed, complete(holder, now()), None),
        (Completed, cancel.clone(), None),
        (Completed, assign.clone(), None),
        (Failed, complete(holder, now()), None),
        (Failed, cancel.clone(), None),
        (Cancelled, cancel.clone(), None),
        (Cancelled, assign, None),
        (TimedOut, complete(holder, now()), None),
        (TimedOut, cancel, None),
        (TimedOut, TaskCommand::TimeOut { now: now() }, None),
    ];
    for (from, command, want) in table {
        let mut task = task_in(from, holder);
        let got = run(&mut task, command.clone());
        match want {
            Some(to) => {
                got.unwrap_or_else(|e| panic!("{from:?} {command:?}: {e}"));
                assert_eq!(task.state, to, "{from:?} {command:?}");
            }
            None => {
                let e = got.unwrap_err();
                assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{from:?} {command:?}: {e}");
                assert_eq!(task.state, from);
            }
        }
    }
}

#[test]
fn a_task_completes_exactly_once() {
    let holder = AggregateId::new();
    let mut task = assigned(holder);
    run(&mut task, complete(holder, now())).unwrap();
    assert_eq!(run(&mut task, complete(holder, now())).unwrap_err(), TaskError::Finished("completed"));
    assert_eq!(run(&mut task, fail(holder, now())).unwrap_err(), TaskError::Finished("completed"));
    assert_eq!(task.holder, Some(holder), "the task remembers who completed it");
}

#[test]
fn a_lapsed_lease_refuses_the_old_holder_and_allows_reassignment() {
    let (first, second) = (AggregateId::new(), AggregateId::new());
    let mut task = assigned(first);
    let lapsed = now() + Duration::seconds(31);
    // While the lease runs, nobody may take the task away.
    let early = TaskCommand::Reassign {
        to: Some(second),
        reason: "agent offline".into(),
        lease_until: Some(now() + Duration::seconds(30)),
        now: now(),
    };
    assert!(matches!(run(&mut task, early).unwrap_err(), TaskError::LeaseRunning(_)));
    // After it lapsed, the old holder can neither heartbeat nor finish.
    assert!(matches!(run(&mut task, extend(first, lapsed)).unwrap_err(), TaskError::LeaseLapsed(_)));
    assert!(matches!(run(&mut task, complete(first, lapsed)).unwrap_err(), TaskError::LeaseLapsed(_)));
    let reassign = TaskCommand::Reassign {
        to: Some(second),
        reason: "lease lapsed".into(),
        lease_until: Some(lapsed + Duration::seconds(30)),
        now: lapsed,
    };
    let events = run(&mut task, reassign).unwrap();
    assert!(matches!(&events[0], TaskEvent::Reassigned(e) if e.from == first && e.to == Some(second)));
    assert_eq!((task.holder, task.attempts), (Some(second), 2));
    assert_eq!(
        run(&mut task, complete(first, lapsed)).unwrap_err(),
        TaskError::NotHolder { holder: second, agent: first }
    );
    run(&mut task, extend(second, lapsed)).unwrap();
    run(&mut task, complete(second, lapsed)).unwrap();
}

#[test]
fn a_lapsed_task_may_go_back_to_the_queue() {
    let agent = AggregateId::new();
    let mut task = assigned(agent);
    let later = now() + Duration::seconds(45);
    let back = TaskCommand::Reassign { to: None, reason: "no agent free".into(), lease_until: None, now: later };
    let events = run(&mut task, back).unwrap();
    assert!(matches!(&events[0], TaskEvent::Reassigned(e) if e.from == agent && e.to.is_none()));
    assert_eq!((task.state, task.holder, task.lease_until), (TaskState::Queued, None, None));
    let again = TaskCommand::Assign { agent, lease_until: later + Duration::seconds(30), now: later, attempts: None };
    assert!(matches!(&run(&mut task, again).unwrap()[0], TaskEvent::Assigned(e) if e.attempt == 2));
    let half = TaskCommand::Reassign { to: Some(agent), reason: String::new(), lease_until: None, now: later };
    assert!(matches!(run(&mut task, half).unwrap_err(), TaskError::Invalid { field: "lease_until", .. }));
}

#[test]
fn deadlines_time_tasks_out() {
    let agent = AggregateId::new();
    let at = now();
    let mut task = Task::default();
    let soon = Submission { deadline: Some(at + Duration::seconds(10)), ..submission() };
    run(&mut task, TaskCommand::Submit { submission: soon, now: at }).unwrap();
    // The lease may run past the deadline; the deadline still wins.
    run(&mut task, TaskCommand::Assign { agent, lease_until: at + Duration::seconds(30), now: at, attempts: None })
        .unwrap();
    assert_eq!(run(&mut task, TaskCommand::TimeOut { now: at }).unwrap_err(), TaskError::DeadlineAhead);
    let past = at + Duration::seconds(11);
    assert!(matches!(run(&mut task, complete(agent, past)).unwrap_err(), TaskError::DeadlinePassed(_)));
    assert!(matches!(run(&mut task, extend(agent, past)).unwrap_err(), TaskError::DeadlinePassed(_)));
    let events = run(&mut task, TaskCommand::TimeOut { now: past }).unwrap();
    assert!(matches!(&events[0], TaskEvent::TimedOut(e) if e.holder == Some(agent)));
    // A queued task past its deadline is not assigned.
    let mut queued = submitted();
    let past = queued.deadline.unwrap();
    let late = TaskCommand::Assign { agent, lease_until: past + Duration::seconds(30), now: past, attempts: None };
    assert!(matches!(run(&mut queued, late).unwrap_err(), TaskError::DeadlinePassed(_)));
    // A task without a deadline never times out.
    let mut open = Task::default();
    let forever = Submission { deadline: None, ..submission() };
    run(&mut open, TaskCommand::Submit { submission: forever, now: at }).unwrap();
    let far = TaskCommand::TimeOut { now: at + Duration::days(3650) };
    assert_eq!(run(&mut open, far).unwrap_err(), TaskError::DeadlineAhead);
}

#[test]
fn cancelling_a_held_task_names_the_holder_to_tell() {
    let agent = AggregateId::new();
    let mut task = assigned(agent);
    let events = run(&mut task, TaskCommand::Cancel { reason: "superseded".into() }).unwrap();
    assert!(matches!(&events[0], TaskEvent::Cancelled(e) if e.holder == Some(agent)));
    let mut queued = submitted();
    let events = run(&mut queued, TaskCommand::Cancel { reason: String::new() }).unwrap();
    assert!(matches!(&events[0], TaskEvent::Cancelled(e) if e.holder.is_none()));
}

#[test]
fn bad_input_names_its_field() {
    let at = now();
    let with = |change: fn(&mut Submission)| {
        let mut s = submission();
        change(&mut s);
        TaskCommand::Submit { submission: s, now: at }
    };
    let cases: Vec<(TaskCommand, &str)> = vec![
        (with(|s| s.priority = PRIORITY_MAX + 1), "priority"),
        (with(|s| s.deadline = Some(Utc::now() - Duration::seconds(1))), "deadline"),
        (with(|s| s.correlation = "a\u{0}b".into()), "correlation"),
        (with(|s| s.correlation = "x".repeat(201)), "correlation"),
        (with(|s| drop(s.payload.insert("k".into(), json!("nul \u{0}")))), "payload"),
        (with(|s| drop(s.payload.insert("deep".into(), (0..40).fold(json!(1), |v, _| json!([v]))))), "payload"),
        (with(|s| drop(s.payload.insert("big".into(), json!("x".repeat(300 * 1024))))), "payload"),
        (
            with(|s| s.required_capabilities = (0..=REQUIRED_MAX).map(|i| format!("c{i}").parse().unwrap()).collect()),
            "required_capabilities",
        ),
    ];
    for (command, field) in cases {
        match Task::default().decide(&command, &()) {
            Err(e @ TaskError::Invalid { .. }) => {
                assert_eq!(e.violations()[0].field, field);
                assert_eq!(e.code(), ErrorCode::InvalidArgument);
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    let agent = AggregateId::new();
    let task = assigned(agent);
    let decide = |c: TaskCommand| task.decide(&c, &()).unwrap_err();
    let far = TaskCommand::ExtendLease { agent, lease_until: at + Duration::hours(25), now: at };
    assert!(matches!(decide(far), TaskError::Invalid { field: "lease_until", .. }));
    let shorter = TaskCommand::ExtendLease { agent, lease_until: at + Duration::seconds(1), now: at };
    assert!(matches!(decide(shorter), TaskError::Invalid { field: "lease_until", .. }));
    let bad_cid = TaskCommand::Complete { agent, result: TaskResult::Document("bafy-nope".into()), now: at };
    assert!(matches!(decide(bad_cid), TaskError::Invalid { field: "result_cid", .. }));
    let blank = TaskCommand::Fail { agent, error: " ".into(), retryable: false, now: at };
    assert!(matches!(decide(blank), TaskError::Invalid { field: "error", .. }));
}

#[test]
fn a_result_may_be_a_document() {
    let agent = AggregateId::new();
    let mut task = assigned(agent);
    // A CID as the document service names content: v1, raw codec, BLAKE3 multihash.
    let digest = cid::multihash::Multihash::<64>::wrap(0x1e, &[7; 32]).unwrap();
    let cid = cid::Cid::new_v1(0x55, digest).to_string();
    assert_eq!(canonical_cid(&cid).as_ref(), Ok(&cid));
    let sha = cid::multihash::Multihash::<64>::wrap(0x12, &[7; 32]).unwrap();
    let v0 = cid::Cid::new_v0(sha).unwrap().to_string();
    assert_eq!(canonical_cid(&v0), Err("expected a CIDv1".to_owned()));
    let done = TaskCommand::Complete { agent, result: TaskResult::Document(cid.clone()), now: now() };
    let events = run(&mut task, done).unwrap();
    let stored = events[0].to_new_event().payload;
    assert_eq!(stored["result_cid"], cid, "{stored}");
    assert!(stored.get("result").is_none());
}

#[test]
fn names_are_one_list() {
    for s in TaskState::ALL {
        assert_eq!(TaskState::parse(s.as_str()), Some(*s));
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
    assert_eq!(TaskEvent::TYPES.len(), 8);
}

#[test]
fn a_submission_assigned_as_it_is_written_is_the_same_two_events_as_submit_then_assign() {
    let agent = AggregateId::new();
    let at = now();
    let the_submission = super::tests::submission();
    let lease_until = at + Duration::seconds(30);
    let submission = || the_submission.clone();
    let mut together = Task::default();
    let events =
        run(&mut together, TaskCommand::SubmitAndAssign { submission: submission(), now: at, agent, lease_until })
            .unwrap();
    let mut apart = Task::default();
    let mut expected = run(&mut apart, TaskCommand::Submit { submission: submission(), now: at }).unwrap();
    expected.extend(run(&mut apart, TaskCommand::Assign { agent, lease_until, now: at, attempts: None }).unwrap());
    assert_eq!(events, expected);
    assert_eq!(together, apart);
    assert_eq!((together.state, together.holder, together.attempts), (TaskState::Assigned, Some(agent), 1));
    assert!(Task::creates(&TaskCommand::SubmitAndAssign { submission: submission(), now: at, agent, lease_until }));

    // Each half's rules hold: a bad submission or a lease in the past is refused, nothing written.
    let bad = Submission { priority: PRIORITY_MAX + 1, ..submission() };
    let refused =
        Task::default().decide(&TaskCommand::SubmitAndAssign { submission: bad, now: at, agent, lease_until }, &());
    assert!(matches!(refused, Err(TaskError::Invalid { field: "priority", .. })), "{refused:?}");
    let late = TaskCommand::SubmitAndAssign { submission: submission(), now: at, agent, lease_until: at };
    assert!(matches!(Task::default().decide(&late, &()), Err(TaskError::Invalid { field: "lease_until", .. })));
}
