//! Leases and their ends: a worker killed mid-task loses the task to another agent after the
//! lease and the task completes once; two agents racing to complete one task; heartbeats keeping
//! a long task without an event each; deadlines; cancellation reaching the worker.

use cim_core::TenantId;
use cim_proto::agent as pb;
use cim_testkit::domain::req;
use serde_json::json;

use crate::stream;
use crate::support::*;
use crate::worker::Worker;
use crate::{submit_with, until_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_task_loses_it_to_another_agent_and_it_completes_once() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let doomed = active(&mut c, tenant, &["text.reverse"], 1).await;
    let survivor = active(&mut c, tenant, &["text.reverse"], 1).await;
    let mut first = Worker::start(&svc, tenant, &doomed, &[]).await;
    let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "lease", "delay_ms": 1500}), 0).await;
    first.expect(&format!("assigned {task}")).await;
    first.kill().await;
    // Its stream broke: the agent is offline, and the task waits out the lease.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while get_agent(&mut c, tenant, &doomed).await.state != "offline" {
        assert!(tokio::time::Instant::now() < deadline, "the killed worker's agent never went offline");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut second = Worker::start(&svc, tenant, &survivor, &[]).await;
    let line = second.expect(&format!("assigned {task}")).await;
    assert!(line.ends_with("attempt=2"), "{line}");
    let done = until_state(&mut c, tenant, &task, "completed").await;
    assert_eq!((done.holder.as_str(), done.attempts), (survivor.as_str(), 2));
    // Heartbeats may have extended the second lease; nothing else happened.
    let mut history = svc.history(tenant, &task).await;
    history.retain(|e| e != "task_lease_extended");
    assert_eq!(history, ["task_submitted", "task_assigned", "task_reassigned", "task_assigned", "task_completed"]);
    let reassigned = svc.running.store.history(tenant, task.parse().unwrap()).await.unwrap()[2].payload.clone();
    assert_eq!(reassigned["from"], json!(doomed));
    assert!(reassigned["reason"].as_str().unwrap().starts_with(&format!("the lease of agent {doomed} lapsed")));
    assert_eq!(svc.history(tenant, &doomed).await.last().map(String::as_str), Some("agent_went_offline"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_agents_racing_to_complete_a_task_only_its_holder_wins() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    // a covers more than the task needs: once b is connected, routing prefers b.
    let a = active(&mut c, tenant, &["math.sum", "text.reverse"], 1).await;
    let b = active(&mut c, tenant, &["text.reverse"], 1).await;
    let mut first = stream::open(&mut c, tenant, stream::hello(&a)).await.unwrap();
    let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "race"}), 0).await;
    assert_eq!(first.assignment().await.task_id, task);
    let mut second = stream::open(&mut c, tenant, stream::hello(&b)).await.unwrap();

    // Both send a result: the holder's is taken, the other's refused.
    second.send(stream::complete(&task, json!({"text": "b"}))).await;
    assert_eq!(second.answer().await.0, "failed_precondition");
    // The first stays alive but stops naming the task: its lease lapses and the task goes to b.
    first.keep(&[]);
    assert_eq!(first.cancellation().await.cause, "lease_lapsed");
    let taken = second.assignment().await;
    assert_eq!((taken.task_id.as_str(), taken.attempt), (task.as_str(), 2));
    second.keep(&[&task]);
    // Too late for a: refused, though its stream is fine.
    first.send(stream::complete(&task, json!({"text": "a"}))).await;
    let refused = first.reply().await.refusal.expect("refused");
    assert_eq!(refused.code, "failed_precondition");
    assert!(refused.message.contains(&format!("held by agent {b}")), "{}", refused.message);
    // Heartbeats stop naming it with the result (one naming a finished task gets it cancelled).
    second.keep(&[]);
    second.send(stream::complete(&task, json!({"text": "b"}))).await;
    assert_eq!(second.answer().await.0, "");
    second.send(stream::complete(&task, json!({"text": "b again"}))).await;
    assert_eq!(second.answer().await.0, "failed_precondition");

    let history = svc.history(tenant, &task).await;
    assert_eq!(history.iter().filter(|e| *e == "task_completed").count(), 1, "{history:?}");
    let done = get_task(&mut c, tenant, &task).await;
    assert_eq!((done.state.as_str(), done.holder.as_str()), ("completed", b.as_str()));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_keep_a_task_longer_than_its_lease_without_an_event_each() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["math.sum"], 1).await;
    let mut worker = Worker::start(&svc, tenant, &agent, &[]).await;
    // Three leases long, with a heartbeat every tenth of a second.
    let task = submit_with(&mut c, tenant, &["math.sum"], json!({"numbers": [1, 2], "delay_ms": 6000}), 0).await;
    let done = until_state(&mut c, tenant, &task, "completed").await;
    assert_eq!((done.attempts, done.holder.as_str()), (1, agent.as_str()));
    worker.expect(&format!("accepted {task}")).await;
    let history = svc.history(tenant, &task).await;
    let extensions = history.iter().filter(|e| *e == "task_lease_extended").count();
    // About one per half lease (6 s / 1 s), against some 60 heartbeats.
    assert!((4..=12).contains(&extensions), "{extensions} extensions: {history:?}");
    assert!(!history.contains(&"task_reassigned".to_owned()));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_time_tasks_out_whether_queued_or_held() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;
    // Declared by a registered agent, but no worker of it is connected: it waits, then times out.
    active(&mut c, tenant, &["math.sum"], 1).await;
    let soon = || Some(cim_runtime::edge::timestamp(chrono::Utc::now() + chrono::Duration::milliseconds(800)));
    let waiting = pb::SubmitTaskRequest { deadline: soon(), ..submit(&["math.sum"]) };
    let waiting = c.submit_task(req(tenant, waiting)).await.unwrap().into_inner().id;
    let mut worker = Worker::start(&svc, tenant, &agent, &[]).await;
    let payload = cim_proto::json::json_to_struct(json!({"text": "slow", "delay_ms": 5000}).as_object().unwrap());
    let held = pb::SubmitTaskRequest { deadline: soon(), payload: Some(payload), ..submit(&["text.reverse"]) };
    let held = c.submit_task(req(tenant, held)).await.unwrap().into_inner().id;
    worker.expect(&format!("assigned {held}")).await;

    until_state(&mut c, tenant, &waiting, "timed_out").await;
    assert_eq!(svc.history(tenant, &waiting).await, ["task_submitted", "task_timed_out"]);
    until_state(&mut c, tenant, &held, "timed_out").await;
    // The holder is told, and stops.
    worker.expect(&format!("cancelled {held} timed_out")).await;
    worker.expect(&format!("stopped {held}")).await;
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 0);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_task_is_cancelled_at_its_worker_and_frees_the_slot() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;
    let mut worker = Worker::start(&svc, tenant, &agent, &[]).await;
    let long = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "long", "delay_ms": 20000}), 0).await;
    worker.expect(&format!("assigned {long}")).await;
    let next = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "next"}), 0).await;
    let cancel = pb::CancelTaskRequest { task_id: long.clone(), reason: "changed my mind".into(), options: None };
    c.cancel_task(req(tenant, cancel)).await.unwrap();
    worker.expect(&format!("cancelled {long} cancelled")).await;
    worker.expect(&format!("stopped {long}")).await;
    // The slot it held takes the next task.
    let done = until_state(&mut c, tenant, &next, "completed").await;
    assert_eq!(done.holder, agent);
    assert_eq!(svc.history(tenant, &long).await, ["task_submitted", "task_assigned", "task_cancelled"]);
    svc.stop().await;
}
