//! A websocket server (`cim-websocket`) on port 0 beside a test gateway, and a small client: the
//! console's live feed and its one-time tickets are tested against the real server.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::harness;
use super::support::SECRET;

pub struct Websocket {
    pub addr: SocketAddr,
    /// Its admin listener: `/health/ready`, `/metrics`.
    pub admin: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Websocket {
    /// On the graph service's subject prefix, with the gateway's token secret and Redis.
    pub async fn start(graph: &harness::Service) -> Websocket {
        let vars: HashMap<&str, String> = HashMap::from([
            ("CIM_NATS_URL", harness::nats_url()),
            ("CIM_SUBJECT_PREFIX", graph.prefix.clone()),
            ("CIM_WEBSOCKET_ADDR", "127.0.0.1:0".into()),
            ("CIM_WEBSOCKET_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("CIM_JWT_HS256_SECRET", SECRET.into()),
            ("CIM_SHUTDOWN_GRACE_MS", "1000".into()),
        ]);
        let config = Config::from_lookup(&|k| vars.get(k).cloned()).unwrap();
        let shutdown = Shutdown::new();
        let prepared = cim_websocket::app::prepare(&config, &shutdown).await.unwrap();
        let (addr, admin) = (prepared.addr, prepared.admin_addr);
        let task = tokio::spawn(async move { prepared.run().await.unwrap() });
        Websocket { addr, admin, shutdown, task }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// A connection that has sent `{"type":"auth","ticket":...}` as its first message.
    pub async fn with_ticket(&self, ticket: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(self.url()).await.unwrap();
        let mut client = Client { ws };
        client.send(json!({"type": "auth", "ticket": ticket})).await;
        client
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server sent next: a JSON frame, or the close code.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(u16),
}

impl Client {
    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.unwrap();
    }

    /// The next frame within `wait`; `None` when nothing came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            let next = tokio::time::timeout(wait, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => return Some(Frame::Json(serde_json::from_str(&t).unwrap())),
                Some(Ok(Message::Close(c))) => return Some(Frame::Closed(c.map_or(1005, |c| c.code.into()))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Frame::Closed(1006)),
            }
        }
    }

    /// The next JSON frame (within 10 s).
    pub async fn json(&mut self) -> Value {
        match self.next_within(Duration::from_secs(10)).await {
            Some(Frame::Json(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}
