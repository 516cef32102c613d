//! Test support: a graph service and websocket servers in this process on port 0, sharing a
//! random subject prefix (so streams are private to the test), real websocket clients, tokens.

#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_auth::{Claims, issue_hs256, now_secs};
use cim_core::{Domain, SubjectPrefix, TenantId};
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tonic::transport::Channel;

pub const SECRET: &str = "websocket-tests-secret-0123456789abcdef";

/// How long a test waits for any one frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(15);

pub use cim_testkit::domain::{database_url, nats_url, unique};

fn config(vars: HashMap<&str, String>) -> Config {
    Config::from_lookup(&|k| vars.get(k).cloned()).unwrap()
}

/// A signed token for `tenant` with `roles`.
pub fn token(tenant: TenantId, roles: &[&str]) -> String {
    token_with(tenant, roles, now_secs() + 600, SECRET)
}

pub fn token_with(tenant: TenantId, roles: &[&str], exp: u64, secret: &str) -> String {
    let claims = Claims {
        sub: "tester".into(),
        tenant: tenant.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp,
        iss: "cim".into(),
        aud: "cim".into(),
    };
    issue_hs256(secret, &claims).unwrap()
}

/// The graph service, producing real events through its relay.
pub struct Graph {
    pub prefix: String,
    nats: String,
    pub schema: String,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
    pool: sqlx::PgPool,
    pub client: GraphServiceClient<Channel>,
}

fn req<T>(tenant: TenantId, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-cim-tenant", tenant.to_string().parse().unwrap());
    r.metadata_mut().insert("x-cim-actor", "user:test".parse().unwrap());
    r
}

fn string_props(pairs: &[(&str, String)]) -> Option<prost_types::Struct> {
    use prost_types::value::Kind;
    Some(prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), prost_types::Value { kind: Some(Kind::StringValue(v.clone())) }))
            .collect(),
    })
}

impl Graph {
    pub async fn start(prefix: &str) -> Graph {
        Self::start_on(prefix, &nats_url()).await
    }

    pub async fn start_on(prefix: &str, nats: &str) -> Graph {
        let schema = unique("wsg");
        let vars = HashMap::from([
            ("CIM_DATABASE_URL", database_url()),
            ("CIM_NATS_URL", nats.to_owned()),
            ("CIM_SUBJECT_PREFIX", prefix.to_owned()),
            ("CIM_GRAPH_ADDR", "127.0.0.1:0".into()),
            ("CIM_GRAPH_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("CIM_SHUTDOWN_GRACE_MS", "2000".into()),
            ("CIM_DATABASE_MAX_CONNECTIONS", "8".into()),
        ]);
        let shutdown = Shutdown::new();
        let options = cim_graph::app::GraphOptions { schema: schema.clone() };
        let prepared = cim_graph::app::prepare_with(&config(vars), &shutdown, options).await.unwrap();
        let addr = prepared.grpc_addr;
        let pool = prepared.store.pool().clone();
        let task = tokio::spawn(async move { prepared.run().await.unwrap() });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let client = GraphServiceClient::new(channel);
        Graph { prefix: prefix.to_owned(), nats: nats.to_owned(), schema, shutdown, task, pool, client }
    }

    pub async fn create(&mut self, tenant: TenantId) -> String {
        let r = pb::CreateGraphRequest { name: "g".into(), ..Default::default() };
        self.client.create_graph(req(tenant, r)).await.unwrap().into_inner().graph_id
    }

    pub async fn add_node(&mut self, tenant: TenantId, graph: &str, id: &str) {
        let node =
            pb::NodeSpec { id: id.into(), r#type: "person".into(), properties: string_props(&[("name", id.into())]) };
        let r = pb::AddNodeRequest { graph_id: graph.into(), node: Some(node), options: None };
        self.client.add_node(req(tenant, r)).await.unwrap();
    }

    pub async fn add_edge(&mut self, tenant: TenantId, graph: &str, id: &str, source: &str, target: &str) {
        let edge = pb::EdgeSpec {
            id: id.into(),
            r#type: "knows".into(),
            source: source.into(),
            target: target.into(),
            properties: None,
        };
        let r = pb::AddEdgeRequest { graph_id: graph.into(), edge: Some(edge), options: None };
        self.client.add_edge(req(tenant, r)).await.unwrap();
    }

    /// One command adding many nodes, each carrying `padding` bytes: many events at once.
    pub async fn add_nodes_batch(&mut self, tenant: TenantId, graph: &str, ids: &[String], padding: usize) {
        let changes = ids
            .iter()
            .map(|id| pb::GraphChange {
                change: Some(pb::graph_change::Change::AddNode(pb::NodeSpec {
                    id: id.clone(),
                    r#type: "person".into(),
                    properties: string_props(&[("pad", "x".repeat(padding))]),
                })),
            })
            .collect();
        let r = pb::ApplyBatchRequest { graph_id: graph.into(), changes, options: None };
        self.client.apply_batch(req(tenant, r)).await.unwrap();
    }

    /// Stops, verifies the hash chain of every aggregate the test wrote (as `cim verify` does),
    /// and drops the schema and streams.
    pub async fn stop(self) {
        let store = cim_eventstore::EventStore::open(
            self.pool.clone(),
            cim_eventstore::StoreConfig {
                domain: Domain::Graph,
                schema: self.schema.clone(),
                snapshot_every: 1000,
                upcasters: cim_core::Upcasters::new(),
            },
        )
        .await
        .unwrap();
        self.shutdown.trigger();
        let _ = self.task.await;
        let report = store.verify_all().await.expect("chain verification ran");
        assert!(report.broken.is_empty(), "hash chains broken in {}: {:?}", self.schema, report.broken);
        let _ =
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.schema))).execute(&self.pool).await;
        delete_streams(&self.prefix, &self.nats).await;
    }
}

/// Removes every domain stream of `prefix`.
pub async fn delete_streams(prefix: &str, nats: &str) {
    let Ok(client) = async_nats::connect(nats).await else { return };
    let js = async_nats::jetstream::new(client);
    let prefix: SubjectPrefix = prefix.parse().unwrap();
    for d in Domain::ALL {
        let _ = js.delete_stream(prefix.stream_name(d)).await;
    }
}

/// A websocket server in this process.
pub struct Ws {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Ws {
    pub async fn start(prefix: &str, extra: &[(&'static str, &str)]) -> Ws {
        Self::start_on(prefix, &nats_url(), extra).await
    }

    pub async fn start_on(prefix: &str, nats: &str, extra: &[(&'static str, &str)]) -> Ws {
        let mut vars = HashMap::from([
            ("CIM_NATS_URL", nats.to_owned()),
            ("CIM_SUBJECT_PREFIX", prefix.to_owned()),
            ("CIM_WEBSOCKET_ADDR", "127.0.0.1:0".into()),
            ("CIM_WEBSOCKET_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("CIM_JWT_HS256_SECRET", SECRET.into()),
            ("CIM_SHUTDOWN_GRACE_MS", "3000".into()),
        ]);
        for (k, v) in extra {
            vars.insert(k, (*v).to_owned());
        }
        let shutdown = Shutdown::new();
        let prepared = cim_websocket::app::prepare(&config(vars), &shutdown).await.unwrap();
        let (addr, admin) = (prepared.addr, prepared.admin_addr);
        let task = tokio::spawn(async move { prepared.run().await.unwrap() });
        Ws { addr, admin, shutdown, task }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("server stops").unwrap();
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut tcp = TcpStream::connect(self.admin).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n").await.unwrap();
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.unwrap();
        body
    }

    pub async fn connect(&self, token: &str) -> Client {
        Client::connect(self.addr, token).await
    }
}

/// The value of an unlabelled series in a Prometheus exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

/// What a client read.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(u16, String),
    /// The connection ended without a close frame.
    Gone,
}

/// One event frame.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: String,
    pub position: u64,
    pub envelope: Value,
}

impl Ev {
    pub fn node_id(&self) -> Option<&str> {
        self.envelope["payload"]["node_id"].as_str()
    }
}

pub struct Client {
    pub ws: WebSocketStream<TcpStream>,
}

impl Client {
    /// Opens a websocket offering `protocols`; `recv_buffer`: a small socket receive buffer,
    /// for a client that should look slow quickly.
    pub async fn open(
        addr: SocketAddr,
        protocols: &[String],
        recv_buffer: Option<u32>,
    ) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(addr).await.unwrap();
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        if !protocols.is_empty() {
            request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
        }
        let (ws, response) = tokio_tungstenite::client_async(request, tcp).await?;
        Ok((Client { ws }, response))
    }

    /// Connects with the token as a subprotocol and reads the welcome.
    pub async fn connect(addr: SocketAddr, token: &str) -> Client {
        Self::connect_with(addr, token, None).await
    }

    pub async fn connect_with(addr: SocketAddr, token: &str, recv_buffer: Option<u32>) -> Client {
        let protocols = ["cim.v1".to_owned(), format!("bearer.{token}")];
        let (mut client, response) = Client::open(addr, &protocols, recv_buffer).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "cim.v1");
        let welcome = client.json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_owned())).await.unwrap();
    }

    /// The next frame that is not a websocket ping or pong.
    pub async fn frame(&mut self) -> Frame {
        loop {
            let next = tokio::time::timeout(FRAME_WAIT, self.ws.next()).await.expect("a frame in time");
            match next {
                Some(Ok(Message::Text(t))) => return Frame::Json(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(Some(c)))) => return Frame::Closed(u16::from(c.code), c.reason.to_string()),
                Some(Ok(Message::Close(None))) => return Frame::Closed(u16::from(CloseCode::Status), String::new()),
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Frame::Gone,
            }
        }
    }

    pub async fn json(&mut self) -> Value {
        match self.frame().await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Subscribes and returns the position from `subscribed`.
    pub async fn subscribe(&mut self, id: &str, filter: Value, from: Option<u64>) -> u64 {
        let mut msg = json!({"type": "subscribe", "id": id, "filter": filter});
        if let Some(from) = from {
            msg["from"] = from.into();
        }
        self.send(msg).await;
        let reply = self.json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["id"], id);
        reply["position"].as_u64().unwrap()
    }

    /// The next `n` event frames (anything else fails the test).
    pub async fn events(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.json().await;
            assert_eq!(v["type"], "event", "{v}");
            out.push(Ev {
                id: v["id"].as_str().unwrap().to_owned(),
                position: v["position"].as_u64().unwrap(),
                envelope: v["event"].clone(),
            });
        }
        out
    }

    /// Fails if any frame other than pings arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the close frame (events before it are returned).
    pub async fn until_close(&mut self) -> (Vec<Ev>, Option<(u16, String)>) {
        let mut events = Vec::new();
        loop {
            match self.frame().await {
                Frame::Json(v) if v["type"] == "event" => events.push(Ev {
                    id: v["id"].as_str().unwrap().to_owned(),
                    position: v["position"].as_u64().unwrap(),
                    envelope: v["event"].clone(),
                }),
                Frame::Json(v) => panic!("unexpected frame before close: {v}"),
                Frame::Closed(code, reason) => return (events, Some((code, reason))),
                Frame::Gone => return (events, None),
            }
        }
    }
}

/// A client that completes the handshake and then only listens: it never answers a ping, like a
/// peer that is connected but gone. Frames are parsed by hand (server frames are unmasked).
pub struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> RawClient {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: cim.v1, bearer.{token}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient { tcp, buf: Vec::new() };
        let end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(client.fill().await, "the server closed during the handshake");
        };
        let head = String::from_utf8_lossy(&client.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.buf.drain(..end);
        client
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(FRAME_WAIT, self.tcp.read(&mut chunk)).await.expect("bytes in time").unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    /// Reads every frame up to the close frame: the opcodes seen before it, and its code and reason.
    pub async fn until_close(&mut self) -> (Vec<u8>, Option<(u16, String)>) {
        let mut opcodes = Vec::new();
        loop {
            if !self.need(2).await {
                return (opcodes, None);
            }
            let opcode = self.buf[0] & 0x0f;
            let (len, header) = match self.buf[1] & 0x7f {
                126 => {
                    if !self.need(4).await {
                        return (opcodes, None);
                    }
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 => {
                    if !self.need(10).await {
                        return (opcodes, None);
                    }
                    (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                }
                n => (n as usize, 2),
            };
            if !self.need(header + len).await {
                return (opcodes, None);
            }
            let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
            if opcode == 8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (opcodes, Some((code, String::from_utf8_lossy(&payload[2..]).to_string())));
            }
            opcodes.push(opcode);
        }
    }
}

/// A nats-server of our own, for a test that stops it (the shared one is never stopped).
pub struct PrivateNats {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(unique("ws-nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut me = PrivateNats { port, dir, child: None };
        me.restart();
        me
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let binary = ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|b| std::process::Command::new(b).arg("--version").output().is_ok())
            .expect("nats-server installed");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "private nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
