//! The task's one-statement path (submissions, assignments and completions written by one
//! guarded statement, many tasks at once) against the read path: the same rows, and the same
//! refusals.

use chrono::{DateTime, Duration, Utc};
use cim_agent::names::parse_names;
use cim_agent::projection::TaskProjection;
use cim_agent::task::{Submission, Task, TaskCommand, TaskResult, TaskStatement};
use cim_aggregate::{CommandExecutor, ExecutorError};
use cim_core::{AggregateId, TenantId};
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;

use crate::support::*;

/// The number `cim_one_statement_writes_total{service, outcome}` shows in this process.
fn writes(service: &str, outcome: &str) -> u64 {
    let rendered = cim_runtime::metrics::handle().render();
    rendered
        .lines()
        .filter(|l| l.starts_with("cim_one_statement_writes_total{"))
        .filter(|l| l.contains(&format!("service=\"{service}\"")) && l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Submits, assigns (with the attempts the queue would show) and completes a task through
/// `executor`; the task's id.
async fn through(
    executor: &CommandExecutor<Task>,
    caller: &Caller,
    agent: AggregateId,
    deadline: DateTime<Utc>,
) -> String {
    let id = AggregateId::new();
    let submission = Submission {
        required_capabilities: parse_names("required_capabilities", &["ocr".into()]).unwrap(),
        payload: serde_json::json!({"page": 1}).as_object().unwrap().clone(),
        priority: 3,
        deadline: Some(deadline),
        correlation: "statement".into(),
    };
    let run = |command: TaskCommand| async move { executor.execute(caller, id, &command, &Default::default()).await };
    run(TaskCommand::Submit { submission, now: Utc::now() }).await.unwrap();
    let now = Utc::now();
    run(TaskCommand::Assign { agent, lease_until: now + Duration::seconds(60), now, attempts: Some(0) }).await.unwrap();
    let result = TaskResult::Value(serde_json::json!({"text": "done", "n": 1.5}).as_object().unwrap().clone());
    run(TaskCommand::Complete { agent, result, now: Utc::now() }).await.unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignments_and_completions_in_one_statement_write_what_the_read_path_writes() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    // No worker connects, so the service's dispatcher leaves these tasks alone.
    let agent = active(&mut c, tenant, &["ocr"], 4).await;
    let agent_id: AggregateId = agent.parse().unwrap();
    let caller = Caller { tenant, actor: cim_core::Actor::service("dispatcher"), correlation: None };
    let store = svc.running.store.clone();
    // Labels of their own: the counters show which path each took.
    let one = CommandExecutor::<Task>::new(store.clone(), "agent_one_statement_test")
        .with_projection(TaskProjection)
        .with_one_statement(TaskStatement);
    let read = CommandExecutor::<Task>::new(store, "agent_read_path_test").with_projection(TaskProjection);

    let deadline = Utc::now() + Duration::hours(1);
    let fast = through(&one, &caller, agent_id, deadline).await;
    assert_eq!(writes("agent_one_statement_test", "hit"), 3, "submitted, assigned and completed in one statement each");
    let slow = through(&read, &caller, agent_id, deadline).await;
    let blank = |mut t: cim_proto::agent::Task| {
        (t.task_id, t.created_at, t.updated_at) = (String::new(), None, None);
        t
    };
    let (fast_row, slow_row) = (get_task(&mut c, tenant, &fast).await, get_task(&mut c, tenant, &slow).await);
    assert_eq!((fast_row.state.as_str(), fast_row.attempts, fast_row.version), ("completed", 1, 3));
    assert_eq!(blank(fast_row), blank(slow_row));
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 0);
    assert_eq!(svc.history(tenant, &fast).await, ["task_submitted", "task_assigned", "task_completed"]);

    // What the assumptions do not cover is refused as the read path refuses it: the statement's
    // guard writes nothing, and the replayed decision says why.
    let id: AggregateId = fast.parse().unwrap();
    let now = Utc::now();
    let again =
        TaskCommand::Assign { agent: agent_id, lease_until: now + Duration::seconds(60), now, attempts: Some(0) };
    let refused = one.execute(&caller, id, &again, &Default::default()).await.unwrap_err();
    assert_eq!(refused.to_string(), "the task is already completed");
    assert!(writes("agent_one_statement_test", "miss") >= 1);

    // Another holder's completion, and the holder's after its lease lapsed.
    let other = AggregateId::new();
    let held = AggregateId::new();
    let submission = Submission {
        required_capabilities: parse_names("required_capabilities", &["ocr".into()]).unwrap(),
        payload: serde_json::Map::new(),
        priority: 0,
        deadline: None,
        correlation: String::new(),
    };
    one.execute(&caller, held, &TaskCommand::Submit { submission, now }, &Default::default()).await.unwrap();
    let assign =
        TaskCommand::Assign { agent: agent_id, lease_until: now + Duration::seconds(60), now, attempts: Some(0) };
    one.execute(&caller, held, &assign, &Default::default()).await.unwrap();
    let result = || TaskResult::Value(serde_json::Map::new());
    let by_other = TaskCommand::Complete { agent: other, result: result(), now: Utc::now() };
    let refused = one.execute(&caller, held, &by_other, &Default::default()).await.unwrap_err();
    assert!(matches!(refused, ExecutorError::Rule(_)), "{refused}");
    assert_eq!(refused.code(), cim_core::ErrorCode::FailedPrecondition);
    let late = TaskCommand::Complete { agent: agent_id, result: result(), now: now + Duration::seconds(61) };
    let refused = one.execute(&caller, held, &late, &Default::default()).await.unwrap_err();
    assert!(refused.to_string().starts_with("the lease lapsed at"), "{refused}");
    assert_eq!(get_task(&mut c, tenant, &held.to_string()).await.state, "assigned");
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 1);
    svc.stop().await;
}

/// A submission written with its assignment (one append, one insert of the assigned row) leaves
/// the same task row and load as a submission and an assignment written apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_written_with_its_assignment_projects_what_two_writes_project() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    // No worker connects, so the service's dispatcher leaves these tasks alone.
    let agent = active(&mut c, tenant, &["ocr"], 4).await;
    let agent_id: AggregateId = agent.parse().unwrap();
    let caller = Caller { tenant, actor: cim_core::Actor::service("dispatcher"), correlation: None };
    let tasks = CommandExecutor::<Task>::new(svc.running.store.clone(), "agent").with_projection(TaskProjection);
    let one = CommandExecutor::<Task>::new(svc.running.store.clone(), "agent_one_statement_submit_test")
        .with_projection(TaskProjection)
        .with_one_statement(TaskStatement);
    let submission = Submission {
        required_capabilities: parse_names("required_capabilities", &["ocr".into()]).unwrap(),
        payload: serde_json::json!({"page": 2}).as_object().unwrap().clone(),
        priority: 7,
        deadline: Some(Utc::now() + Duration::hours(1)),
        correlation: "together".into(),
    };
    let now = Utc::now();
    let lease_until = now + Duration::seconds(60);
    let (together, apart, grouped) = (AggregateId::new(), AggregateId::new(), AggregateId::new());
    let both = TaskCommand::SubmitAndAssign { submission: submission.clone(), now, agent: agent_id, lease_until };
    let done = tasks.execute(&caller, together, &both, &Default::default()).await.unwrap();
    assert_eq!(done.events.len(), 2);
    let done = one.execute(&caller, grouped, &both, &Default::default()).await.unwrap();
    assert_eq!((done.events.len(), done.version), (2, 2));
    assert_eq!(writes("agent_one_statement_submit_test", "hit"), 1, "submitted and assigned by one group statement");
    tasks.execute(&caller, apart, &TaskCommand::Submit { submission, now }, &Default::default()).await.unwrap();
    let assign = TaskCommand::Assign { agent: agent_id, lease_until, now, attempts: None };
    tasks.execute(&caller, apart, &assign, &Default::default()).await.unwrap();

    let blank = |mut t: cim_proto::agent::Task| {
        (t.task_id, t.created_at, t.updated_at) = (String::new(), None, None);
        t
    };
    let row = get_task(&mut c, tenant, &together.to_string()).await;
    assert_eq!(
        (row.state.as_str(), row.holder.as_str(), row.attempts, row.version),
        ("assigned", agent.as_str(), 1, 2)
    );
    assert_eq!(blank(row.clone()), blank(get_task(&mut c, tenant, &apart.to_string()).await));
    assert_eq!(blank(row), blank(get_task(&mut c, tenant, &grouped.to_string()).await));
    assert_eq!(svc.history(tenant, &together.to_string()).await, ["task_submitted", "task_assigned"]);
    assert_eq!(svc.history(tenant, &grouped.to_string()).await, ["task_submitted", "task_assigned"]);
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 3);
    svc.stop().await;
}

/// A submission under an id that exists, or that another process creates at the same moment,
/// is written once: the group statement's guard (no row) or the events' sequence key turns the
/// second away, and the locked path names it as existing. Neither fails the other commands of
/// its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_under_a_taken_id_is_refused_as_existing_and_written_once() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let caller = Caller { tenant, actor: cim_core::Actor::service("test"), correlation: None };
    // Two executors: two processes' group writers, neither knowing the other's heads.
    let executor = || {
        CommandExecutor::<Task>::new(svc.running.store.clone(), "agent_one_statement_race_test")
            .with_projection(TaskProjection)
            .with_one_statement(TaskStatement)
    };
    let (first, second) = (executor(), executor());
    let submit = |n: u32| TaskCommand::Submit {
        submission: Submission {
            required_capabilities: parse_names("required_capabilities", &["ocr".into(), "de".into()]).unwrap(),
            payload: serde_json::json!({"n": n}).as_object().unwrap().clone(),
            priority: n,
            deadline: None,
            correlation: format!("race {n}"),
        },
        now: Utc::now(),
    };

    // An id that exists: the guard finds its row.
    let taken = AggregateId::new();
    first.execute(&caller, taken, &submit(1), &Default::default()).await.unwrap();
    let refused = second.execute(&caller, taken, &submit(2), &Default::default()).await.unwrap_err();
    assert!(matches!(refused, ExecutorError::Exists(..)), "{refused}");
    assert_eq!(refused.code(), cim_core::ErrorCode::AlreadyExists);

    // Ids created by both at once, each beside other submissions of its own group.
    let none = cim_aggregate::CommandOptions::default();
    for _ in 0..20 {
        let contested = AggregateId::new();
        let (a, b, c1, c2) = (AggregateId::new(), AggregateId::new(), AggregateId::new(), AggregateId::new());
        let (s1, s2) = (submit(3), submit(4));
        let (x, y, z, w) = (submit(5), submit(6), submit(7), submit(8));
        let (r1, r2, ra, rb, rc, rd) = tokio::join!(
            first.execute(&caller, contested, &s1, &none),
            second.execute(&caller, contested, &s2, &none),
            first.execute(&caller, a, &x, &none),
            second.execute(&caller, b, &y, &none),
            first.execute(&caller, c1, &z, &none),
            second.execute(&caller, c2, &w, &none),
        );
        for other in [ra, rb, rc, rd] {
            other.expect("a submission beside the contested one is written");
        }
        let (won, lost) = match (r1, r2) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            (r1, r2) => panic!("exactly one creates the task: {r1:?} / {r2:?}"),
        };
        assert_eq!(won.version, 1);
        assert!(matches!(lost, ExecutorError::Exists(..)), "{lost}");
        assert_eq!(svc.history(tenant, &contested.to_string()).await, ["task_submitted"]);
    }
    let row = get_task(&mut c, tenant, &taken.to_string()).await;
    assert_eq!((row.state.as_str(), row.priority, row.correlation.as_str()), ("queued", 1, "race 1"));
    assert_eq!(row.required_capabilities, ["de", "ocr"]);
    svc.stop().await;
}
