//! `cim streams rebuild` after JetStream lost the graph stream, seen by websocket clients: one
//! connected through the loss (reconnecting and resuming from its last position if it is cut
//! off), one resuming afterwards from a position taken before the loss. Each gets every event
//! after its position once, in order: the rebuilt stream holds the events at the positions they
//! had, because the rebuild publishes them in the order the relay did.

use std::net::SocketAddr;
use std::time::Duration;

use cim_core::{Domain, TenantId};
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, unique};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::world::*;

const SECRET: &str = "backup-resume-tests-secret-0123456789abcdef";

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A client subscribed to the tenant's graph events after `from`.
async fn subscribe(addr: SocketAddr, tenant: TenantId, from: u64) -> Socket {
    let claims = cim_auth::Claims {
        sub: "resumer".into(),
        tenant: tenant.to_string(),
        roles: vec!["reader".into()],
        exp: cim_auth::now_secs() + 600,
        iss: "cim".into(),
        aud: "cim".into(),
    };
    let token = cim_auth::issue_hs256(SECRET, &claims).unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", format!("cim.v1, bearer.{token}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["type"], "welcome");
    let subscribe = json!({"type": "subscribe", "id": "s", "filter": {"domain": "graph"}, "from": from});
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let reply = next(&mut ws).await.unwrap();
    assert_eq!((reply["type"].as_str(), reply["position"].as_u64()), (Some("subscribed"), Some(from)), "{reply}");
    ws
}

/// The next JSON frame, or `None` when the server closed the connection.
async fn next(ws: &mut Socket) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a frame within 30 s");
        match frame {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads `n` events as (position, event id), reconnecting and resuming from the last position
/// seen whenever the server closes the connection, as docs/websocket.md tells clients to.
async fn read(ws: &mut Socket, addr: SocketAddr, tenant: TenantId, after: u64, n: usize) -> Vec<(u64, String)> {
    let mut got: Vec<(u64, String)> = Vec::new();
    while got.len() < n {
        match next(ws).await {
            Some(frame) if frame["type"] == "event" => {
                let id = frame["event"]["event_id"].as_str().unwrap().to_owned();
                got.push((frame["position"].as_u64().unwrap(), id));
            }
            Some(frame) => panic!("unexpected frame: {frame}"),
            None => *ws = subscribe(addr, tenant, got.last().map_or(after, |(p, _)| *p)).await,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_clients_resume_across_a_rebuilt_stream_with_nothing_missing_or_twice() {
    let _slot = SLOTS.acquire().await.unwrap();
    let (db, prefix) = (Database::create("bkw").await, unique("p"));
    let vars = [("CIM_DATABASE_URL", db.url.clone()), ("CIM_DATABASE_MAX_CONNECTIONS", "4".to_owned())];
    let shutdown = Shutdown::new();
    let graph = cim_graph::app::prepare(&config(ServiceKind::Graph, &prefix, &vars), &shutdown).await.unwrap();
    let graph = Running::spawn(graph, "graph".into(), prefix.clone(), shutdown);
    let ws_stop = Shutdown::new();
    let ws_config = config(ServiceKind::Websocket, &prefix, &[("CIM_JWT_HS256_SECRET", SECRET.to_owned())]);
    let websocket = cim_websocket::app::prepare(&ws_config, &ws_stop).await.unwrap();
    let addr = websocket.addr;
    let ws_task = tokio::spawn(async move { websocket.run().await.unwrap() });
    let tenant = TenantId::new();

    let before = write_graphs_at(graph.grpc, tenant, 1, 300, 50).await;
    assert_eq!(stream_holds(&prefix, Domain::Graph, before as u64).await, before as u64);
    let pool = db.pool().await;
    let ids = |pool: sqlx::PgPool| async move {
        let all: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT event_id FROM graph.events ORDER BY position").fetch_all(&pool).await.unwrap();
        all.iter().map(|u| u.to_string()).collect::<Vec<_>>()
    };
    // A client reads everything from the start: stream positions 1.. in the events' order.
    let mut live = subscribe(addr, tenant, 0).await;
    let seen = read(&mut live, addr, tenant, 0, before).await;
    let expected: Vec<(u64, String)> = ids(pool.clone()).await.into_iter().zip(1..).map(|(id, p)| (p, id)).collect();
    assert_eq!(seen, expected);

    // JetStream loses the stream; the operator rebuilds it; writers go on.
    let js = jetstream().await;
    js.delete_stream(prefix.parse::<cim_core::SubjectPrefix>().unwrap().stream_name(Domain::Graph)).await.unwrap();
    let out = run_ok(cim(&db, &prefix).args(["streams", "rebuild", "--domain", "graph"]));
    assert!(out.contains(&format!("{before} events published, 0 already there")), "{out}");
    let after = write_graphs_at(graph.grpc, tenant, 1, 100, 50).await;
    let total = before + after;
    assert_eq!(stream_holds(&prefix, Domain::Graph, total as u64).await, total as u64);
    let expected: Vec<(u64, String)> = ids(pool.clone()).await.into_iter().zip(1..).map(|(id, p)| (p, id)).collect();

    // The client connected through the loss gets the new events once each, nothing again.
    let got = read(&mut live, addr, tenant, before as u64, after).await;
    assert_eq!(got, expected[before..], "the live client after the rebuild");
    // A client resuming from a position taken before the loss gets exactly what followed it.
    let mid = 150;
    let mut resumed = subscribe(addr, tenant, mid as u64).await;
    let got = read(&mut resumed, addr, tenant, mid as u64, total - mid).await;
    assert_eq!(got, expected[mid..], "the client resuming from {mid}");
    // And nothing more arrives to either.
    for ws in [&mut live, &mut resumed] {
        let extra = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
        assert!(!matches!(extra, Ok(Some(Ok(Message::Text(_))))), "an extra frame: {extra:?}");
    }

    ws_stop.trigger();
    let _ = ws_task.await;
    graph.stop_replica().await;
    drop_streams(&prefix).await;
    db.drop_now().await;
}
