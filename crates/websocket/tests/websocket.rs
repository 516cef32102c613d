//! The websocket server against real NATS and the real graph service (its relay publishes the
//! events), with real websocket clients over TCP. Each test has its own subject prefix, so its
//! streams are its own; they are deleted at the end.

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use cim_core::TenantId;
use futures::SinkExt;
use harness::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn node_ids(events: &[Ev]) -> Vec<String> {
    events.iter().map(|e| e.node_id().unwrap_or("-").to_owned()).collect()
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

fn assert_increasing(events: &[Ev]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions not increasing: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_delivery_sends_each_subscription_only_what_matches() {
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    let ws = Ws::start(&prefix, &[]).await;
    let t = TenantId::new();
    let g1 = graph.create(t).await;
    let g2 = graph.create(t).await;

    let mut narrow = ws.connect(&token(t, &["reader"])).await;
    narrow
        .subscribe("g1-nodes", json!({"domain": "graph", "aggregate_id": g1, "event_types": ["node_added"]}), None)
        .await;
    let mut wide = ws.connect(&token(t, &["reader"])).await;
    wide.subscribe("edges", json!({"domain": "graph", "aggregate_type": "graph", "event_types": ["edge_added"]}), None)
        .await;
    // From the stream's beginning: the two graph_created events too, whether or not the relay
    // had published them yet. (Subscribed last: its replayed events may follow the reply at once.)
    assert_eq!(wide.subscribe("all", json!({"domain": "graph"}), Some(0)).await, 0);

    graph.add_node(t, &g1, "a").await;
    graph.add_node(t, &g2, "x").await;
    graph.add_node(t, &g1, "b").await;
    graph.add_edge(t, &g1, "ab", "a", "b").await;
    graph.add_node(t, &g2, "y").await;

    let got = narrow.events(2).await;
    assert_eq!(node_ids(&got), ["a", "b"]);
    assert!(got.iter().all(|e| e.id == "g1-nodes" && e.envelope["aggregate_id"] == g1.as_str()));
    assert!(got.iter().all(|e| e.envelope["tenant_id"] == t.to_string().as_str()));
    assert_increasing(&got);

    let got = wide.events(8).await;
    let all: Vec<Ev> = got.iter().filter(|e| e.id == "all").cloned().collect();
    let edges: Vec<Ev> = got.iter().filter(|e| e.id == "edges").cloned().collect();
    let types: Vec<&str> = all.iter().map(|e| e.envelope["event_type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["graph_created", "graph_created", "node_added", "node_added", "node_added", "edge_added", "node_added"]
    );
    assert_increasing(&all);
    assert_eq!(edges.len(), 1);
    assert_eq!(edges[0].envelope["payload"]["edge_id"], "ab");
    // A position names one stream message, whichever subscription carries it.
    assert_eq!(edges[0].position, all[5].position);
    assert_eq!(edges[0].envelope, all[5].envelope);

    narrow.expect_silence(Duration::from_millis(300)).await;
    wide.expect_silence(Duration::from_millis(300)).await;
    let metrics = ws.metrics().await;
    assert!(metric(&metrics, "cim_websocket_frames_sent_total").unwrap() >= 10.0, "{metrics}");
    assert!(metrics.contains("cim_websocket_delivery_latency_seconds_bucket"), "{metrics}");
    ws.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_only_ever_see_their_own_events() {
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    let ws = Ws::start(&prefix, &[]).await;
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let g1 = graph.create(t1).await;
    let g2 = graph.create(t2).await;

    let mut c1 = ws.connect(&token(t1, &["reader"])).await;
    c1.subscribe("s", json!({"domain": "graph"}), Some(0)).await;
    let mut c2 = ws.connect(&token(t2, &["reader"])).await;
    // Naming another tenant's graph, live and from the beginning, yields nothing either.
    c2.subscribe("snoop-live", json!({"domain": "graph", "aggregate_id": g1}), None).await;
    c2.subscribe("snoop-replay", json!({"domain": "graph", "aggregate_id": g1}), Some(0)).await;
    c2.subscribe("s", json!({"domain": "graph"}), Some(0)).await;

    for i in 0..5 {
        graph.add_node(t1, &g1, &format!("a{i}")).await;
        graph.add_node(t2, &g2, &format!("b{i}")).await;
    }
    let e1 = c1.events(6).await;
    let e2 = c2.events(6).await;
    for (events, tenant, g) in [(&e1, t1, &g1), (&e2, t2, &g2)] {
        assert!(events.iter().all(|e| e.id == "s"), "{events:?}");
        assert!(events.iter().all(|e| e.envelope["tenant_id"] == tenant.to_string().as_str()));
        assert!(events.iter().all(|e| e.envelope["aggregate_id"] == g.as_str()));
        assert_increasing(events);
    }
    assert_eq!(node_ids(&e1[1..]), names("a", 0..5));
    assert_eq!(node_ids(&e2[1..]), names("b", 0..5));
    c1.expect_silence(Duration::from_millis(300)).await;
    c2.expect_silence(Duration::from_millis(300)).await;
    ws.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_client_resumes_without_gap_or_duplicate() {
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    let ws = Ws::start(&prefix, &[]).await;
    let t = TenantId::new();
    let g = graph.create(t).await;
    let filter = json!({"domain": "graph", "aggregate_id": g, "event_types": ["node_added"]});

    let mut c = ws.connect(&token(t, &["reader"])).await;
    c.subscribe("s", filter.clone(), None).await;
    for i in 0..5 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    let seen = c.events(3).await;
    assert_eq!(node_ids(&seen), names("n", 0..3));
    let last = seen[2].position;
    // Gone without a close frame, as when a network drops.
    drop(c);
    for i in 5..10 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    // More events arrive while the client resumes, so the hand-over from the stream read to the
    // live feed happens under traffic.
    let mut writer = graph.client.clone();
    let g2 = g.clone();
    let adder = tokio::spawn(async move {
        for i in 10..30 {
            let node = cim_proto::graph::NodeSpec { id: format!("n{i}"), r#type: "person".into(), properties: None };
            let mut r = tonic::Request::new(cim_proto::graph::AddNodeRequest {
                graph_id: g2.clone(),
                node: Some(node),
                options: None,
            });
            r.metadata_mut().insert("x-cim-tenant", t.to_string().parse().unwrap());
            writer.add_node(r).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut c = ws.connect(&token(t, &["reader"])).await;
    assert_eq!(c.subscribe("s", filter, Some(last)).await, last);
    let rest = c.events(27).await;
    assert_eq!(node_ids(&rest), names("n", 3..30));
    assert!(rest[0].position > last);
    assert_increasing(&rest);
    adder.await.unwrap();
    c.expect_silence(Duration::from_millis(300)).await;
    ws.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_resume_across_a_server_restart() {
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    let first = Ws::start(&prefix, &[]).await;
    let t = TenantId::new();
    let g = graph.create(t).await;
    let filter = json!({"domain": "graph", "aggregate_id": g, "event_types": ["node_added"]});

    let mut c = first.connect(&token(t, &["reader"])).await;
    c.subscribe("s", filter.clone(), None).await;
    for i in 0..5 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    let seen = c.events(5).await;
    let last = seen[4].position;
    first.shutdown.trigger();
    let (after, closed) = c.until_close().await;
    assert!(after.is_empty());
    let (code, reason) = closed.expect("a close frame");
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("resume"), "{reason}");
    first.stop().await;

    // Written while no websocket server runs.
    for i in 5..10 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    let second = Ws::start(&prefix, &[]).await;
    for i in 10..15 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    let mut c = second.connect(&token(t, &["reader"])).await;
    c.subscribe("s", filter, Some(last)).await;
    for i in 15..20 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    let rest = c.events(15).await;
    assert_eq!(node_ids(&rest), names("n", 5..20));
    assert_increasing(&rest);
    assert!(rest[0].position > last);
    c.expect_silence(Duration::from_millis(300)).await;
    second.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_is_cut_off_while_a_fast_one_keeps_receiving() {
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    // Above one command's burst of 50 events, so only a client that stops reading trips it.
    let ws = Ws::start(&prefix, &[("CIM_WEBSOCKET_CLIENT_QUEUE", "64")]).await;
    let t = TenantId::new();
    let g = graph.create(t).await;
    let filter = json!({"domain": "graph", "aggregate_id": g, "event_types": ["node_added"]});

    // A tiny receive buffer, and it does not read: the server's socket fills quickly.
    let mut slow = Client::connect_with(ws.addr, &token(t, &["reader"]), Some(4096)).await;
    let subscribed_at = slow.subscribe("slow", filter.clone(), None).await;
    let mut fast = ws.connect(&token(t, &["reader"])).await;
    fast.subscribe("fast", filter.clone(), None).await;

    // 300 events of ~20 KB: far more than the slow client's socket and queue can hold.
    let all = names("n", 0..300);
    // The fast client reads each burst before the next is written, so at most one burst (50
    // frames, under the queue of 64) waits for it however slowly a loaded machine runs its
    // reader; the slow client reads nothing and must trip the limit.
    let mut got = Vec::new();
    for chunk in all.chunks(50) {
        graph.add_nodes_batch(t, &g, chunk, 20_000).await;
        got.extend(fast.events(chunk.len()).await);
    }
    assert_eq!(node_ids(&got), all);
    assert_increasing(&got);

    let (partial, closed) = slow.until_close().await;
    let (code, reason) = closed.expect("a close frame after the frames already in the socket");
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.starts_with("lagging"), "{reason}");
    assert!(partial.len() < 300);
    assert_eq!(node_ids(&partial), all[..partial.len()]);

    // It reconnects and resumes from the last position it saw.
    let from = partial.last().map_or(subscribed_at, |e| e.position);
    let mut again = ws.connect(&token(t, &["reader"])).await;
    again.subscribe("slow", filter, Some(from)).await;
    let rest = again.events(300 - partial.len()).await;
    assert_eq!(node_ids(&rest), all[partial.len()..]);

    let metrics = ws.metrics().await;
    assert!(metric(&metrics, "cim_websocket_lagging_clients_closed_total").unwrap() >= 1.0, "{metrics}");
    ws.stop().await;
    graph.stop().await;
}

/// Expects an error frame with `code`, then (if `close` is set) that close code.
async fn expect_refusal(c: &mut Client, code: &str, close: Option<u16>) -> String {
    let v = c.json().await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    let message = v["message"].as_str().unwrap().to_owned();
    if let Some(expected) = close {
        match c.frame().await {
            Frame::Closed(got, reason) => {
                assert_eq!(got, expected, "{reason}");
                assert!(reason.starts_with(code), "{reason}");
            }
            other => panic!("expected close {expected}, got {other:?}"),
        }
    }
    message
}

async fn open_with_token(ws: &Ws, token: &str) -> Client {
    let protocols = ["cim.v1".to_owned(), format!("bearer.{token}")];
    Client::open(ws.addr, &protocols, None).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_refused_with_a_reason() {
    let prefix = unique("p");
    let ws = Ws::start(&prefix, &[]).await;
    let t = TenantId::new();

    let foreign = token_with(t, &["reader"], cim_auth::now_secs() + 60, "another-secret-another-secret-xxxxx");
    let mut c = open_with_token(&ws, &foreign).await;
    assert!(expect_refusal(&mut c, "unauthenticated", Some(4001)).await.contains("bad signature"));

    let expired = token_with(t, &["reader"], cim_auth::now_secs() - 600, SECRET);
    let mut c = open_with_token(&ws, &expired).await;
    assert!(expect_refusal(&mut c, "unauthenticated", Some(4001)).await.contains("expired"));

    let mut c = open_with_token(&ws, "not-a-jwt").await;
    expect_refusal(&mut c, "unauthenticated", Some(4001)).await;

    // The gateway's rules (cim-auth's Verifier): no token lives longer than CIM_JWT_MAX_LIFETIME_SECS.
    let forever = token_with(t, &["reader"], cim_auth::now_secs() + 3 * 86_400, SECRET);
    let mut c = open_with_token(&ws, &forever).await;
    assert!(expect_refusal(&mut c, "unauthenticated", Some(4001)).await.contains("longer than"));

    let mut c = open_with_token(&ws, &token(t, &[])).await;
    assert!(expect_refusal(&mut c, "permission_denied", Some(4003)).await.contains("reader"));

    // Without a subprotocol token the first message must authenticate.
    let (mut c, _) = Client::open(ws.addr, &[], None).await.unwrap();
    c.send(json!({"type": "subscribe", "id": "s", "filter": {"domain": "graph"}})).await;
    assert!(expect_refusal(&mut c, "unauthenticated", Some(4001)).await.contains("first message"));

    let (mut c, response) = Client::open(ws.addr, &["cim.v1".to_owned()], None).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "cim.v1");
    c.send(json!({"type": "auth", "token": token(t, &["reader"])})).await;
    let welcome = c.json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["tenant"], t.to_string().as_str());
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.json().await["type"], "pong");

    let metrics = ws.metrics().await;
    assert!(metrics.contains("cim_websocket_rejected_total{reason=\"unauthenticated\"}"), "{metrics}");
    ws.stop().await;
    delete_streams(&prefix, &nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_ends_when_its_token_expires_unless_a_fresh_one_is_sent() {
    let prefix = unique("p");
    let ws = Ws::start(&prefix, &[]).await;
    let t = TenantId::new();

    // Left alone, the connection is closed when the token expires, with a reason.
    let exp = cim_auth::now_secs() + 2;
    let protocols = ["cim.v1".to_owned(), format!("bearer.{}", token_with(t, &["reader"], exp, SECRET))];
    let (mut short, _) = Client::open(ws.addr, &protocols, None).await.unwrap();
    let welcome = short.json().await;
    assert_eq!(welcome["expires_at"], exp, "{welcome}");
    short.subscribe("s", json!({"domain": "graph"}), None).await;
    let message = expect_refusal(&mut short, "token_expired", Some(4001)).await;
    assert!(message.contains("fresh token"), "{message}");
    assert!(cim_auth::now_secs() >= exp);

    // A fresh token for the same subject and tenant, sent in time, keeps it open.
    // `exp` has whole seconds: +3 leaves at least two for the renewal to arrive.
    let first_exp = cim_auth::now_secs() + 3;
    let mut renewed = ws.connect(&token_with(t, &["reader"], first_exp, SECRET)).await;
    let later = cim_auth::now_secs() + 600;
    renewed.send(json!({"type": "auth", "token": token_with(t, &["reader"], later, SECRET)})).await;
    let reply = renewed.json().await;
    assert_eq!(reply, json!({"type": "reauthenticated", "expires_at": later}));
    // A token of another tenant is refused and changes nothing; nor does a bad one.
    renewed.send(json!({"type": "auth", "token": token(TenantId::new(), &["reader"])})).await;
    assert!(expect_refusal(&mut renewed, "already_authenticated", None).await.contains("another subject or tenant"));
    renewed.send(json!({"type": "auth", "token": "not-a-jwt"})).await;
    assert!(expect_refusal(&mut renewed, "unauthenticated", None).await.contains("keeps its current token"));
    while cim_auth::now_secs() <= first_exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    renewed.send(json!({"type": "ping"})).await;
    assert_eq!(renewed.json().await["type"], "pong", "still open after the first token's expiry");
    ws.stop().await;
    delete_streams(&prefix, &nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_frames_get_clear_errors_and_the_server_carries_on() {
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    let ws = Ws::start(&prefix, &[("CIM_WEBSOCKET_MAX_SUBSCRIPTIONS", "2"), ("CIM_WEBSOCKET_MAX_FRAME_BYTES", "1024")])
        .await;
    let t = TenantId::new();
    let g = graph.create(t).await;
    let mut c = ws.connect(&token(t, &["reader"])).await;

    c.send_text("not json").await;
    expect_refusal(&mut c, "bad_frame", None).await;
    c.send(json!({"type": "subscribe", "id": "x"})).await;
    assert!(expect_refusal(&mut c, "bad_frame", None).await.contains("filter"));
    c.send(json!({"type": "launch"})).await;
    assert!(expect_refusal(&mut c, "bad_frame", None).await.contains("launch"));
    c.send(json!({"type": "subscribe", "id": "x", "filter": {"domain": "graph"}, "form": 3})).await;
    assert!(expect_refusal(&mut c, "bad_frame", None).await.contains("form"));
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert!(expect_refusal(&mut c, "bad_frame", None).await.contains("binary"));
    c.send(json!({"type": "subscribe", "id": "x", "filter": {"domain": "files"}})).await;
    let v = c.json().await;
    assert_eq!((v["code"].as_str(), v["id"].as_str()), (Some("invalid_filter"), Some("x")), "{v}");
    c.send(json!({"type": "subscribe", "id": "", "filter": {"domain": "graph"}})).await;
    expect_refusal(&mut c, "invalid_id", None).await;
    c.send(json!({"type": "subscribe", "id": "x", "filter": {"domain": "graph"}, "from": 1_000_000_000u64})).await;
    expect_refusal(&mut c, "position_ahead", None).await;

    // node_added only: the graph_created event may still be on its way through the relay.
    let nodes = json!({"domain": "graph", "aggregate_id": g, "event_types": ["node_added"]});
    c.subscribe("a", nodes.clone(), None).await;
    c.send(json!({"type": "subscribe", "id": "a", "filter": {"domain": "graph"}})).await;
    expect_refusal(&mut c, "duplicate_subscription", None).await;
    c.subscribe("b", json!({"domain": "graph", "event_types": ["node_added"]}), None).await;
    c.send(json!({"type": "subscribe", "id": "c", "filter": {"domain": "graph"}})).await;
    expect_refusal(&mut c, "too_many_subscriptions", None).await;
    c.send(json!({"type": "unsubscribe", "id": "zzz"})).await;
    expect_refusal(&mut c, "unknown_subscription", None).await;
    c.send(json!({"type": "unsubscribe", "id": "b"})).await;
    assert_eq!(c.json().await, json!({"type": "unsubscribed", "id": "b"}));
    c.send(json!({"type": "auth", "token": "x"})).await;
    assert!(expect_refusal(&mut c, "unauthenticated", None).await.contains("keeps its current token"));

    // After all that the connection still delivers.
    graph.add_node(t, &g, "still-here").await;
    let got = c.events(1).await;
    assert_eq!((got[0].id.as_str(), got[0].node_id()), ("a", Some("still-here")));

    // A frame over the limit closes with 1009.
    c.send_text(&format!("{{\"type\":\"ping\",\"x\":\"{}\"}}", "y".repeat(2000))).await;
    match c.frame().await {
        Frame::Closed(code, reason) => assert_eq!(code, 1009, "{reason}"),
        other => panic!("expected close 1009, got {other:?}"),
    }

    // The server is unharmed.
    let mut fresh = ws.connect(&token(t, &["reader"])).await;
    fresh.subscribe("a", nodes, None).await;
    graph.add_node(t, &g, "after").await;
    assert_eq!(fresh.events(1).await[0].node_id(), Some("after"));
    let metrics = ws.metrics().await;
    assert!(metric(&metrics, "cim_websocket_bad_frames_total").unwrap() >= 10.0, "{metrics}");
    ws.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_limit_idle_timeout_and_heartbeats() {
    let prefix = unique("p");
    let ws =
        Ws::start(&prefix, &[("CIM_WEBSOCKET_MAX_CONNECTIONS", "2"), ("CIM_WEBSOCKET_IDLE_TIMEOUT_MS", "1500")]).await;
    let t = TenantId::new();
    let tok = token(t, &["reader"]);
    let mut reading = ws.connect(&tok).await;
    let mut silent = RawClient::connect(ws.addr, &tok).await;

    let mut third = open_with_token(&ws, &tok).await;
    match third.frame().await {
        Frame::Closed(code, reason) => {
            assert_eq!(code, 1013, "{reason}");
            assert!(reason.contains("limit of 2"), "{reason}");
        }
        other => panic!("expected close 1013, got {other:?}"),
    }

    // A client that keeps reading answers the server's pings and outlives the idle timeout; one
    // that neither reads nor writes is closed.
    reading.expect_silence(Duration::from_millis(3000)).await;
    let (opcodes, closed) = silent.until_close().await;
    let (code, reason) = closed.expect("a close frame");
    assert_eq!(code, 4000, "{reason}");
    // The welcome (text), then the pings it never answered.
    assert_eq!(opcodes.first(), Some(&1));
    assert!(opcodes.contains(&9), "{opcodes:?}");
    assert!(reason.starts_with("idle"), "{reason}");
    reading.send(json!({"type": "ping"})).await;
    assert_eq!(reading.json().await["type"], "pong");

    // The closed client's slot is free again.
    let mut next = None;
    for _ in 0..50 {
        let mut c = open_with_token(&ws, &tok).await;
        match c.frame().await {
            Frame::Json(v) if v["type"] == "welcome" => {
                next = Some(c);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(next.is_some(), "a slot was freed");
    let metrics = ws.metrics().await;
    assert!(metrics.contains("cim_websocket_rejected_total{reason=\"max_connections\"}"), "{metrics}");
    ws.stop().await;
    delete_streams(&prefix, &nats_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_delivery_continues_across_a_nats_restart() {
    let mut nats = PrivateNats::start();
    let prefix = unique("p");
    let mut graph = Graph::start_on(&prefix, &nats.url()).await;
    let ws = Ws::start_on(&prefix, &nats.url(), &[]).await;
    let t = TenantId::new();
    let g = graph.create(t).await;
    let mut c = ws.connect(&token(t, &["reader"])).await;
    c.subscribe("s", json!({"domain": "graph", "aggregate_id": g, "event_types": ["node_added"]}), None).await;
    for i in 0..5 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    assert_eq!(node_ids(&c.events(5).await), names("n", 0..5));

    nats.kill();
    // Commands still commit; the relay publishes them once NATS is back.
    for i in 5..10 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    nats.restart();
    for i in 10..15 {
        graph.add_node(t, &g, &format!("n{i}")).await;
    }
    let rest = c.events(10).await;
    assert_eq!(node_ids(&rest), names("n", 5..15));
    assert_increasing(&rest);
    c.expect_silence(Duration::from_millis(300)).await;
    ws.stop().await;
    graph.stop().await;
}

/// Numbers reach a websocket client exactly as stored: doubles with their bits (including the
/// one a rounding parser misread), integers as integers (issues 13 and 26).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn numbers_reach_a_client_exactly() {
    use prost_types::value::Kind;
    let prefix = unique("p");
    let mut graph = Graph::start(&prefix).await;
    let ws = Ws::start(&prefix, &[]).await;
    let t = TenantId::new();
    let g = graph.create(t).await;
    let numbers =
        [("x", 2.7715077941825975e-163), ("tiny", 5e-324), ("huge", 1.2345678901234567e300), ("since", 2020.0)];
    let properties = prost_types::Struct {
        fields: numbers
            .iter()
            .map(|(k, v)| (k.to_string(), prost_types::Value { kind: Some(Kind::NumberValue(*v)) }))
            .collect(),
    };
    let node = cim_proto::graph::NodeSpec { id: "n".into(), r#type: "t".into(), properties: Some(properties) };
    let mut request =
        tonic::Request::new(cim_proto::graph::AddNodeRequest { graph_id: g.clone(), node: Some(node), options: None });
    request.metadata_mut().insert("x-cim-tenant", t.to_string().parse().unwrap());
    graph.client.add_node(request).await.unwrap();

    let mut client = ws.connect(&token(t, &["reader"])).await;
    client.subscribe("n", json!({"domain": "graph", "aggregate_id": g, "event_types": ["node_added"]}), Some(0)).await;
    let events = client.events(1).await;
    let props = &events[0].envelope["payload"]["properties"];
    for (key, value) in numbers {
        assert_eq!(props[key].as_f64().map(f64::to_bits), Some(value.to_bits()), "{key}: {}", props[key]);
    }
    assert!(props["since"].is_u64(), "an integer arrived as {}", props["since"]);
    ws.stop().await;
    graph.stop().await;
}

/// The document domain's events reach subscribers like graph's: the websocket knows no domain
/// by name, only the streams each domain service creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn document_events_reach_subscribers_of_their_tenant() {
    use cim_proto::document as pb;
    let prefix = unique("p");
    let objects = std::env::temp_dir().join(unique("wsobjects"));
    let vars = [("CIM_OBJECT_STORE_URL", objects.display().to_string())];
    let config = cim_testkit::domain::config(cim_runtime::ServiceKind::Document, &prefix, &vars);
    let shutdown = cim_runtime::Shutdown::new();
    let schema = unique("wd");
    let options = cim_document::app::DocumentOptions { schema: schema.clone(), ..Default::default() };
    let prepared = cim_document::app::prepare_with(&config, &shutdown, options).await.unwrap();
    let documents = cim_testkit::domain::Running::spawn(prepared, schema, prefix.clone(), shutdown);
    let ws = Ws::start(&prefix, &[]).await;
    let (t, stranger) = (TenantId::new(), TenantId::new());
    let mut reader = ws.connect(&token(t, &["reader"])).await;
    reader.subscribe("docs", json!({"domain": "document"}), Some(0)).await;
    let mut other = ws.connect(&token(stranger, &["reader"])).await;
    other.subscribe("docs", json!({"domain": "document"}), Some(0)).await;

    let mut c = pb::document_service_client::DocumentServiceClient::new(documents.channel().await);
    use cim_testkit::domain::req;
    let created = c.create_document(req(t, pb::CreateDocumentRequest { title: "plan".into(), ..Default::default() }));
    let id = created.await.unwrap().into_inner().document_id;
    use pb::upload_content_request::Part;
    let parts = vec![
        pb::UploadContentRequest {
            part: Some(Part::Start(pb::UploadStart { document_id: id.clone(), ..Default::default() })),
        },
        pb::UploadContentRequest { part: Some(Part::Chunk(b"floor plan".to_vec())) },
    ];
    let cid = c.upload_content(req(t, futures::stream::iter(parts))).await.unwrap().into_inner().content_cid;

    let got = reader.events(2).await;
    let types: Vec<&str> = got.iter().map(|e| e.envelope["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["document_created", "document_content_ingested"]);
    assert!(got.iter().all(|e| e.envelope["aggregate_id"] == id.as_str() && e.envelope["domain"] == "document"));
    assert_eq!(got[1].envelope["payload"]["cid"], cid.as_str());
    other.expect_silence(Duration::from_millis(300)).await;
    ws.stop().await;
    documents.stop().await;
    let _ = std::fs::remove_dir_all(objects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ai_agents_responses_are_followed_piece_by_piece_within_the_tenant() {
    use cim_core::{AggregateId, SubjectPrefix};
    use cim_proto::agent::{ResponseChunk, ResponseCompleted, TokenUsage, response_chunk::End};
    use prost::Message as _;

    let prefix = unique("p");
    let ws = Ws::start(&prefix, &[]).await;
    let (t1, t2) = (TenantId::new(), TenantId::new());
    let (a, b) = (AggregateId::new(), AggregateId::new());
    let mut c1 = ws.connect(&token(t1, &["reader"])).await;
    for (id, agent) in [("a", Some(a.to_string())), ("all", None)] {
        c1.send(json!({"type": "follow_responses", "id": id, "agent_id": agent})).await;
        assert_eq!(c1.json().await, json!({"type": "following", "id": id}));
    }
    let mut c2 = ws.connect(&token(t2, &["reader"])).await;
    c2.send(json!({"type": "follow_responses", "id": "snoop"})).await;
    assert_eq!(c2.json().await["type"], "following");
    c2.send(json!({"type": "follow_responses", "id": "bad", "agent_id": "nope"})).await;
    let refused = c2.json().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("invalid_filter")),
        "{refused}"
    );

    // What the agent service publishes for a response of agent a, then one of agent b.
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let subjects: SubjectPrefix = prefix.parse().unwrap();
    let (m1, m2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let piece = |m: uuid::Uuid, content: &str, end: Option<End>| ResponseChunk {
        message_id: m.to_string(),
        conversation_id: "c".into(),
        content: content.into(),
        end,
    };
    let done = End::Completed(ResponseCompleted {
        message_id: m1.to_string(),
        finish_reason: "stop".into(),
        token_usage: Some(TokenUsage { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 }),
        duration_ms: 42,
    });
    for (agent, chunk) in [
        (a, piece(m1, "Hel", None)),
        (a, piece(m1, "lo", None)),
        (a, piece(m1, "", Some(done))),
        (b, piece(m2, "other", None)),
    ] {
        nats.publish(
            subjects.agent_response(&t1, &agent, &uuid::Uuid::parse_str(&chunk.message_id).unwrap()),
            chunk.encode_to_vec().into(),
        )
        .await
        .unwrap();
    }
    nats.flush().await.unwrap();

    let mut by_id: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for _ in 0..7 {
        let frame = c1.json().await;
        assert_eq!(frame["type"], "response", "{frame}");
        by_id.entry(frame["id"].as_str().unwrap().to_owned()).or_default().push(frame);
    }
    let texts = |frames: &[serde_json::Value]| {
        frames.iter().map(|f| f["content"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(texts(&by_id["a"]), ["Hel", "lo", ""], "agent a's pieces in order");
    assert_eq!(texts(&by_id["all"]), ["Hel", "lo", "", "other"]);
    let last = &by_id["a"][2];
    assert_eq!(last["agent_id"], a.to_string().as_str());
    assert_eq!(last["message_id"], m1.to_string().as_str());
    assert_eq!(
        last["completed"],
        json!({"finish_reason": "stop", "prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "duration_ms": 42})
    );
    assert_eq!(by_id["all"][3]["agent_id"], b.to_string().as_str());
    c2.expect_silence(Duration::from_millis(300)).await;

    // Unsubscribed: nothing more for that id.
    c1.send(json!({"type": "unsubscribe", "id": "a"})).await;
    assert_eq!(c1.json().await, json!({"type": "unsubscribed", "id": "a"}));
    let later = piece(m1, "late", None);
    nats.publish(subjects.agent_response(&t1, &a, &m1), later.encode_to_vec().into()).await.unwrap();
    let frame = c1.json().await;
    assert_eq!((frame["id"].as_str(), frame["content"].as_str()), (Some("all"), Some("late")));
    c1.expect_silence(Duration::from_millis(300)).await;
    ws.stop().await;
}
