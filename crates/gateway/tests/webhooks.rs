//! Webhook subscriptions through the gateway over real TCP: REST in front of a real webhook
//! service, with a real HTTP receiver. Admins register, readers read, bad input names its field,
//! and an event made through REST arrives signed.

#[path = "support/http.rs"]
mod http;
#[path = "support/webhook.rs"]
mod webhook;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use cim_core::TenantId;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{config, unique};
use http::{Auth, call, problem, token};

/// A receiver: allows the handshake, records the `ce-type` and `webhook-signature` of each POST.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    let handler = move |method: Method, headers: HeaderMap| {
        let calls = recorded.clone();
        async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            if method == Method::OPTIONS {
                return (StatusCode::OK, [("webhook-allowed-origin", header("webhook-request-origin"))])
                    .into_response();
            }
            calls.lock().unwrap().push((header("ce-type"), header("webhook-signature")));
            StatusCode::NO_CONTENT.into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_over_rest() {
    let prefix = unique("p");
    let service = webhook::WebhookService::start(&prefix).await;
    let vars = [("CIM_GATEWAY_WEBHOOK_URLS", service.url()), ("CIM_JWT_HS256_SECRET", http::SECRET.to_owned())];
    let stop = Shutdown::new();
    let gw = cim_gateway::app::prepare(&config(ServiceKind::Gateway, &prefix, &vars), &stop).await.unwrap();
    let addr = gw.addr;
    let gateway = tokio::spawn(async move { gw.run().await.unwrap() });
    let tenant = TenantId::new();
    let (reader, writer, admin) =
        (token(tenant, "rita", &["reader"]), token(tenant, "walt", &["writer"]), token(tenant, "ada", &["admin"]));
    let post = |path: &str, auth: &Auth, body: String| {
        let (path, auth) = (path.to_owned(), auth.clone());
        async move { call(addr, "POST", &path, &auth, Some(&body)).await }
    };
    let (hook, calls) = receiver().await;
    let url = format!("http://{hook}/hook");

    // Only admins register; bad input names its field.
    let watch = format!(r#"{{"filter":"webhook.evt.subscription.*.subscription_disabled","url":"{url}"}}"#);
    problem(&post("/api/v1/webhooks", &writer, watch.clone()).await, 403, "permission_denied");
    for (field, body) in [
        ("url", r#"{"filter":"graph.evt.>","url":"ftp://example.com/x"}"#.to_owned()),
        ("url", r#"{"filter":"graph.evt.>","url":"https://u:p@example.com/x"}"#.to_owned()),
        ("filter", format!(r#"{{"filter":"graph.evt","url":"{url}"}}"#)),
        ("condition", format!(r#"{{"filter":"graph.evt.>","condition":"1 +","url":"{url}"}}"#)),
    ] {
        let refused = post("/api/v1/webhooks", &admin, body).await;
        problem(&refused, 400, "invalid_argument");
        assert_eq!(refused.json()["errors"][0]["field"], field, "{refused:?}");
    }
    let created = post("/api/v1/webhooks", &admin, watch).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["state"], "active");
    assert!(created.json()["secret"].as_str().unwrap().starts_with("whsec_"));
    let watcher = created.json()["subscription_id"].as_str().unwrap().to_owned();

    // Another subscription, disabled through REST: its event reaches the watcher's receiver.
    let other = post("/api/v1/webhooks", &admin, format!(r#"{{"filter":"graph.evt.>","url":"{url}"}}"#)).await;
    let other = other.json()["subscription_id"].as_str().unwrap().to_owned();
    let disabled = post(&format!("/api/v1/webhooks/{other}/disable"), &admin, r#"{"reason":"test"}"#.into()).await;
    assert_eq!(disabled.status, 200, "{disabled:?}");
    let until = Instant::now() + Duration::from_secs(60);
    while calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < until, "no delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (kind, signature) = calls.lock().unwrap()[0].clone();
    assert_eq!(kind, "cim.webhook.subscription_disabled");
    assert!(signature.starts_with("v1,"), "{signature}");

    // Readers read, with the delivery state.
    let got = call(addr, "GET", &format!("/api/v1/webhooks/{watcher}"), &reader, None).await;
    assert_eq!(got.status, 200, "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = call(addr, "GET", &format!("/api/v1/webhooks/{watcher}"), &reader, None).await.json();
        if got["deliveries"]["delivered"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = call(addr, "GET", "/api/v1/webhooks?state=disabled", &reader, None).await;
    assert_eq!(listed.json()["items"].as_array().unwrap().len(), 1, "{listed:?}");
    let replayed = post(&format!("/api/v1/webhooks/{watcher}/replay"), &admin, "{}".into()).await;
    assert_eq!(replayed.json()["replayed"], 0, "{replayed:?}");
    let deleted = call(addr, "DELETE", &format!("/api/v1/webhooks/{other}"), &admin, None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    problem(&call(addr, "GET", &format!("/api/v1/webhooks/{other}"), &reader, None).await, 404, "not_found");
    // Another tenant sees none of it.
    let stranger = token(TenantId::new(), "sam", &["admin"]);
    problem(&call(addr, "GET", &format!("/api/v1/webhooks/{watcher}"), &stranger, None).await, 404, "not_found");

    stop.trigger();
    let _ = gateway.await;
    service.stop().await;
}
