//! The console's live feed: a console session (here one started with an API key, which holds
//! no JWT) gets a one-time ticket from the gateway and opens a websocket connection with it, on
//! the real websocket server. A ticket opens one connection, carries the session's subject,
//! tenant and roles only, and cannot be had once the session is over. (A ticket's own expiry:
//! `crates/cim-auth/tests/ticket.rs`.)

#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;
#[path = "support/websocket.rs"]
mod websocket;

use std::time::Duration;

use cim_auth::now_secs;
use cim_core::TenantId;
use http::call;
use serde_json::json;
use support::*;
use websocket::{Frame, Websocket};

/// An API key of `tenant` for subject `viewer` with `roles`, signed in: the session cookie.
async fn session(gw: &Gateway, tenant: TenantId, roles: &str) -> Vec<(&'static str, String)> {
    let admin = bearer(&token(tenant, &["admin"], now_secs() + 600));
    let body = format!(r#"{{"subject":"viewer","roles":{roles}}}"#);
    let key = call(gw.addr, "POST", "/api/v1/admin/api-keys", &admin, Some(&body)).await;
    assert_eq!(key.status, 201, "{key:?}");
    let with_key = vec![("X-Api-Key", key.json()["key"].as_str().unwrap().to_owned())];
    let login = call(gw.addr, "POST", "/api/v1/auth/login", &with_key, None).await;
    assert_eq!(login.status, 204, "{login:?}");
    vec![("Cookie", login.header("set-cookie").unwrap().split(';').next().unwrap().to_owned())]
}

async fn ticket(gw: &Gateway, session: &[(&'static str, String)]) -> String {
    let r = call(gw.addr, "POST", "/api/v1/auth/ws-ticket", session, None).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["expires_in_secs"], 30, "{r:?}");
    r.json()["ticket"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_connection_for_the_sessions_tenant_only() {
    let graph = harness::Service::start().await;
    let ws = Websocket::start(&graph).await;
    let url = ws.url();
    let gw = gateway(&graph, &[("CIM_GATEWAY_CONSOLE_WEBSOCKET_URL", &url)]).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let session_a = session(&gw, a, r#"["reader"]"#).await;

    // The console page may connect to the configured websocket server, and nowhere else.
    let index = call(gw.addr, "GET", "/", &[], None).await;
    let policy = index.header("content-security-policy").unwrap();
    assert!(policy.contains(&format!("connect-src 'self' {url};")), "{policy}");
    let r = call(gw.addr, "POST", "/api/v1/auth/ws-ticket", &session_a, None).await;
    assert_eq!(r.json()["url"], url.as_str(), "{r:?}");
    problem(&call(gw.addr, "POST", "/api/v1/auth/ws-ticket", &[], None).await, 401, "unauthenticated");

    // Redeemed: the connection is the session's subject and tenant, for five minutes at most.
    let first = ticket(&gw, &session_a).await;
    let mut client = ws.with_ticket(&first).await;
    let welcome = client.json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!((welcome["subject"].as_str(), welcome["tenant"].as_str()), (Some("viewer"), Some(&*a.to_string())));
    let end = welcome["expires_at"].as_u64().unwrap();
    assert!(end <= now_secs() + 300 && end + 10 >= now_secs() + 300, "{welcome}");

    // Single use: the same ticket again is refused and the connection closed (4001).
    let mut again = ws.with_ticket(&first).await;
    let refused = again.json().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("unauthenticated")));
    assert!(matches!(again.next_within(Duration::from_secs(5)).await, Some(Frame::Closed(4001))));

    // Only tenant A's events reach A's connection, whatever the filter asks for.
    client.send(json!({"type": "subscribe", "id": "all", "filter": {"domain": "graph"}})).await;
    assert_eq!(client.json().await["type"], "subscribed");
    let writer = |t| bearer(&token(t, &["writer"], now_secs() + 600));
    let made_b = call(gw.addr, "POST", "/api/v1/graphs", &writer(b), Some(r#"{"name":"b"}"#)).await;
    assert_eq!(made_b.status, 201, "{made_b:?}");
    let made_a = call(gw.addr, "POST", "/api/v1/graphs", &writer(a), Some(r#"{"name":"a"}"#)).await;
    let event = client.json().await;
    assert_eq!(event["type"], "event", "{event}");
    assert_eq!(event["event"]["aggregate_id"], made_a.json()["graph_id"], "B's graph came first and was not sent");
    assert_eq!(event["event"]["tenant_id"], a.to_string());
    assert!(client.next_within(Duration::from_millis(800)).await.is_none(), "nothing else arrives");

    // Renewal with a fresh ticket of the same session; another tenant's is refused.
    client.send(json!({"type": "auth", "ticket": ticket(&gw, &session_a).await})).await;
    assert_eq!(client.json().await["type"], "reauthenticated");
    let session_b = session(&gw, b, r#"["reader"]"#).await;
    client.send(json!({"type": "auth", "ticket": ticket(&gw, &session_b).await})).await;
    assert_eq!(client.json().await["code"], "already_authenticated");

    // A session without the reader role gets no ticket; a signed-out session gets none either.
    let none = session(&gw, a, "[]").await;
    problem(&call(gw.addr, "POST", "/api/v1/auth/ws-ticket", &none, None).await, 403, "permission_denied");
    assert_eq!(call(gw.addr, "POST", "/api/v1/auth/logout", &session_a, None).await.status, 204);
    problem(&call(gw.addr, "POST", "/api/v1/auth/ws-ticket", &session_a, None).await, 401, "unauthenticated");
    // An empty ticket is refused too.
    let mut neither = ws.with_ticket("").await;
    assert_eq!(neither.json().await["code"], "unauthenticated");

    gw.stop().await;
    ws.stop().await;
    graph.stop().await;
}
