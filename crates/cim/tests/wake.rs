//! The serverless pattern without a cluster: `cim wake` starts the webhook service when events
//! wait for it, the service exits by itself when idle (`CIM_WEBHOOK_IDLE_EXIT_SECS`), and is
//! started again for the next events; every event reaches the receiver once, across the stops.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_core::TenantId;
use support::*;

/// `cim wake`, stopped as an operator would (SIGTERM: it stops the service it started too), also
/// when the test fails, so no service outlives it.
struct Waker(std::process::Child);

impl Waker {
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        self.0.wait().unwrap()
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

fn grpc<T>(tenant: TenantId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("x-cim-tenant", tenant.to_string().parse().unwrap());
    request
}

/// Creates `n` graphs: one `graph_created` event each.
async fn graphs(addr: &str, tenant: TenantId, n: usize) {
    use cim_proto::graph::graph_service_client::GraphServiceClient;
    let mut client = GraphServiceClient::connect(format!("http://{addr}")).await.unwrap();
    for i in 0..n {
        let create = cim_proto::graph::CreateGraphRequest { name: format!("woken {i}"), ..Default::default() };
        client.create_graph(grpc(tenant, create)).await.unwrap();
    }
}

#[test]
fn wake_starts_the_webhook_service_for_waiting_events_and_it_exits_when_idle() {
    let db = TempDb::new();
    let prefix = format!("twake{}", uuid_suffix());
    let _cleanup = DeleteStreams { nats: test_nats(), prefix: prefix.clone() };
    let env = [
        ("CIM_DATABASE_URL", db.url.clone()),
        ("CIM_NATS_URL", test_nats()),
        ("CIM_SUBJECT_PREFIX", prefix),
        ("CIM_WEBHOOK_IDLE_EXIT_SECS", "2".into()),
        ("CIM_WEBHOOK_POLL_MS", "50".into()),
    ];
    let graph = Serve::start(&env, "graph");
    let (url, seen) = receiver();
    let tenant = TenantId::new();

    // The subscription is made while the webhook service runs (its API is down at zero).
    let webhook = Serve::start(&env, "webhook");
    rt().block_on(async {
        use cim_proto::webhook::webhook_service_client::WebhookServiceClient;
        let mut client =
            WebhookServiceClient::connect(format!("http://{}", webhook.listener("webhook"))).await.unwrap();
        let create = cim_proto::webhook::CreateSubscriptionRequest {
            subscription_id: cim_core::AggregateId::new().to_string(),
            name: "woken".into(),
            filter: "graph.evt.graph.*.*".into(),
            url: url.clone(),
            ..Default::default()
        };
        let made = client.create_subscription(grpc(tenant, create)).await.unwrap().into_inner();
        assert_eq!(made.state, "active", "{made:?}");
    });
    webhook.stop();

    let mut waker = cim();
    waker.args(["wake", "--service", "webhook", "--interval-ms", "200", "--"]);
    waker.args([env!("CARGO_BIN_EXE_cim"), "serve", "--services", "webhook"]);
    for (k, v) in &env {
        waker.env(k, v);
    }
    let mut waker = Waker(waker.env("CIM_LOG", "error").stdout(Stdio::piped()).spawn().unwrap());
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let out = lines.clone();
    let stdout = waker.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            out.lock().unwrap().push(line);
        }
    });
    let said = |what: &str| lines.lock().unwrap().iter().filter(|l| l.starts_with(what)).count();

    // The service's own last events (the subscription's) may still wait for its intake when it
    // stopped: then it is woken once for them and exits again. After that nothing waits, and
    // nothing is started.
    wait("the waker's first look", Duration::from_secs(30), || said("waking webhook") == 1);
    std::thread::sleep(Duration::from_secs(1));
    wait("quiet", Duration::from_secs(60), || said("webhook exited") == said("webhook started"));
    std::thread::sleep(Duration::from_secs(3));
    let before = said("webhook started");
    assert!(before <= 1, "{:?}", lines.lock().unwrap());
    assert_eq!(said("webhook exited"), before, "nothing waits, nothing started: {:?}", lines.lock().unwrap());

    // Events wait: started, delivered, then idle for 2 s: exited by itself.
    rt().block_on(graphs(&graph.listener("graph"), tenant, 3));
    wait("the first three deliveries", Duration::from_secs(60), || seen.lock().unwrap().len() >= 3);
    wait("the service to exit when idle", Duration::from_secs(30), || said("webhook exited") > before);
    assert_eq!(said("webhook started"), before + 1, "{:?}", lines.lock().unwrap());

    // More events while it is down: started again, and they arrive.
    rt().block_on(graphs(&graph.listener("graph"), tenant, 2));
    wait("the next two deliveries", Duration::from_secs(60), || seen.lock().unwrap().len() >= 5);
    wait("the service to exit again", Duration::from_secs(30), || said("webhook exited") > before + 1);
    assert_eq!(said("webhook started"), before + 2, "{:?}", lines.lock().unwrap());
    let ids: Vec<String> = seen.lock().unwrap().iter().map(|h| h.get("ce-id").cloned().unwrap_or_default()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (5, 5), "each event once: {ids:?}");
    assert!(lines.lock().unwrap().iter().any(|l| l.contains("exited (exit status: 0)")), "{:?}", lines.lock().unwrap());

    assert!(waker.stop().success());
    graph.stop();
}
