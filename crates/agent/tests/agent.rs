//! The agent service end to end over gRPC, with real Postgres and NATS: the registry's
//! lifecycle, tasks, capability routing over the projection, idempotency and expected versions,
//! tenant isolation, bad input, and the events on the domain's stream.

#[path = "support/service.rs"]
mod support;

use chrono::{Duration, Utc};
use cim_agent::task::{TaskCommand, TaskResult};
use cim_core::{AggregateId, ErrorCode, TenantId};
use cim_proto::agent as pb;
use cim_testkit::domain::req;
use support::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_lives_through_its_lifecycle() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let id = deploy(&mut c, tenant, "Reviewer", "ai", 3).await;

    // An AI agent without a model configuration cannot activate.
    let refused = c.activate_agent(req(tenant, command(&id))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.message(), "an AI agent cannot activate without a model configuration");
    let model = pb::ModelConfiguration {
        provider: "ollama".into(),
        model: "llama3:8b".into(),
        parameters: Some(cim_proto::json::json_to_struct(serde_json::json!({"temperature": 0.2}).as_object().unwrap())),
    };
    let assign = pb::AssignModelConfigurationRequest { agent_id: id.clone(), model: Some(model), options: None };
    c.assign_model_configuration(req(tenant, assign)).await.unwrap();
    let prompt = pb::ConfigureSystemPromptRequest {
        agent_id: id.clone(),
        system_prompt: "You review code.\nBe brief.".into(),
        options: None,
    };
    c.configure_system_prompt(req(tenant, prompt)).await.unwrap();
    c.update_capabilities(req(tenant, capabilities(&id, &["code_review", "llm.chat"]))).await.unwrap();
    let grant = pb::NamesRequest { agent_id: id.clone(), names: vec!["documents.read".into()], options: None };
    c.grant_permissions(req(tenant, grant)).await.unwrap();
    let tools = pb::NamesRequest { agent_id: id.clone(), names: vec!["web_search".into()], options: None };
    c.enable_tools(req(tenant, tools)).await.unwrap();

    // deploy → activate → suspend → activate, with the version each step reached.
    let activated = c.activate_agent(req(tenant, command(&id))).await.unwrap().into_inner();
    assert_eq!(activated.version, 7);
    let suspend = pb::AgentCommand { agent_id: id.clone(), reason: "maintenance".into(), options: None };
    c.suspend_agent(req(tenant, suspend)).await.unwrap();
    assert_eq!(get_agent(&mut c, tenant, &id).await.state, "suspended");
    // A stale expected version is a conflict, and changes nothing.
    let stale = pb::AgentCommand { agent_id: id.clone(), reason: String::new(), options: at_version(7) };
    let conflict = c.activate_agent(req(tenant, stale)).await.unwrap_err();
    assert_eq!((conflict.code(), refusal(&conflict).0), (Code::Aborted, ErrorCode::Conflict));
    // A retry with the same key answers the first result and applies nothing.
    let retry = || pb::AgentCommand { agent_id: id.clone(), reason: String::new(), options: keyed("activate-1") };
    let first = c.activate_agent(req(tenant, retry())).await.unwrap().into_inner();
    let again = c.activate_agent(req(tenant, retry())).await.unwrap().into_inner();
    assert_eq!((first.version, first.replayed, again.version, again.replayed), (9, false, 9, true));
    assert_eq!(first.event_ids, again.event_ids);

    let agent = get_agent(&mut c, tenant, &id).await;
    assert_eq!((agent.state.as_str(), agent.agent_type.as_str(), agent.owner.as_str()), ("active", "ai", "user:test"));
    assert_eq!(
        (agent.capabilities, agent.permissions, agent.tools),
        (
            vec!["code_review".to_owned(), "llm.chat".to_owned()],
            vec!["documents.read".to_owned()],
            vec!["web_search".to_owned()]
        )
    );
    assert_eq!((agent.version, agent.max_concurrent_tasks, agent.running_tasks), (9, 3, 0));
    assert_eq!(agent.model.unwrap().model, "llama3:8b");

    // The history answers for any earlier version.
    let at = |version| pb::GetAgentAtVersionRequest { agent_id: id.clone(), version };
    let early = c.get_agent_at_version(req(tenant, at(2))).await.unwrap().into_inner();
    assert_eq!((early.state.as_str(), early.model.is_some(), early.system_prompt.as_str()), ("deployed", true, ""));
    let suspended = c.get_agent_at_version(req(tenant, at(8))).await.unwrap().into_inner();
    assert_eq!((suspended.state.as_str(), suspended.version), ("suspended", 8));
    assert_eq!(c.get_agent_at_version(req(tenant, at(10))).await.unwrap_err().code(), Code::InvalidArgument);

    // Decommissioned: nothing applies any more.
    c.decommission_agent(req(tenant, command(&id))).await.unwrap();
    let refusals = [
        c.activate_agent(req(tenant, command(&id))).await.unwrap_err(),
        c.suspend_agent(req(tenant, command(&id))).await.unwrap_err(),
        c.decommission_agent(req(tenant, command(&id))).await.unwrap_err(),
        c.update_capabilities(req(tenant, capabilities(&id, &["ocr"]))).await.unwrap_err(),
        c.revoke_permissions(req(tenant, pb::NamesRequest { agent_id: id.clone(), names: vec![], options: None }))
            .await
            .unwrap_err(),
        c.set_concurrency_limit(req(
            tenant,
            pb::SetConcurrencyLimitRequest { agent_id: id.clone(), max_concurrent_tasks: 5, options: None },
        ))
        .await
        .unwrap_err(),
    ];
    for status in refusals {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(status.message(), "the agent is decommissioned: nothing applies to it");
    }

    // The registry lists by state and capability, a page at a time.
    let other = active(&mut c, tenant, &["ocr"], 1).await;
    let list = |state: &str, caps: &[&str], token: &str| pb::ListAgentsRequest {
        state: state.into(),
        capabilities: caps.iter().map(|s| (*s).to_owned()).collect(),
        page: Some(cim_proto::common::PageRequest { page_size: 1, page_token: token.into() }),
    };
    let ids = |r: &pb::ListAgentsResponse| r.agents.iter().map(|a| a.agent_id.clone()).collect::<Vec<_>>();
    let page = c.list_agents(req(tenant, list("", &[], ""))).await.unwrap().into_inner();
    assert_eq!(ids(&page), [other], "newest first");
    let token = page.page.unwrap().next_page_token;
    let rest = c.list_agents(req(tenant, list("", &[], &token))).await.unwrap().into_inner();
    assert_eq!((ids(&rest), rest.page.unwrap().next_page_token), (vec![id.clone()], String::new()));
    let found = c.list_agents(req(tenant, list("decommissioned", &["llm.chat"], ""))).await.unwrap().into_inner();
    assert_eq!(ids(&found), [id]);
    assert!(
        c.list_agents(req(tenant, list("active", &["llm.chat"], ""))).await.unwrap().into_inner().agents.is_empty()
    );

    // Every event reached the domain's stream: 9 before, the decommission, and the second
    // agent's three; the replayed retry and the refusals added none.
    assert_eq!(stream_messages(&svc.running, 13).await, 13);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_are_submitted_listed_and_cancelled() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    active(&mut c, tenant, &["ocr", "translate"], 2).await;

    let payload = serde_json::json!({"document": "invoice-7", "pages": [1, 2, 3], "lang": {"from": "de"}});
    let deadline = Utc::now() + Duration::hours(1);
    let first = pb::SubmitTaskRequest {
        payload: Some(cim_proto::json::json_to_struct(payload.as_object().unwrap())),
        priority: 7,
        deadline: Some(cim_runtime::edge::timestamp(deadline)),
        correlation: "workflow:run-1/step-2".into(),
        ..submit(&["translate", "ocr"])
    };
    let first = c.submit_task(req(tenant, first)).await.unwrap().into_inner().id;
    let task = get_task(&mut c, tenant, &first).await;
    assert_eq!((task.state.as_str(), task.priority, task.attempts, task.version), ("queued", 7, 0, 1));
    assert_eq!(task.required_capabilities, ["ocr", "translate"]);
    let stored = cim_proto::json::struct_to_json(task.payload).unwrap();
    assert_eq!(serde_json::Value::Object(stored), payload);
    assert_eq!(task.deadline.unwrap().seconds, deadline.timestamp());

    let second = c.submit_task(req(tenant, submit(&["ocr"]))).await.unwrap().into_inner().id;
    let list = |state: &str| pb::ListTasksRequest { state: state.into(), page: None };
    let queued = c.list_tasks(req(tenant, list("queued"))).await.unwrap().into_inner();
    let ids: Vec<&str> = queued.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");

    let cancel = |id: &str| pb::CancelTaskRequest { task_id: id.into(), reason: "not needed".into(), options: None };
    c.cancel_task(req(tenant, cancel(&first))).await.unwrap();
    assert_eq!(get_task(&mut c, tenant, &first).await.state, "cancelled");
    let finished = c.cancel_task(req(tenant, cancel(&first))).await.unwrap_err();
    assert_eq!((finished.code(), finished.message()), (Code::FailedPrecondition, "the task is already cancelled"));
    let cancelled = c.list_tasks(req(tenant, list("cancelled"))).await.unwrap().into_inner();
    assert_eq!(cancelled.tasks.len(), 1);

    // A task completed by its holder (as the worker stream will) cannot be cancelled, and shows
    // its result.
    let agent = route(&mut c, tenant, &["ocr"]).await.agent_id;
    let agent_id: AggregateId = agent.parse().unwrap();
    let now = Utc::now();
    let assign = TaskCommand::Assign { agent: agent_id, lease_until: now + Duration::seconds(30), now, attempts: None };
    svc.dispatch(tenant, &second, assign).await;
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 1);
    let result = TaskResult::Value(serde_json::json!({"text": "done"}).as_object().unwrap().clone());
    svc.dispatch(tenant, &second, TaskCommand::Complete { agent: agent_id, result, now: Utc::now() }).await;
    let done = get_task(&mut c, tenant, &second).await;
    assert_eq!((done.state.as_str(), done.holder.as_str(), done.attempts), ("completed", agent.as_str(), 1));
    assert!(matches!(done.result, Some(pb::task::Result::ResultValue(_))));
    assert_eq!(get_agent(&mut c, tenant, &agent).await.running_tasks, 0);
    assert_eq!(c.cancel_task(req(tenant, cancel(&second))).await.unwrap_err().code(), Code::FailedPrecondition);
    // The agent's three events, two submissions, a cancel, assign and complete.
    assert_eq!(stream_messages(&svc.running, 8).await, 8);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routing_picks_the_least_over_provisioned_then_the_least_loaded() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let generalist = active(&mut c, tenant, &["ocr", "translate", "summarize"], 4).await;
    let small = active(&mut c, tenant, &["ocr", "translate"], 2).await;
    let large = active(&mut c, tenant, &["ocr", "translate"], 4).await;
    let need = ["translate", "ocr"];

    // Two specialists tie on provisioning and on load (none): the longer-deployed one.
    let first = route(&mut c, tenant, &need).await;
    assert_eq!((first.agent_id.as_str(), first.extra_capabilities, first.covering_agents), (small.as_str(), 0, 3));

    for holder in [&small, &large, &large] {
        give(&svc, &mut c, tenant, &need, holder).await;
    }
    // 1/2 against 2/4: the same share of their limits, so the id decides again.
    assert_eq!(route(&mut c, tenant, &need).await.agent_id, small);
    give(&svc, &mut c, tenant, &need, &small).await;
    // The small one is full (2/2): the large one, at 2/4, takes it.
    let next = route(&mut c, tenant, &need).await;
    assert_eq!((next.agent_id.as_str(), next.running_tasks, next.max_concurrent_tasks), (large.as_str(), 2, 4));
    // A suspended agent gets nothing: the generalist is all that is left.
    c.suspend_agent(req(tenant, command(&large))).await.unwrap();
    let last = route(&mut c, tenant, &need).await;
    assert_eq!((last.agent_id.as_str(), last.extra_capabilities, last.covering_agents), (generalist.as_str(), 1, 2));
    c.suspend_agent(req(tenant, command(&generalist))).await.unwrap();
    let none = route(&mut c, tenant, &need).await;
    assert_eq!((none.agent_id.as_str(), none.covering_agents), ("", 1));
    // Capabilities only the generalist has are still known while it is suspended.
    assert_eq!(route(&mut c, tenant, &["summarize"]).await.agent_id, "");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_are_isolated_and_bad_input_is_refused_with_its_field() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["ocr"], 1).await;
    let task = c.submit_task(req(tenant, submit(&["ocr"]))).await.unwrap().into_inner().id;

    // Another tenant sees neither, and cannot touch them.
    let other = TenantId::new();
    let missing = c.get_agent(req(other, pb::GetAgentRequest { agent_id: agent.clone() })).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(c.activate_agent(req(other, command(&agent))).await.unwrap_err().code(), Code::NotFound);
    let foreign = pb::CancelTaskRequest { task_id: task.clone(), ..Default::default() };
    assert_eq!(c.cancel_task(req(other, foreign)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        c.get_task(req(other, pb::GetTaskRequest { task_id: task.clone() })).await.unwrap_err().code(),
        Code::NotFound
    );
    let everything = pb::ListAgentsRequest::default();
    assert!(c.list_agents(req(other, everything)).await.unwrap().into_inner().agents.is_empty());
    // Its capabilities are unknown there too.
    let unknown = c.submit_task(req(other, submit(&["ocr"]))).await.unwrap_err();
    assert_eq!(refusal(&unknown), (ErrorCode::InvalidArgument, "required_capabilities[0]".into()));

    // A task's id is no agent's, and an agent's id no task's.
    assert_eq!(c.activate_agent(req(tenant, command(&task))).await.unwrap_err().code(), Code::NotFound);
    let at = pb::GetAgentAtVersionRequest { agent_id: task.clone(), version: 1 };
    assert_eq!(c.get_agent_at_version(req(tenant, at)).await.unwrap_err().code(), Code::NotFound);
    let taken = pb::DeployAgentRequest {
        agent_id: task.clone(),
        name: "x".into(),
        agent_type: "human".into(),
        ..Default::default()
    };
    assert_eq!(c.deploy_agent(req(tenant, taken)).await.unwrap_err().code(), Code::AlreadyExists);
    let taken = pb::SubmitTaskRequest { task_id: agent.clone(), ..submit(&["ocr"]) };
    assert_eq!(c.submit_task(req(tenant, taken)).await.unwrap_err().code(), Code::AlreadyExists);
    let cancel = pb::CancelTaskRequest { task_id: agent.clone(), ..Default::default() };
    assert_eq!(c.cancel_task(req(tenant, cancel)).await.unwrap_err().code(), Code::NotFound);

    // Bad input: INVALID_ARGUMENT naming the field.
    let deploy = |name: &str, agent_type: &str| pb::DeployAgentRequest {
        name: name.into(),
        agent_type: agent_type.into(),
        ..Default::default()
    };
    let nul = serde_json::json!({"text": "a\u{0}b"});
    let payload = pb::SubmitTaskRequest {
        payload: Some(cim_proto::json::json_to_struct(nul.as_object().unwrap())),
        ..submit(&["ocr"])
    };
    let past = pb::SubmitTaskRequest {
        deadline: Some(cim_runtime::edge::timestamp(Utc::now() - Duration::seconds(5))),
        ..submit(&["ocr"])
    };
    let bad_id = pb::GetAgentRequest { agent_id: "not-a-uuid".into() };
    let v4 = pb::GetTaskRequest { task_id: "3f0f8d2e-8c1a-4c1e-9a57-0d9b2f1d5e77".into() };
    let refused = [
        (c.deploy_agent(req(tenant, deploy("a\u{0}b", "human"))).await, "name"),
        (c.deploy_agent(req(tenant, deploy("Reviewer", "robot"))).await, "agent_type"),
        (c.update_capabilities(req(tenant, capabilities(&agent, &["ocr", "Code Review"]))).await, "capabilities[1]"),
        (c.submit_task(req(tenant, submit(&["ocr", "ocr.v2"]))).await, "required_capabilities[1]"),
        (c.submit_task(req(tenant, submit(&["OCR"]))).await, "required_capabilities[0]"),
        (c.submit_task(req(tenant, payload)).await, "payload"),
        (c.submit_task(req(tenant, past)).await, "deadline"),
        (c.submit_task(req(tenant, pb::SubmitTaskRequest { priority: 1001, ..submit(&[]) })).await, "priority"),
        (c.submit_task(req(tenant, pb::SubmitTaskRequest { task_id: "x".into(), ..submit(&[]) })).await, "task_id"),
        (c.activate_agent(req(tenant, command("0190a5b2-7c3e"))).await, "agent_id"),
    ];
    for (i, (result, field)) in refused.into_iter().enumerate() {
        let status = result.unwrap_err();
        assert_eq!(refusal(&status), (ErrorCode::InvalidArgument, field.to_owned()), "case {i}: {status:?}");
    }
    assert_eq!(refusal(&c.get_agent(req(tenant, bad_id)).await.unwrap_err()).1, "agent_id");
    assert_eq!(refusal(&c.get_task(req(tenant, v4)).await.unwrap_err()).1, "task_id");
    let unknown_route = pb::RouteTaskRequest { required_capabilities: vec!["translate".into()] };
    assert_eq!(c.route_task(req(tenant, unknown_route)).await.unwrap_err().code(), Code::InvalidArgument);
    let state = pb::ListTasksRequest { state: "running".into(), page: None };
    assert_eq!(refusal(&c.list_tasks(req(tenant, state)).await.unwrap_err()).1, "state");
    svc.stop().await;
}

/// The task projection follows a task through its holders (the dispatcher's commands, with the
/// time they say it is) and keeps each agent's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_projection_follows_tasks_through_leases_and_outcomes() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let a = active(&mut c, tenant, &["ocr"], 3).await;
    let b = active(&mut c, tenant, &["ocr"], 3).await;
    let (a_id, b_id): (AggregateId, AggregateId) = (a.parse().unwrap(), b.parse().unwrap());
    let running = async |c: &mut Client| {
        (get_agent(c, tenant, &a).await.running_tasks, get_agent(c, tenant, &b).await.running_tasks)
    };
    let now = Utc::now();
    let secs = Duration::seconds;

    // Held by a, extended, lapsed, reassigned to b, failed there.
    let first = give(&svc, &mut c, tenant, &["ocr"], &a).await;
    svc.dispatch(tenant, &first, TaskCommand::ExtendLease { agent: a_id, lease_until: now + secs(90), now }).await;
    assert_eq!(get_task(&mut c, tenant, &first).await.lease_until.unwrap().seconds, (now + secs(90)).timestamp());
    let later = now + secs(91);
    let to_b = TaskCommand::Reassign {
        to: Some(b_id),
        reason: "lease lapsed".into(),
        lease_until: Some(later + secs(30)),
        now: later,
    };
    svc.dispatch(tenant, &first, to_b).await;
    assert_eq!(running(&mut c).await, (0, 1));
    let failed = TaskCommand::Fail { agent: b_id, error: "model unavailable".into(), retryable: true, now: later };
    svc.dispatch(tenant, &first, failed).await;
    let task = get_task(&mut c, tenant, &first).await;
    assert_eq!((task.state.as_str(), task.holder.as_str(), task.attempts), ("failed", b.as_str(), 2));
    assert_eq!((task.error.as_str(), task.retryable, task.lease_until), ("model unavailable", true, None));
    assert_eq!(running(&mut c).await, (0, 0));

    // Held by a, lapsed with nobody free: back in the queue.
    let second = give(&svc, &mut c, tenant, &["ocr"], &a).await;
    let back = TaskCommand::Reassign { to: None, reason: "no agent free".into(), lease_until: None, now: later };
    svc.dispatch(tenant, &second, back).await;
    let task = get_task(&mut c, tenant, &second).await;
    assert_eq!((task.state.as_str(), task.holder.as_str(), task.lease_until), ("queued", "", None));
    assert_eq!(running(&mut c).await, (0, 0));

    // Held by b past its deadline: timed out. Held by a: completed with a document.
    let deadline = now + secs(3600);
    let timed = pb::SubmitTaskRequest { deadline: Some(cim_runtime::edge::timestamp(deadline)), ..submit(&["ocr"]) };
    let third = c.submit_task(req(tenant, timed)).await.unwrap().into_inner().id;
    let assign = TaskCommand::Assign { agent: b_id, lease_until: now + secs(60), now, attempts: None };
    svc.dispatch(tenant, &third, assign).await;
    svc.dispatch(tenant, &third, TaskCommand::TimeOut { now: deadline + secs(1) }).await;
    assert_eq!(get_task(&mut c, tenant, &third).await.state, "timed_out");
    let fourth = give(&svc, &mut c, tenant, &["ocr"], &a).await;
    assert_eq!(running(&mut c).await, (1, 0));
    let digest = cid::multihash::Multihash::<64>::wrap(0x1e, &[9; 32]).unwrap();
    let cid = cid::Cid::new_v1(0x55, digest).to_string();
    let result = TaskResult::Document(cid.clone());
    svc.dispatch(tenant, &fourth, TaskCommand::Complete { agent: a_id, result, now: Utc::now() }).await;
    let done = get_task(&mut c, tenant, &fourth).await;
    assert_eq!((done.state.as_str(), done.result), ("completed", Some(pb::task::Result::ResultCid(cid))));
    assert_eq!(running(&mut c).await, (0, 0));
    svc.stop().await;
}
