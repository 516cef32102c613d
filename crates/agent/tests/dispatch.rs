//! The dispatcher end to end: real worker processes (the example agent program) and worker
//! streams spoken from the test, against the agent service over gRPC with real Postgres and NATS.
//! Here: routing through real dispatch, priorities and age, per-agent limits, suspended agents,
//! fairness across tenants. Leases, the stream's rules, conversations, two replicas over one
//! schema and the worker over mTLS are in the modules.

#[path = "../../cim-runtime/tests/support/ca.rs"]
mod ca;
#[path = "support/stream.rs"]
mod stream;
#[path = "support/service.rs"]
mod support;
#[path = "support/worker.rs"]
mod worker;

#[path = "dispatch/conversation.rs"]
mod conversation;
#[path = "dispatch/leases.rs"]
mod leases;
#[path = "dispatch/replicas.rs"]
mod replicas;
#[path = "dispatch/rules.rs"]
mod rules;
#[path = "dispatch/statement.rs"]
mod statement;
#[path = "dispatch/tls.rs"]
mod tls;

use std::time::Duration;

use cim_core::TenantId;
use cim_proto::agent as pb;
use cim_testkit::domain::req;
use serde_json::json;
use support::*;
use worker::Worker;

/// Submits a task needing `names` with `payload` and `priority`.
async fn submit_with(
    c: &mut Client,
    tenant: TenantId,
    names: &[&str],
    payload: serde_json::Value,
    priority: u32,
) -> String {
    let r = pb::SubmitTaskRequest {
        payload: Some(cim_proto::json::json_to_struct(payload.as_object().unwrap())),
        priority,
        ..submit(names)
    };
    c.submit_task(req(tenant, r)).await.unwrap().into_inner().id
}

/// Waits until the task is in `state` (the projection answers), and returns it.
async fn until_state(c: &mut Client, tenant: TenantId, task: &str, state: &str) -> pb::Task {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = get_task(c, tenant, task).await;
        if now.state == state {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "task {task} never became {state}; it is {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn result_of(task: &pb::Task) -> serde_json::Value {
    match &task.result {
        Some(pb::task::Result::ResultValue(v)) => {
            serde_json::Value::Object(cim_proto::json::struct_to_json(Some(v.clone())).unwrap())
        }
        other => panic!("expected a JSON result, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capability_routing_sends_each_task_to_the_least_over_provisioned_connected_agent() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let reverser = active(&mut c, tenant, &["text.reverse"], 4).await;
    let adder = active(&mut c, tenant, &["math.sum"], 4).await;
    let both = active(&mut c, tenant, &["math.sum", "text.reverse"], 4).await;
    let _workers = [
        Worker::start(&svc, tenant, &reverser, &[]).await,
        Worker::start(&svc, tenant, &adder, &[]).await,
        Worker::start(&svc, tenant, &both, &[]).await,
    ];

    let text = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "dispatch"}), 0).await;
    let sum = submit_with(&mut c, tenant, &["math.sum"], json!({"numbers": [1, 2, 39]}), 0).await;
    let mixed = submit_with(&mut c, tenant, &["math.sum", "text.reverse"], json!({"numbers": [5]}), 0).await;
    let done = until_state(&mut c, tenant, &text, "completed").await;
    assert_eq!((done.holder.as_str(), result_of(&done)), (reverser.as_str(), json!({"text": "hctapsid"})));
    let done = until_state(&mut c, tenant, &sum, "completed").await;
    assert_eq!((done.holder.as_str(), result_of(&done)), (adder.as_str(), json!({"sum": 42})));
    // Only the generalist covers both.
    let done = until_state(&mut c, tenant, &mixed, "completed").await;
    assert_eq!(done.holder, both);
    for task in [&text, &sum, &mixed] {
        assert_eq!(svc.history(tenant, task).await, ["task_submitted", "task_assigned", "task_completed"]);
    }
    // The load went back down with each completion.
    for agent in [&reverser, &adder, &both] {
        assert_eq!(get_agent(&mut c, tenant, agent).await.running_tasks, 0);
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_runs_highest_priority_first_then_oldest_within_each_agents_limit() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;
    // Queued before any worker is there: the order is the queue's, not the submissions'.
    let mut tasks = Vec::new();
    for (name, priority) in [("low", 1), ("mid-old", 5), ("high", 9), ("mid-new", 5)] {
        tasks.push((name, submit_with(&mut c, tenant, &["text.reverse"], json!({"text": name}), priority).await));
    }
    let mut worker = Worker::start(&svc, tenant, &agent, &[]).await;
    let mut order = Vec::new();
    for (name, task) in &tasks {
        until_state(&mut c, tenant, task, "completed").await;
        let assigned = worker.expect(&format!("assigned {task}")).await;
        order.push((worker.seen.iter().position(|l| *l == assigned).unwrap(), *name));
    }
    order.sort();
    let names: Vec<&str> = order.iter().map(|(_, n)| *n).collect();
    assert_eq!(names, ["high", "mid-old", "mid-new", "low"]);

    // A limit of 2 and a worker that runs 2 at once: two held, three waiting, until they finish.
    c.set_concurrency_limit(req(
        tenant,
        pb::SetConcurrencyLimitRequest { agent_id: agent.clone(), max_concurrent_tasks: 2, options: None },
    ))
    .await
    .unwrap();
    let mut slow = Vec::new();
    for i in 0..5 {
        let payload = json!({"text": i.to_string(), "delay_ms": 600});
        slow.push(submit_with(&mut c, tenant, &["text.reverse"], payload, 0).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    loop {
        let list = |state: &str| pb::ListTasksRequest { state: state.into(), page: None };
        let held = c.list_tasks(req(tenant, list("assigned"))).await.unwrap().into_inner().tasks.len();
        let completed = c.list_tasks(req(tenant, list("completed"))).await.unwrap().into_inner().tasks.len();
        peak = peak.max(held);
        if completed == tasks.len() + slow.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slow tasks never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peak, 2, "never more than the limit, and the limit used");
    assert!(worker.count("accepted") >= 9);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_slower_than_its_agents_limit_is_given_only_its_own_slots() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 5).await;
    let mut s = stream::open(&mut c, tenant, pb::Hello { free_slots: 1, ..stream::hello(&agent) }).await.unwrap();
    let first = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "a"}), 0).await;
    let second = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "b"}), 0).await;
    assert_eq!(s.assignment().await.task_id, first);
    s.keep(&[&first]);
    assert_eq!(get_task(&mut c, tenant, &second).await.state, "queued");
    s.keep(&[]);
    s.send(stream::complete(&first, json!({"text": "a"}))).await;
    assert_eq!(s.answer().await, (String::new(), String::new()));
    // The slot it freed takes the next one at once.
    assert_eq!(s.assignment().await.task_id, second);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspended_agent_gets_nothing_until_it_is_active_again() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    // Deployed first, so it would win every tie.
    let first = active(&mut c, tenant, &["text.reverse"], 2).await;
    let second = active(&mut c, tenant, &["text.reverse"], 2).await;
    let mut one = stream::open(&mut c, tenant, stream::hello(&first)).await.unwrap();
    let mut two = stream::open(&mut c, tenant, stream::hello(&second)).await.unwrap();
    c.suspend_agent(req(tenant, command(&first))).await.unwrap();

    let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "x"}), 0).await;
    assert_eq!(two.assignment().await.task_id, task);
    two.keep(&[&task]);
    // Active again (its worker never left): the next task is its, the less loaded one.
    c.activate_agent(req(tenant, command(&first))).await.unwrap();
    let next = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "y"}), 0).await;
    assert_eq!(one.assignment().await.task_id, next);
    assert_eq!(get_task(&mut c, tenant, &task).await.holder, second);
    svc.stop().await;
}

/// Each pass gives every tenant at most a turn of tasks: a tenant whose backlog is long does not
/// hold back another's work until it is drained.
///
/// Both agents become active while the test holds the `tasks` table locked, so no pass reads the
/// queue between the two activations (the order they reach the dispatcher in does not matter);
/// the order the assignments were planned in then says whether the quiet tenant had to wait,
/// however fast the passes run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_take_turns_so_one_backlog_does_not_starve_another() {
    let turn = 4;
    let svc = Service::start_with(cim_agent::dispatch::DispatchOptions { turn, ..fast() }).await;
    let mut c = svc.client().await;
    let (busy, quiet) = (TenantId::new(), TenantId::new());
    let crowd = active(&mut c, busy, &["text.reverse"], 1000).await;
    let lone = active(&mut c, quiet, &["text.reverse"], 1000).await;
    let _crowd = stream::open(&mut c, busy, stream::hello(&crowd)).await.unwrap();
    let _lone = stream::open(&mut c, quiet, stream::hello(&lone)).await.unwrap();
    c.suspend_agent(req(busy, command(&crowd))).await.unwrap();
    c.suspend_agent(req(quiet, command(&lone))).await.unwrap();
    let backlog = 120;
    for i in 0..backlog {
        submit_with(&mut c, busy, &["text.reverse"], json!({"text": i.to_string()}), 0).await;
    }
    let mut few = Vec::new();
    for i in 0..8 {
        few.push(submit_with(&mut c, quiet, &["text.reverse"], json!({"text": i.to_string()}), 0).await);
    }
    // The busy tenant's agent goes first; no pass reads the queue until the quiet one's is
    // active too.
    let mut gate = svc.running.pool.begin().await.unwrap();
    let lock = format!("LOCK TABLE {}.tasks IN ACCESS EXCLUSIVE MODE", svc.running.schema);
    sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *gate).await.unwrap();
    c.activate_agent(req(busy, command(&crowd))).await.unwrap();
    c.activate_agent(req(quiet, command(&lone))).await.unwrap();
    gate.commit().await.unwrap();
    for task in &few {
        until_state(&mut c, quiet, task, "assigned").await;
    }
    // In the order the dispatcher planned them: a turn's tasks share the lease it computed when
    // it planned them, and later turns compute later ones. (The event log's order is the order
    // the writes committed, which several group writers may shuffle.)
    let order: Vec<uuid::Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT tenant_id FROM {}.tasks WHERE state = 'assigned' ORDER BY lease_until, tenant_id = $1",
        svc.running.schema
    )))
    .bind(quiet.as_uuid())
    .fetch_all(&svc.running.pool)
    .await
    .unwrap();
    let last_quiet = order.iter().rposition(|t| *t == quiet.as_uuid()).unwrap();
    let busy_before = order[..last_quiet].iter().filter(|t| **t == busy.as_uuid()).count();
    // Two passes give each tenant two turns: 2 × 4 of the busy tenant's before the quiet one's
    // last; one pass more if the first read began before the quiet agent's activation
    // committed; 4 turns as the bound. Waiting for the backlog would be 120.
    assert!(
        busy_before <= 4 * turn,
        "the quiet tenant's 8 tasks waited for {busy_before} of the busy tenant's backlog of {backlog}"
    );
    svc.stop().await;
}

/// With nothing queued that the connected agent could take, a submission is assigned as it is
/// written: `task_submitted` and `task_assigned` in one append (one command: the same causation),
/// the worker told after the commit, and the task's history the same as through the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_with_a_free_agent_and_nothing_waiting_is_assigned_as_it_is_written() {
    // Leases that a loaded machine's pauses do not run out (the test sends no heartbeats for
    // its tasks): a lapse would put the task back in the queue and give it out again.
    let lease = Duration::from_secs(30);
    let svc = Service::start_with(cim_agent::dispatch::DispatchOptions { lease, ..fast() }).await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 2).await;
    let mut s = stream::open(&mut c, tenant, stream::hello(&agent)).await.unwrap();
    // The first ones may go through the queue: the dispatcher assigns at submission only once
    // a pass has read the agent and found the queue empty (and the agent's own events, which
    // the feed brings back, make it read the agent again).
    let mut together = 0;
    for i in 0..20 {
        let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": i.to_string()}), 0).await;
        let assigned = s.assignment().await;
        assert_eq!((assigned.task_id.as_str(), assigned.attempt), (task.as_str(), 1));
        s.send(stream::complete(&task, json!({"text": "done"}))).await;
        assert_eq!(s.answer().await, (String::new(), String::new()));
        assert_eq!(svc.history(tenant, &task).await, ["task_submitted", "task_assigned", "task_completed"]);
        let history = svc.running.store.history(tenant, task.parse().unwrap()).await.unwrap();
        if history[0].causation_id == history[1].causation_id {
            together += 1;
            if together == 3 {
                break;
            }
        }
    }
    assert_eq!(together, 3, "no submission was assigned as it was written");
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 0);
    svc.stop().await;
}
