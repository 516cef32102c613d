//! The webhook service end to end against real Postgres, NATS and HTTP receivers: subscriptions
//! registered over gRPC, the service's own subscription events delivered as signed CloudEvents
//! (each test's "source" subscriptions make the events; a "watcher" receives them).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cim_core::{AggregateId, ErrorCode, SubjectPrefix, TenantId};
use cim_proto::status::read_status;
use cim_proto::webhook as pb;
use cim_testkit::domain::req;
use support::*;

const SUBSCRIPTION_EVENTS: &str = "webhook.evt.subscription.*.*";
const PATIENCE: Duration = Duration::from_secs(60);

/// A watcher of every subscription event of its tenant but its own.
async fn watcher(client: &mut Client, tenant: TenantId, receiver: &Receiver, filter: &str) -> (AggregateId, String) {
    let id = AggregateId::new();
    let condition = format!("event.aggregate_id != '{id}'");
    let made = subscribe(client, tenant, id, filter, &condition, &receiver.url()).await;
    assert_eq!(made.state, "active", "{made:?}");
    assert!(made.secret.starts_with("whsec_"), "a secret is made and answered");
    (id, made.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_matching_event_is_delivered_signed_in_order_and_only_to_its_tenant() {
    let service = Service::start().await;
    let mut client = service.client().await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let (watching, other_tenant, sink) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let (w, secret) = watcher(&mut client, a, &watching, SUBSCRIPTION_EVENTS).await;
    // Tenant b's watcher has no condition: it sees its own activation, and nothing of tenant a.
    let wb = AggregateId::new();
    assert_eq!(subscribe(&mut client, b, wb, SUBSCRIPTION_EVENTS, "", &other_tenant.url()).await.state, "active");

    let mut sources = Vec::new();
    for _ in 0..4 {
        let id = source(&mut client, a, &sink.url()).await;
        cycle(&mut client, a, id).await;
        cycle(&mut client, a, id).await;
        sources.push(id);
    }
    // Each source: registered, activated, then disabled + activated twice.
    let expected = sources.len() * 6;
    let calls = watching.wait("every source event", PATIENCE, |c| c.len() >= expected).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(watching.calls().len(), expected, "no event twice, none of the watcher's own");

    let mut ids = HashSet::new();
    let mut per_aggregate: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for call in &calls {
        assert!(signed_with(&secret, call), "signature of {}", call.header("ce-id"));
        assert_eq!(call.header("ce-specversion"), "1.0");
        assert_eq!(call.header("webhook-id"), call.header("ce-id"));
        assert_eq!(call.header("ce-source"), "/cim/webhook/subscription");
        assert_eq!(call.header("ce-cimtenant"), a.to_string());
        assert_eq!(call.header("content-type"), "application/json");
        assert!(call.header("traceparent").starts_with("00-"), "trace context: {:?}", call.headers);
        assert!(ids.insert(call.header("ce-id").to_owned()), "ids unique per event");
        let sequence: u64 = call.header("ce-cimsequence").parse().unwrap();
        per_aggregate
            .entry(call.header("ce-subject").to_owned())
            .or_default()
            .push((sequence, call.header("ce-type").to_owned()));
    }
    let subjects: HashSet<String> = sources.iter().map(ToString::to_string).collect();
    assert_eq!(per_aggregate.keys().cloned().collect::<HashSet<_>>(), subjects);
    let cycle_types = ["registered", "activated", "disabled", "activated", "disabled", "activated"];
    for (aggregate, got) in &per_aggregate {
        let want: Vec<(u64, String)> =
            (1..=6).zip(cycle_types).map(|(n, t)| (n, format!("cim.webhook.subscription_{t}"))).collect();
        assert_eq!(got, &want, "in order for {aggregate}");
    }
    // The body is the event's payload.
    let registered = calls.iter().find(|c| c.header("ce-type").ends_with("registered")).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&registered.body).unwrap();
    assert_eq!(payload["url"], sink.url());

    // The documented example receiver's `verify` accepts a real call.
    assert!(python_verifies(&secret, registered), "examples/webhook/receiver.py verify()");

    // Its own registration too when the intake reached that event only after the activation
    // (the subscription is active by then): timing, not tenancy. Never anything of tenant a.
    let activated = |c: &Call| c.header("ce-type") == "cim.webhook.subscription_activated";
    let theirs = other_tenant.wait("tenant b's own activation", PATIENCE, |c| c.iter().any(activated)).await;
    for call in &theirs {
        assert_eq!(
            (call.header("ce-subject"), call.header("ce-cimtenant")),
            (wb.to_string().as_str(), b.to_string().as_str())
        );
        assert!(
            activated(call) || call.header("ce-type") == "cim.webhook.subscription_registered",
            "{:?}",
            call.headers
        );
    }
    settled(&mut client, a, w, (expected as u64, 0, 0)).await;
    service.running.stop().await;
}

fn python_verifies(secret: &str, call: &Call) -> bool {
    let python = std::env::var("CIM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/webhook");
    let headers = serde_json::json!({
        "webhook-id": call.header("webhook-id"),
        "webhook-timestamp": call.header("webhook-timestamp"),
        "webhook-signature": call.header("webhook-signature"),
    });
    let script = "import sys, json; sys.path.insert(0, sys.argv[1]); from receiver import verify; \
                  h = json.loads(sys.argv[3]); body = sys.stdin.buffer.read(); \
                  sys.exit(0 if verify(sys.argv[2], h, body) and not verify(sys.argv[2], h, body + b' ') else 1)";
    let mut child = std::process::Command::new(python)
        .args(["-c", script, examples, secret, &headers.to_string()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&call.body).unwrap();
    child.wait().unwrap().success()
}

/// One source disabled once: exactly one event of type `subscription_disabled`.
async fn one_event(client: &mut Client, tenant: TenantId, sink: &Receiver) -> AggregateId {
    let id = source(client, tenant, &sink.url()).await;
    let command =
        pb::SubscriptionCommand { subscription_id: id.to_string(), reason: "one".into(), ..Default::default() };
    client.disable_subscription(req(tenant, command)).await.unwrap();
    id
}

const DISABLED_EVENTS: &str = "webhook.evt.subscription.*.subscription_disabled";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_500_then_200_delivers_once_more_and_no_more() {
    let service = Service::start().await;
    let mut client = service.client().await;
    let tenant = TenantId::new();
    let (receiver, sink) = (Receiver::start().await, Receiver::start().await);
    receiver.queue(&[Answer::Status(500)]);
    let (w, _) = watcher(&mut client, tenant, &receiver, DISABLED_EVENTS).await;
    // The command that makes the event carries a trace context; its calls continue the trace.
    let id = source(&mut client, tenant, &sink.url()).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = req(
        tenant,
        pb::SubscriptionCommand { subscription_id: id.to_string(), reason: "one".into(), ..Default::default() },
    );
    request.metadata_mut().insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap());
    client.disable_subscription(request).await.unwrap();
    let calls = receiver.wait("the retry", PATIENCE, |c| c.len() >= 2).await;
    assert_eq!(calls[0].header("ce-id"), calls[1].header("ce-id"), "the same event, for deduplication");
    for call in &calls {
        assert!(call.header("traceparent").starts_with(&format!("00-{trace}-")), "{:?}", call.headers);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.calls().len(), 2, "not again after the 200");
    let stats = settled(&mut client, tenant, w, (1, 0, 0)).await;
    assert_eq!(stats.last_failure_status, 500);
    service.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_with_retry_after_is_honoured() {
    let service = Service::start().await;
    let mut client = service.client().await;
    let tenant = TenantId::new();
    let (receiver, sink) = (Receiver::start().await, Receiver::start().await);
    receiver.queue(&[Answer::TooMany(2)]);
    watcher(&mut client, tenant, &receiver, DISABLED_EVENTS).await;
    one_event(&mut client, tenant, &sink).await;
    let calls = receiver.wait("the call after Retry-After", PATIENCE, |c| c.len() >= 2).await;
    let waited = calls[1].at - calls[0].at;
    // The backoff alone would be 50 to 100 ms.
    assert!(waited >= Duration::from_millis(1900), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    service.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_410_disables_the_subscription() {
    let service = Service::start().await;
    let mut client = service.client().await;
    let tenant = TenantId::new();
    let (receiver, sink) = (Receiver::start().await, Receiver::start().await);
    receiver.queue(&[Answer::Status(410)]);
    let (w, _) = watcher(&mut client, tenant, &receiver, DISABLED_EVENTS).await;
    one_event(&mut client, tenant, &sink).await;
    receiver.wait("the 410", PATIENCE, |c| !c.is_empty()).await;
    let until = std::time::Instant::now() + PATIENCE;
    let disabled = loop {
        let s = get(&mut client, tenant, w).await;
        if s.state == "disabled" {
            break s;
        }
        assert!(std::time::Instant::now() < until, "not disabled: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(disabled.reason.contains("410"), "{}", disabled.reason);
    one_event(&mut client, tenant, &sink).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.calls().len(), 1, "nothing is sent to a disabled subscription");
    assert_eq!(disabled.deliveries.unwrap().pending, 1, "the refused delivery waits for a re-activation");
    service.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_down_for_the_whole_budget_dead_letters_and_the_replay_delivers() {
    let service = Service::start().await;
    let mut client = service.client().await;
    let tenant = TenantId::new();
    let (receiver, sink) = (Receiver::start().await, Receiver::start().await);
    let (w, _) = watcher(&mut client, tenant, &receiver, DISABLED_EVENTS).await;
    receiver.down();
    let events = [one_event(&mut client, tenant, &sink).await, one_event(&mut client, tenant, &sink).await];
    let until = std::time::Instant::now() + PATIENCE;
    let stats = loop {
        let stats = get(&mut client, tenant, w).await.deliveries.unwrap();
        if stats.dead == 2 {
            break stats;
        }
        assert!(std::time::Instant::now() < until, "not dead-lettered: {stats:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats.last_failure_status, 0, "no answer");
    assert!(stats.last_failure.contains("the last of 3 attempts"), "{}", stats.last_failure);

    // In the dead-letter stream, with the reason and the subscription.
    let nats = async_nats::connect(cim_testkit::domain::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let prefix: SubjectPrefix = service.running.prefix.parse().unwrap();
    let mut dlq = js.get_stream(prefix.dlq_stream_name()).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 2);
    let mut dead_subjects = HashSet::new();
    for sequence in 1..=2 {
        let message = dlq.get_raw_message(sequence).await.unwrap();
        assert_eq!(message.subject.as_str(), format!("{prefix}.dlq.webhook"));
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert!(header("Cim-Dlq-Reason").contains("no answer"), "{}", header("Cim-Dlq-Reason"));
        assert_eq!(header("Cim-Webhook-Subscription"), w.to_string());
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        dead_subjects.insert(event["aggregate_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(dead_subjects, events.iter().map(ToString::to_string).collect::<HashSet<_>>());

    let receiver = receiver.restart().await;
    let before = receiver.calls().len();
    let replay = pb::ReplayDeadLettersRequest { subscription_id: w.to_string(), event_id: String::new() };
    assert_eq!(client.replay_dead_letters(req(tenant, replay)).await.unwrap().into_inner().replayed, 2);
    let calls = receiver.wait("the replayed deliveries", PATIENCE, |c| c.len() >= before + 2).await;
    let delivered: HashSet<&str> = calls[before..].iter().map(|c| c.header("ce-subject")).collect();
    assert_eq!(
        delivered,
        events.iter().map(|e| e.to_string()).collect::<HashSet<_>>().iter().map(String::as_str).collect()
    );
    settled(&mut client, tenant, w, (2, 0, 0)).await;
    service.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_are_refused_with_the_field_and_other_tenants_see_nothing() {
    let service = Service::start().await;
    let mut client = service.client().await;
    let tenant = TenantId::new();
    let receiver = Receiver::start().await;
    let refused = |r: pb::CreateSubscriptionRequest| {
        let mut client = client.clone();
        async move { read_status(&client.create_subscription(req(tenant, r)).await.unwrap_err()) }
    };
    let good =
        pb::CreateSubscriptionRequest { filter: "graph.evt.>".into(), url: receiver.url(), ..Default::default() };
    for (field, bad) in [
        ("url", pb::CreateSubscriptionRequest { url: "ftp://example.com/x".into(), ..good.clone() }),
        ("url", pb::CreateSubscriptionRequest { url: "https://me:pw@example.com/x".into(), ..good.clone() }),
        ("url", pb::CreateSubscriptionRequest { url: "example.com/x".into(), ..good.clone() }),
        ("filter", pb::CreateSubscriptionRequest { filter: "graph.events".into(), ..good.clone() }),
        ("filter", pb::CreateSubscriptionRequest { filter: "billing.evt.>".into(), ..good.clone() }),
        ("condition", pb::CreateSubscriptionRequest { condition: "event.payload.x ==".into(), ..good.clone() }),
        ("secret", pb::CreateSubscriptionRequest { secret: "hunter2".into(), ..good.clone() }),
        ("subscription_id", pb::CreateSubscriptionRequest { subscription_id: "42".into(), ..good.clone() }),
    ] {
        let (code, violations) = refused(bad.clone()).await;
        assert_eq!(code, ErrorCode::InvalidArgument, "{bad:?}");
        assert_eq!(violations.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(), [field], "{bad:?}");
    }

    // A receiver that does not answer the handshake: registered, but not active.
    receiver.allow_handshake(false);
    let id = AggregateId::new();
    let made = subscribe(&mut client, tenant, id, "graph.evt.>", "", &receiver.url()).await;
    assert_eq!(made.state, "pending");
    assert!(made.validation_error.contains("handshake"), "{}", made.validation_error);
    let activate = pb::SubscriptionCommand { subscription_id: id.to_string(), ..Default::default() };
    let status = client.activate_subscription(req(tenant, activate.clone())).await.unwrap_err();
    assert_eq!(read_status(&status).0, ErrorCode::FailedPrecondition);
    receiver.allow_handshake(true);
    client.activate_subscription(req(tenant, activate.clone())).await.unwrap();
    assert_eq!(get(&mut client, tenant, id).await.state, "active");

    // Another tenant's subscription does not exist for this one.
    let other = TenantId::new();
    let status = client
        .get_subscription(req(other, pb::GetSubscriptionRequest { subscription_id: id.to_string() }))
        .await
        .unwrap_err();
    assert_eq!(read_status(&status).0, ErrorCode::NotFound);
    let status = client.disable_subscription(req(other, activate)).await.unwrap_err();
    assert_eq!(read_status(&status).0, ErrorCode::NotFound);
    let listed = client.list_subscriptions(req(other, pb::ListSubscriptionsRequest::default())).await.unwrap();
    assert!(listed.into_inner().subscriptions.is_empty());
    let mine = client.list_subscriptions(req(tenant, pb::ListSubscriptionsRequest::default())).await.unwrap();
    assert_eq!(mine.into_inner().subscriptions.len(), 1);
    service.running.stop().await;
}
