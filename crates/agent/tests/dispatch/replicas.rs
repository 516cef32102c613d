//! Two replicas of the service over one schema and stream: each task is assigned once however
//! the two race for it, work submitted or cancelled through one reaches workers connected to the
//! other (through the domain stream, not the slow re-scan), and an agent has one stream across
//! both.

use std::time::Duration;

use cim_agent::dispatch::DispatchOptions;
use cim_core::TenantId;
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_testkit::domain::req;
use serde_json::json;
use tonic::Code;

use crate::stream::{self, hello};
use crate::support::*;
use crate::worker::Worker;
use crate::{submit_with, until_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_assign_each_task_once_and_hear_each_others_work() {
    // A re-scan too slow for the test's patience: what crosses replicas comes through NATS.
    let options = DispatchOptions { rescan_interval: Duration::from_secs(120), ..fast() };
    let svc = Service::start_with(options.clone()).await;
    let other = svc.replica(options).await;
    let (mut one, mut two) = (svc.client().await, AgentServiceClient::new(other.channel().await));
    let tenant = TenantId::new();
    let a = active(&mut one, tenant, &["math.sum", "text.reverse"], 4).await;
    let b = active(&mut one, tenant, &["text.reverse"], 4).await;

    // Only a's worker, on the first: a task submitted through the second reaches it at once.
    let mut worker_a = Worker::start_at(&svc.running, tenant, &a, &[]).await;
    let started = tokio::time::Instant::now();
    let crossing = submit_with(&mut two, tenant, &["text.reverse"], json!({"text": "over"}), 0).await;
    until_state(&mut one, tenant, &crossing, "completed").await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    // Workers on both; both replicas race for every task, whichever took the submission.
    let _worker_b = Worker::start_at(&other, tenant, &b, &[]).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let via = if i % 2 == 0 { &mut one } else { &mut two };
        tasks.push(submit_with(via, tenant, &["text.reverse"], json!({"text": i.to_string()}), 0).await);
    }
    let mut holders = std::collections::BTreeSet::new();
    for task in &tasks {
        holders.insert(until_state(&mut one, tenant, task, "completed").await.holder);
        let history = svc.history(tenant, task).await;
        assert_eq!(history, ["task_submitted", "task_assigned", "task_completed"], "{task}");
    }
    assert_eq!(holders.len(), 2, "both replicas' agents took work");

    // Cancelled through the second: the worker on the first is told.
    let long = submit_with(&mut two, tenant, &["math.sum"], json!({"numbers": [1], "delay_ms": 20000}), 0).await;
    worker_a.expect(&format!("assigned {long}")).await;
    let cancel = pb::CancelTaskRequest { task_id: long.clone(), reason: String::new(), options: None };
    two.cancel_task(req(tenant, cancel)).await.unwrap();
    worker_a.expect(&format!("cancelled {long} cancelled")).await;
    other.stop_replica().await;
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_on_another_replica_replaces_the_older_one_and_the_agent_stays_active() {
    let svc = Service::start().await;
    let other = svc.replica(fast()).await;
    let (mut one, mut two) = (svc.client().await, AgentServiceClient::new(other.channel().await));
    let tenant = TenantId::new();
    let agent = active(&mut one, tenant, &["text.reverse"], 1).await;
    let old = stream::open(&mut one, tenant, hello(&agent)).await.unwrap();
    let mut new = stream::open(&mut two, tenant, hello(&agent)).await.unwrap();
    assert_eq!(old.ended().await.code(), Code::Aborted);
    // Replaced, not lost: no offline, and the new stream is given the work.
    let task = submit_with(&mut one, tenant, &["text.reverse"], json!({"text": "x"}), 0).await;
    assert_eq!(new.assignment().await.task_id, task);
    assert!(!svc.history(tenant, &agent).await.contains(&"agent_went_offline".to_owned()));
    assert_eq!(get_agent(&mut one, tenant, &agent).await.state, "active");
    other.stop_replica().await;
    svc.stop().await;
}
