//! The workflow service end to end over gRPC, with real Postgres and NATS: a run through every
//! step kind of this landing, definitions and their versions, bad definitions and illegal
//! transitions with their codes, retries, pause/resume/cancel, queries and tenant isolation.

#[path = "support/service.rs"]
mod support;

use std::time::Duration;

use cim_core::{ErrorCode, TenantId};
use cim_proto::workflow as pb;
use cim_testkit::domain::req;
use serde_json::json;
use support::*;
use tonic::Code;

fn review() -> serde_json::Value {
    json!({
        "name": "expense review",
        "steps": [
            {"id": "total", "kind": "automated", "set": {"total": "price * qty"}},
            {"id": "big", "kind": "decision", "depends_on": ["total"], "condition": "total > 100",
             "when_true": ["approve"], "when_false": ["auto_ok"]},
            {"id": "approve", "kind": "approval", "depends_on": ["big"], "role": "manager"},
            {"id": "auto_ok", "kind": "automated", "depends_on": ["big"], "set": {"approved_by": "'policy'"}},
            {"id": "notify", "kind": "parallel", "depends_on": ["total"]},
            {"id": "cool_off", "kind": "timer", "depends_on": ["total"], "sleep_ms": 300},
            {"id": "join", "kind": "parallel", "depends_on": ["approve", "auto_ok", "notify", "cool_off"]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_runs_automated_decision_timer_approval_and_join_steps() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let (definition, content_id) = define(&mut c, tenant, review()).await;
    assert!(content_id.starts_with('b'), "a CIDv1 in base32: {content_id}");

    let started = std::time::Instant::now();
    let id = start(&mut c, tenant, &definition, json!({"price": 40, "qty": 3})).await;
    let waiting =
        until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "approve").status == "waiting_approval").await;
    assert_eq!(waiting.status, "running");
    assert_eq!(waiting.content_id, content_id);
    assert_eq!(
        (step(&waiting, "total").status.as_str(), step(&waiting, "big").status.as_str()),
        ("completed", "completed")
    );
    assert_eq!(step(&waiting, "auto_ok").status, "skipped");
    assert_eq!(step(&waiting, "notify").status, "completed");
    let context = cim_proto::json::struct_to_json(waiting.context.clone()).unwrap();
    assert_eq!((context["total"].clone(), context["big"].clone()), (json!(120), json!(true)));

    // A person without the role is refused; one with it approves.
    let approve = || pb::ApprovalDecision {
        instance_id: id.clone(),
        step_id: "approve".into(),
        comment: "ok".into(),
        options: None,
    };
    let denied = c.approve_step(as_person(tenant, "user:eve", "writer", approve())).await.unwrap_err();
    assert_eq!((denied.code(), refusal(&denied).0), (Code::PermissionDenied, ErrorCode::PermissionDenied));
    c.approve_step(as_person(tenant, "user:max", "writer, manager", approve())).await.unwrap();

    let done = until_status(&mut c, tenant, &id, "completed").await;
    assert!(started.elapsed() >= Duration::from_millis(300), "the timer never fires early");
    assert!(done.steps.iter().all(|s| s.status == "completed" || s.step_id == "auto_ok"), "{:#?}", done.steps);
    let events = history(&mut c, tenant, &id).await;
    let kinds = types(&events);
    assert_eq!(&kinds[..3], ["workflow_created", "workflow_started", "step_execution_started"]);
    assert_eq!(kinds.last(), Some(&"workflow_completed"));
    for expected in
        ["step_skipped", "timer_scheduled", "timer_fired", "step_approval_requested", "step_approval_granted"]
    {
        assert_eq!(kinds.iter().filter(|k| **k == expected).count(), 1, "{expected} in {kinds:?}");
    }
    let granted = events.iter().find(|e| e.event_type == "step_approval_granted").unwrap();
    assert_eq!(granted.actor, "user:max");
    // The hash chain: each event's prev_hash is its predecessor's hash.
    assert!(events.windows(2).all(|w| w[1].prev_hash == w[0].hash));

    // As of version 2: created and started, nothing run yet.
    let r = pb::GetWorkflowAtVersionRequest { instance_id: id.clone(), version: 2 };
    let early = c.get_workflow_at_version(req(tenant, r)).await.unwrap().into_inner();
    assert_eq!((early.status.as_str(), early.version), ("running", 2));
    assert!(early.steps.iter().all(|s| s.status == "pending"));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_definitions_are_invalid_arguments_naming_the_field() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let cases = [
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "parallel", "depends_on": ["b"]}, {"id": "b", "kind": "parallel", "depends_on": ["a"]}]}),
            "definition.steps[1].depends_on[0]",
        ),
        (json!({"name": "n", "steps": [{"id": "a", "kind": "wormhole"}]}), "definition.steps[0].kind"),
        (
            json!({"name": "n", "steps": [{"id": "a", "kind": "decision", "condition": "total >"}]}),
            "definition.steps[0].condition",
        ),
        (json!({"name": "n", "steps": []}), "definition.steps"),
    ];
    for (definition, field) in cases {
        let r = pb::CreateDefinitionRequest { definition: Some(object(definition.clone())), ..Default::default() };
        let refused = c.create_definition(req(tenant, r)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{definition}");
        assert_eq!(refusal(&refused), (ErrorCode::InvalidArgument, field.to_owned()), "{definition}");
    }
    let missing = c.create_definition(req(tenant, pb::CreateDefinitionRequest::default())).await.unwrap_err();
    assert_eq!(refusal(&missing), (ErrorCode::InvalidArgument, "definition".to_owned()));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn versions_are_content_ids_and_an_instance_keeps_its_version() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let one = json!({"name": "v", "steps": [{"id": "wait", "kind": "manual"}]});
    let (definition, first) = define(&mut c, tenant, one.clone()).await;
    let old = start(&mut c, tenant, &definition, json!({})).await;

    let two = json!({"name": "v", "steps": [{"id": "go", "kind": "automated", "set": {"x": "1"}}]});
    let revise = |d: serde_json::Value| pb::ReviseDefinitionRequest {
        definition_id: definition.clone(),
        definition: Some(object(d)),
        options: None,
    };
    let second = c.revise_definition(req(tenant, revise(two.clone()))).await.unwrap().into_inner().content_id;
    assert_ne!(first, second);
    let unchanged = c.revise_definition(req(tenant, revise(two))).await.unwrap_err();
    assert_eq!(unchanged.code(), Code::FailedPrecondition);

    let current = c
        .get_definition(req(
            tenant,
            pb::GetDefinitionRequest { definition_id: definition.clone(), content_id: String::new() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (current.content_id.as_str(), current.versions.clone()),
        (second.as_str(), vec![first.clone(), second.clone()])
    );
    let r = pb::GetDefinitionRequest { definition_id: definition.clone(), content_id: first.clone() };
    let body = c.get_definition(req(tenant, r)).await.unwrap().into_inner().definition;
    assert_eq!(cim_proto::json::struct_to_json(body).unwrap(), *one.as_object().unwrap());

    // The instance started on the first version still waits on its manual step; a new one runs
    // the second version's automated step to the end.
    let new = start(&mut c, tenant, &definition, json!({})).await;
    until_status(&mut c, tenant, &new, "completed").await;
    let kept = get(&mut c, tenant, &old).await;
    assert_eq!((kept.content_id.as_str(), kept.steps[0].step_id.as_str()), (first.as_str(), "wait"));
    let r =
        pb::StartWorkflowRequest { definition_id: definition.clone(), content_id: first.clone(), ..Default::default() };
    let pinned = c.start_workflow(req(tenant, r)).await.unwrap().into_inner().id;
    assert_eq!(get(&mut c, tenant, &pinned).await.content_id, first);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn illegal_transitions_are_failed_preconditions() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let (definition, _) = define(
        &mut c,
        tenant,
        json!({"name": "m", "steps": [{"id": "m", "kind": "manual", "role": "clerk"},
        {"id": "t", "kind": "timer", "sleep_ms": 60000}]}),
    )
    .await;
    let id = start(&mut c, tenant, &definition, json!({})).await;
    until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "m").status == "running").await;

    let resume = c.resume_workflow(req(tenant, command(&id))).await.unwrap_err();
    assert_eq!(
        (resume.code(), resume.message()),
        (Code::FailedPrecondition, "the workflow is running; only a paused workflow resumes")
    );
    let r = pb::AssignTaskRequest {
        instance_id: id.clone(),
        step_id: "t".into(),
        assignee: "user:bob".into(),
        options: None,
    };
    let assign = c.assign_task(req(tenant, r)).await.unwrap_err();
    assert_eq!(assign.code(), Code::FailedPrecondition);
    assert!(assign.message().contains("only manual and approval steps are assigned to people"), "{}", assign.message());
    let r =
        pb::ApprovalDecision { instance_id: id.clone(), step_id: "m".into(), comment: String::new(), options: None };
    let approve = c.approve_step(as_person(tenant, "user:a", "clerk", r)).await.unwrap_err();
    assert_eq!(approve.code(), Code::FailedPrecondition, "a manual step is completed, not approved");

    c.cancel_workflow(req(tenant, command(&id))).await.unwrap();
    let cancelled = get(&mut c, tenant, &id).await;
    assert_eq!(cancelled.status, "cancelled");
    assert!(cancelled.steps.iter().all(|s| s.status == "cancelled"), "{:#?}", cancelled.steps);
    for refused in [
        c.pause_workflow(req(tenant, command(&id))).await.unwrap_err(),
        c.cancel_workflow(req(tenant, command(&id))).await.unwrap_err(),
        c.set_context_variable(req(
            tenant,
            pb::SetContextVariableRequest {
                instance_id: id.clone(),
                key: "k".into(),
                value: Some(cim_proto::json::json_to_value(&json!(1))),
                options: None,
            },
        ))
        .await
        .unwrap_err(),
    ] {
        assert_eq!(refusal(&refused).0, ErrorCode::FailedPrecondition, "{refused:?}");
    }
    let bad = c.pause_workflow(req(tenant, command("not-an-id"))).await.unwrap_err();
    assert_eq!(refusal(&bad), (ErrorCode::InvalidArgument, "instance_id".to_owned()));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_is_retried_with_backoff_until_it_succeeds_or_runs_out() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let retried = |max: u32| {
        json!({"name": "r", "steps": [{"id": "calc", "kind": "automated", "set": {"double": "price * 2"},
        "retry": {"max_attempts": max, "initial_backoff_ms": 200, "max_backoff_ms": 400}}]})
    };
    let (hopeless, _) = define(&mut c, tenant, retried(3)).await;
    let id = start(&mut c, tenant, &hopeless, json!({})).await;
    let failed = until_status(&mut c, tenant, &id, "failed").await;
    assert_eq!(step(&failed, "calc").attempts, 3);
    assert!(failed.error.starts_with("calc: set.double:"), "{}", failed.error);
    let events = history(&mut c, tenant, &id).await;
    let retries: Vec<_> = events.iter().filter(|e| e.event_type == "retry_scheduled").collect();
    assert_eq!(retries.len(), 2);
    let attempts: Vec<_> = retries
        .iter()
        .map(|e| cim_proto::json::struct_to_json(e.payload.clone()).unwrap()["attempt"].clone())
        .collect();
    assert_eq!(attempts, [json!(2), json!(3)]);

    // Given what it needs between attempts, the step succeeds on its retry.
    let (patient, _) = define(&mut c, tenant, retried(10)).await;
    let id = start(&mut c, tenant, &patient, json!({})).await;
    until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "calc").attempts >= 1).await;
    let r = pb::SetContextVariableRequest {
        instance_id: id.clone(),
        key: "price".into(),
        value: Some(cim_proto::json::json_to_value(&json!(21))),
        options: None,
    };
    c.set_context_variable(req(tenant, r)).await.unwrap();
    let done = until_status(&mut c, tenant, &id, "completed").await;
    assert_eq!(cim_proto::json::struct_to_json(done.context).unwrap()["double"], json!(42));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_holds_a_due_timer_until_resume_and_cancel_ends_a_run() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let tenant = TenantId::new();
    let (definition, _) =
        define(&mut c, tenant, json!({"name": "p", "steps": [{"id": "t", "kind": "timer", "sleep_ms": 2000}]})).await;
    let id = start(&mut c, tenant, &definition, json!({})).await;
    until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "t").status == "running").await;
    // The timer started before it was seen running: due by then + 2 s. Long enough that the pause
    // comes first on a loaded machine (a 200 ms timer fired before it in a suite run beside CIM).
    let due_by = tokio::time::Instant::now() + Duration::from_millis(2000);
    c.pause_workflow(req(
        tenant,
        pb::WorkflowCommand { instance_id: id.clone(), reason: "hold".into(), options: None },
    ))
    .await
    .unwrap();
    tokio::time::sleep_until(due_by + Duration::from_millis(400)).await;
    let paused = get(&mut c, tenant, &id).await;
    assert_eq!((paused.status.as_str(), step(&paused, "t").status.as_str()), ("paused", "running"), "the timer waits");
    c.resume_workflow(req(tenant, command(&id))).await.unwrap();
    until_status(&mut c, tenant, &id, "completed").await;
    let kinds: Vec<String> = types(&history(&mut c, tenant, &id).await).into_iter().map(str::to_owned).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "timer_fired").count(), 1);
    let paused_at = kinds.iter().position(|k| k == "workflow_paused").unwrap();
    let fired_at = kinds.iter().position(|k| k == "timer_fired").unwrap();
    assert!(paused_at < fired_at && kinds[paused_at + 1] == "workflow_resumed", "{kinds:?}");

    let (manual, _) = define(&mut c, tenant, json!({"name": "c", "steps": [{"id": "m", "kind": "manual"}]})).await;
    let id = start(&mut c, tenant, &manual, json!({})).await;
    until(&mut c, tenant, &id, Duration::from_secs(20), |w| step(w, "m").status == "running").await;
    c.cancel_workflow(req(tenant, command(&id))).await.unwrap();
    let r = pb::CompleteStepRequest { instance_id: id.clone(), step_id: "m".into(), output: None, options: None };
    let late = c.complete_step(req(tenant, r)).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_filter_instances_and_tenants_see_only_their_own() {
    let svc = Service::start().await;
    let mut c = svc.client().await;
    let (tenant, other) = (TenantId::new(), TenantId::new());
    let (manual, _) = define(&mut c, tenant, json!({"name": "m", "steps": [{"id": "m", "kind": "manual"}]})).await;
    let (quick, _) = define(&mut c, tenant, json!({"name": "q", "steps": [{"id": "q", "kind": "parallel"}]})).await;
    let waiting = start(&mut c, tenant, &manual, json!({})).await;
    let correlation = cim_core::CommandId::new().as_root_correlation();
    let mut r = req(tenant, pb::StartWorkflowRequest { definition_id: quick.clone(), ..Default::default() });
    r.metadata_mut().insert("x-cim-correlation-id", correlation.to_string().parse().unwrap());
    let finished = c.start_workflow(r).await.unwrap().into_inner().id;
    until_status(&mut c, tenant, &finished, "completed").await;

    let list = |f: pb::ListWorkflowsRequest| {
        let mut c = c.clone();
        async move {
            let ids: Vec<String> = c
                .list_workflows(req(tenant, f))
                .await
                .unwrap()
                .into_inner()
                .workflows
                .into_iter()
                .map(|w| w.instance_id)
                .collect();
            ids
        }
    };
    assert_eq!(list(pb::ListWorkflowsRequest::default()).await, [finished.clone(), waiting.clone()]);
    assert_eq!(
        list(pb::ListWorkflowsRequest { status: "running".into(), ..Default::default() }).await,
        [waiting.as_str()]
    );
    assert_eq!(
        list(pb::ListWorkflowsRequest { definition_id: quick.clone(), ..Default::default() }).await,
        [finished.as_str()]
    );
    let by_correlation = pb::ListWorkflowsRequest { correlation_id: correlation.to_string(), ..Default::default() };
    assert_eq!(list(by_correlation).await, [finished.as_str()]);
    let future = cim_runtime::edge::timestamp(chrono::Utc::now() + chrono::Duration::hours(1));
    assert!(list(pb::ListWorkflowsRequest { created_after: Some(future), ..Default::default() }).await.is_empty());
    let page = pb::ListWorkflowsRequest {
        page: Some(cim_proto::common::PageRequest { page_size: 1, page_token: String::new() }),
        ..Default::default()
    };
    let first = c.list_workflows(req(tenant, page)).await.unwrap().into_inner();
    assert_eq!((first.workflows.len(), first.page.unwrap().next_page_token), (1, finished.clone()));
    let bad = c
        .list_workflows(req(tenant, pb::ListWorkflowsRequest { status: "asleep".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(refusal(&bad), (ErrorCode::InvalidArgument, "status".to_owned()));

    // The other tenant finds none of it.
    let gone = c.get_workflow(req(other, pb::GetWorkflowRequest { instance_id: waiting.clone() })).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = c
        .get_workflow_history(req(other, pb::GetWorkflowHistoryRequest { instance_id: waiting.clone() }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let r = pb::StartWorkflowRequest { definition_id: manual.clone(), ..Default::default() };
    assert_eq!(c.start_workflow(req(other, r)).await.unwrap_err().code(), Code::NotFound);
    let r = pb::GetDefinitionRequest { definition_id: manual.clone(), content_id: String::new() };
    assert_eq!(c.get_definition(req(other, r)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c.cancel_workflow(req(other, command(&waiting))).await.unwrap_err().code(), Code::NotFound);
    let theirs = c.list_workflows(req(other, pb::ListWorkflowsRequest::default())).await.unwrap().into_inner();
    assert!(theirs.workflows.is_empty());
    let defs = c.list_definitions(req(other, pb::ListDefinitionsRequest::default())).await.unwrap().into_inner();
    assert!(defs.definitions.is_empty());
    assert_eq!(get(&mut c, tenant, &waiting).await.status, "running", "untouched");
    svc.stop().await;
}
