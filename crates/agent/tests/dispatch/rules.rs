//! The worker stream's rules: who may connect (tenant isolation, agent states), one stream per
//! agent, silence and disconnection take the agent offline, and bad input refused with the code a
//! unary call would get while the stream goes on.

use cim_core::{AggregateId, TenantId};
use cim_proto::agent as pb;
use cim_proto::agent::worker_message::Kind as In;
use cim_testkit::domain::req;
use serde_json::json;
use tonic::Code;

use crate::stream::{self, complete, hello};
use crate::submit_with;
use crate::support::*;

async fn state_of(c: &mut Client, tenant: TenantId, agent: &str) -> String {
    get_agent(c, tenant, agent).await.state
}

/// Waits until the agent is in `state`.
async fn until_agent(c: &mut Client, tenant: TenantId, agent: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while state_of(c, tenant, agent).await != state {
        assert!(tokio::time::Instant::now() < deadline, "agent {agent} never became {state}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_an_active_or_offline_agent_of_the_callers_tenant_connects() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;

    let refused = |r: Result<stream::Stream, tonic::Status>| refusal(&r.err().expect("refused"));
    // Another tenant's agent is not found there, like an unknown one.
    assert_eq!(refused(stream::open(&mut c, TenantId::new(), hello(&agent)).await).0, cim_core::ErrorCode::NotFound);
    let unknown = AggregateId::new().to_string();
    assert_eq!(refused(stream::open(&mut c, tenant, hello(&unknown)).await).0, cim_core::ErrorCode::NotFound);
    assert_eq!(
        refused(stream::open(&mut c, tenant, hello("not-an-id")).await),
        (cim_core::ErrorCode::InvalidArgument, "hello.agent_id".to_owned())
    );
    let first = In::Heartbeat(pb::Heartbeat::default());
    assert_eq!(refused(stream::open_with(&mut c, tenant, first).await).1, "hello");
    let claims = pb::Hello { running_task_ids: vec!["x".into()], ..hello(&agent) };
    assert_eq!(refused(stream::open(&mut c, tenant, claims).await).1, "hello.running_task_ids[0]");
    // No tenant at all.
    let (tx, outgoing) = tokio::sync::mpsc::channel(1);
    tx.send(pb::WorkerMessage { kind: Some(In::Hello(hello(&agent))) }).await.unwrap();
    let anonymous = c.connect_agent(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await;
    assert_eq!(anonymous.err().unwrap().code(), Code::Unauthenticated);

    // Deployed (never activated), suspended and decommissioned agents are refused.
    let deployed = deploy(&mut c, tenant, "new", "system", 1).await;
    let suspended = active(&mut c, tenant, &["text.reverse"], 1).await;
    c.suspend_agent(req(tenant, command(&suspended))).await.unwrap();
    let gone = active(&mut c, tenant, &["text.reverse"], 1).await;
    c.decommission_agent(req(tenant, command(&gone))).await.unwrap();
    for id in [&deployed, &suspended, &gone] {
        let status = stream::open(&mut c, tenant, hello(id)).await.err().expect("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{id}: {status:?}");
    }

    // An offline agent's worker is back: the agent is active again.
    c.mark_agent_offline(req(tenant, command(&agent))).await.unwrap();
    let s = stream::open(&mut c, tenant, hello(&agent)).await.unwrap();
    assert_eq!(state_of(&mut c, tenant, &agent).await, "active");
    assert_eq!(
        (s.welcome.heartbeat_interval_ms, s.welcome.heartbeat_timeout_ms, s.welcome.lease_ms),
        (100, 2000, 2000)
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_stream_per_agent_and_a_lost_or_silent_one_takes_the_agent_offline() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;

    // A newer connection replaces the older, which ends ABORTED; the agent stays active.
    let old = stream::open(&mut c, tenant, hello(&agent)).await.unwrap();
    let mut new = stream::open(&mut c, tenant, hello(&agent)).await.unwrap();
    let replaced = old.ended().await;
    assert_eq!(replaced.code(), Code::Aborted, "{replaced:?}");
    assert_eq!(state_of(&mut c, tenant, &agent).await, "active");
    let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "x"}), 0).await;
    assert_eq!(new.assignment().await.task_id, task);
    new.keep(&[&task]);

    // Its worker reconnects with the task still running: the task stays its own.
    let claims = pb::Hello { running_task_ids: vec![task.clone()], ..hello(&agent) };
    let again = stream::open(&mut c, tenant, claims).await.unwrap();
    assert_eq!(again.welcome.adopted_task_ids, std::slice::from_ref(&task));
    assert_eq!(new.ended().await.code(), Code::Aborted);

    // Closed by the worker: the agent goes offline.
    again.close();
    until_agent(&mut c, tenant, &agent, "offline").await;

    // Silent past the heartbeat timeout: the stream ends DEADLINE_EXCEEDED, the agent is offline.
    let quiet = stream::open(&mut c, tenant, hello(&agent)).await.unwrap();
    assert_eq!(state_of(&mut c, tenant, &agent).await, "active");
    quiet.go_silent();
    assert_eq!(quiet.ended().await.code(), Code::DeadlineExceeded);
    until_agent(&mut c, tenant, &agent, "offline").await;
    // Claiming a task it does not hold gets it cancelled, not adopted.
    let stranger = AggregateId::new().to_string();
    let claims = pb::Hello { running_task_ids: vec![stranger.clone()], ..hello(&agent) };
    let mut back = stream::open(&mut c, tenant, claims).await.unwrap();
    assert!(back.welcome.adopted_task_ids.is_empty());
    let cancelled = back.cancellation().await;
    assert_eq!((cancelled.task_id.as_str(), cancelled.cause.as_str()), (stranger.as_str(), "not_held"));
    // Decommissioned while connected: the stream ends.
    c.decommission_agent(req(tenant, command(&agent))).await.unwrap();
    assert_eq!(back.ended().await.code(), Code::FailedPrecondition);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_the_stream_is_refused_with_its_code_and_the_stream_goes_on() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;
    let other = active(&mut c, tenant, &["math.sum"], 1).await;
    let mut s = stream::open(&mut c, tenant, hello(&agent)).await.unwrap();
    let mut theirs = stream::open(&mut c, tenant, hello(&other)).await.unwrap();
    let queued_elsewhere = {
        // Held by the other agent.
        let t = submit_with(&mut c, tenant, &["math.sum"], json!({"numbers": [1]}), 0).await;
        assert_eq!(theirs.assignment().await.task_id, t);
        theirs.keep(&[&t]);
        t
    };
    let foreign = {
        let elsewhere = TenantId::new();
        let id = active(&mut c, elsewhere, &["text.reverse"], 1).await;
        let _ = id;
        submit_with(&mut c, elsewhere, &["text.reverse"], json!({"text": "theirs"}), 0).await
    };
    let unknown = AggregateId::new().to_string();
    let with_cid = |task: &str, cid: &str| {
        In::Completion(pb::TaskCompletion {
            task_id: task.into(),
            result: Some(pb::task_completion::Result::ResultCid(cid.into())),
        })
    };
    let cases: Vec<(In, &str, (&str, &str))> = vec![
        (complete(&unknown, json!({})), "unknown task", ("not_found", "")),
        (complete(&foreign, json!({})), "another tenant's task", ("not_found", "")),
        (complete("nope", json!({})), "malformed id", ("invalid_argument", "task_id")),
        (
            In::Completion(pb::TaskCompletion { task_id: unknown.clone(), result: None }),
            "no result",
            ("invalid_argument", "result"),
        ),
        (complete(&queued_elsewhere, json!({"ok": true})), "held by another agent", ("failed_precondition", "")),
        (
            In::Failure(pb::TaskFailure { task_id: queued_elsewhere.clone(), error: " ".into(), retryable: false }),
            "blank error",
            ("invalid_argument", "error"),
        ),
        (
            In::Progress(pb::Progress { task_id: queued_elsewhere.clone(), percent: 101, message: String::new() }),
            "percent",
            ("invalid_argument", "percent"),
        ),
        (
            In::Progress(pb::Progress { task_id: queued_elsewhere.clone(), percent: 50, message: String::new() }),
            "progress on a task not held",
            ("failed_precondition", ""),
        ),
        (In::Hello(hello(&agent)), "a second hello", ("invalid_argument", "hello")),
    ];
    for (message, what, want) in cases {
        s.send(message).await;
        let got = s.answer().await;
        assert_eq!((got.0.as_str(), got.1.as_str()), want, "{what}");
    }

    // A task of its own: malformed results are refused and it stays held; a good one is taken.
    let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "mine"}), 0).await;
    assert_eq!(s.assignment().await.task_id, task);
    s.keep(&[&task]);
    let huge = "x".repeat(300 * 1024);
    for (message, field) in [
        (complete(&task, json!({"text": "a\u{0}b"})), "result"),
        (complete(&task, json!({ "text": huge })), "result"),
        (with_cid(&task, "bafy-not-a-cid"), "result_cid"),
    ] {
        s.send(message).await;
        assert_eq!(s.answer().await, ("invalid_argument".to_owned(), field.to_owned()));
    }
    assert_eq!(get_task(&mut c, tenant, &task).await.state, "assigned");
    s.keep(&[]);
    s.send(complete(&task, json!({"text": "enim"}))).await;
    assert_eq!(s.answer().await, (String::new(), String::new()));
    // Illegal now that it is finished: completing or failing it again.
    s.send(complete(&task, json!({"text": "again"}))).await;
    assert_eq!(s.answer().await.0, "failed_precondition");
    s.send(In::Failure(pb::TaskFailure { task_id: task.clone(), error: "late".into(), retryable: true })).await;
    assert_eq!(s.answer().await.0, "failed_precondition");
    // And a task never assigned to anyone.
    let never = submit_with(&mut c, tenant, &["math.sum"], json!({"numbers": [2]}), 0).await;
    s.send(complete(&never, json!({}))).await;
    assert_eq!(s.answer().await.0, "failed_precondition");
    assert_eq!(svc.history(tenant, &task).await, ["task_submitted", "task_assigned", "task_completed"]);

    // A message that cannot even be decoded (nested past protobuf's limit) names no task to
    // refuse: it ends the stream, as it would fail a unary call.
    let deep = (0..40).fold(json!(1), |inner, _| json!({ "n": inner }));
    s.send(complete(&task, deep)).await;
    assert_eq!(s.ended().await.code(), Code::InvalidArgument);
    svc.stop().await;
}
