//! Websocket fan-out benchmark. Prints one JSON document.
//!
//! - The websocket server runs as its own process (the `cim-websocket` binary of this build), so
//!   its memory is its own: RSS is read from `/proc/<pid>/status` (`VmRSS` sampled every 500 ms,
//!   and `VmHWM`, the peak, at the end).
//! - The graph service runs in this process (real Postgres, real relay to the shared NATS) and
//!   takes `AddNode` commands at a fixed rate, round-robin over 10 graphs of one tenant.
//! - Every client subscribes to one graph's `node_added` events: 10% of all events.
//! - Commit-to-client latency: from the moment this process has the command's acknowledgement
//!   (the transaction committed) to the moment a client has read the event's frame, same clock.
//!   Also reported: from the event's `occurred_at` (taken before the transaction) to the frame.
//! - Lost frames: events acknowledged to the publisher for a client's graph that the client never
//!   received (after a drain of up to 10 s). Duplicates and out-of-order frames are counted too.
//!
//! `cargo bench -p cim-websocket --bench websocket`; `CIM_BENCH_SECONDS` (default 30),
//! `CIM_BENCH_CLIENTS` (1000), `CIM_BENCH_RATE` (events/s, 1000), `CIM_BENCH_SOURCE` (`graph`,
//! the default, or `jetstream`: events published straight to the stream as the relay would, to
//! measure the websocket server without Postgres and the relay competing for the same cores).
//! `CIM_BENCH_PEER=nats`: the comparison with nats-server's own websocket listener instead
//! (`websocket/peer.rs`).

#[path = "websocket/nats_ws.rs"]
mod nats_ws;
#[path = "websocket/peer.rs"]
mod peer;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cim_auth::{Claims, issue_hs256, now_secs};
use cim_core::{
    Actor, CausationId, CorrelationId, Domain, EventContext, EventEnvelope, EventHash, EventSubject, NewEvent,
    SubjectPrefix, TenantId, headers,
};
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "websocket-bench-secret-0123456789abcdef";
const GRAPHS: usize = 10;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn unique(tag: &str) -> String {
    format!("b{tag}_{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

fn req<T>(tenant: TenantId, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-cim-tenant", tenant.to_string().parse().expect("tenant"));
    r
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// User + system CPU seconds a process has used (clock ticks are 100/s on Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.ok()?;
    Some(body)
}

/// A quantile from a Prometheus histogram's cumulative buckets: the upper bound of the bucket
/// that holds it (so "≤ x").
fn bucket_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    let rank = total * q;
    buckets.iter().find(|(_, c)| *c >= rank).map(|(le, _)| le * 1000.0)
}

fn percentiles_ms(mut samples: Vec<f64>) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::json!({"samples": 0});
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let ms = |s: f64| (s * 1e6).round() / 1e3;
    serde_json::json!({
        "samples": samples.len(),
        "p50_ms": ms(at(0.5)),
        "p90_ms": ms(at(0.9)),
        "p99_ms": ms(at(0.99)),
        "p999_ms": ms(at(0.999)),
        "max_ms": ms(at(1.0)),
    })
}

/// What one client saw: per frame the event id, when it was read, and seconds since `occurred_at`.
#[derive(Default)]
struct Seen {
    frames: Vec<(u128, Instant, f64)>,
    out_of_order: u64,
    closed: Option<String>,
    /// Payload bytes of the event frames.
    bytes: u64,
    /// The order field of the last event frame.
    last_order: u64,
}

impl Seen {
    /// An event frame read at `now`: `order_key` names the number that must grow from frame to
    /// frame (a position, a sequence).
    fn event(&mut self, text: &str, order_key: &str, now: Instant, bytes: usize) {
        let order: u64 = field(text, order_key, ',').and_then(|p| p.parse().ok()).unwrap_or(0);
        if order <= self.last_order {
            self.out_of_order += 1;
        }
        self.last_order = order;
        let id =
            field(text, r#""event_id":""#, '"').and_then(|s| uuid::Uuid::parse_str(s).ok()).map_or(0, |u| u.as_u128());
        // Parsing a timestamp per frame would cost this process more CPU than the server's
        // sending it; every tenth frame is plenty of samples.
        let since_occurred = field(text, r#""occurred_at":""#, '"')
            .filter(|_| (self.frames.len() + 1).is_multiple_of(10))
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .and_then(|t| SystemTime::now().duration_since(SystemTime::from(t)).ok())
            .map_or(f64::NAN, |d| d.as_secs_f64());
        self.frames.push((id, now, since_occurred));
        self.bytes += bytes as u64;
    }
}

/// `cim-websocket` as its own process, ready to serve.
struct WebsocketProcess {
    child: tokio::process::Child,
    pid: u32,
    ws_addr: String,
    admin_addr: String,
}

/// Starts `binary` (a `cim-websocket`) following `prefix`'s streams on `nats_url`, on free ports.
async fn start_websocket(binary: &str, nats_url: &str, prefix: &str) -> WebsocketProcess {
    let ws_addr = format!("127.0.0.1:{}", free_port());
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(binary)
        .env("CIM_NATS_URL", nats_url)
        .env("CIM_SUBJECT_PREFIX", prefix)
        .env("CIM_WEBSOCKET_ADDR", &ws_addr)
        .env("CIM_WEBSOCKET_ADMIN_ADDR", &admin_addr)
        .env("CIM_JWT_HS256_SECRET", SECRET)
        .env("CIM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("cim-websocket starts");
    let pid = child.id().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(&admin_addr, "/health/ready")
        .await
        .is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
    {
        assert!(Instant::now() < deadline, "cim-websocket did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    WebsocketProcess { child, pid, ws_addr, admin_addr }
}

/// The field right after `key` in a frame, up to the next `"` (or `,` for numbers).
fn field<'a>(text: &'a str, key: &str, end: char) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    Some(&rest[..rest.find(end)?])
}

/// A client frame: masked, as RFC 6455 requires of clients.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x5a, 0x13, 0xc7, 0x2e];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// One complete server frame at the start of `buf`: (opcode, payload range, frame length).
fn server_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, header) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    (buf.len() >= header + len).then(|| (buf[0] & 0x0f, header..header + len, header + len))
}

/// A bench client speaking the websocket framing directly over TCP: the load generator shares
/// two cores with the server, so it must cost less per frame than a general-purpose library.
/// (The tests use tokio-tungstenite.)
/// A reader's token for `tenant`, valid for an hour.
fn reader_token(tenant: TenantId) -> String {
    let claims = Claims {
        sub: "bench".into(),
        tenant: tenant.to_string(),
        roles: vec!["reader".into()],
        exp: now_secs() + 3600,
        iss: "cim".into(),
        aud: "cim".into(),
    };
    issue_hs256(SECRET, &claims).expect("token")
}

/// Reads more of a client's socket into `buf`; why it closed when it did (or `stop` came: None
/// and the caller stops).
async fn read_more(tcp: &mut TcpStream, buf: &mut Vec<u8>, stop: &CancellationToken) -> Result<(), Option<String>> {
    let read = tokio::select! {
        r = tcp.read_buf(buf) => r,
        _ = stop.cancelled() => return Err(None),
    };
    match read {
        Ok(0) => Err(Some("ended".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(Some(e.to_string())),
    }
}

async fn client(
    addr: String,
    token: String,
    graph: String,
    ready: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut tcp) = TcpStream::connect(&addr).await else {
        seen.closed = Some("connect failed".into());
        return seen;
    };
    let _ = tcp.set_nodelay(true);
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: cim.v1, bearer.{token}\r\n\r\n"
    );
    let subscribe = serde_json::json!({
        "type": "subscribe", "id": "s",
        "filter": {"domain": "graph", "aggregate_id": graph, "event_types": ["node_added"]}
    });
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let upgraded = async {
        tcp.write_all(handshake.as_bytes()).await?;
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other(String::from_utf8_lossy(&buf[..i]).to_string()));
                }
                buf.drain(..i + 4);
                break;
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::other("closed during the handshake"));
            }
        }
        tcp.write_all(&masked_frame(1, subscribe.to_string().as_bytes())).await
    };
    if let Err(e) = upgraded.await {
        seen.closed = Some(format!("handshake: {e}"));
        return seen;
    }
    'read: loop {
        let mut consumed = 0;
        while let Some((opcode, payload, len)) = server_frame(&buf[consumed..]) {
            let payload = &buf[consumed..][payload];
            match opcode {
                1 => {
                    let now = Instant::now();
                    let text = std::str::from_utf8(payload).unwrap_or_default();
                    if !text.starts_with(r#"{"type":"event""#) {
                        if text.contains(r#""type":"subscribed""#) {
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        seen.event(text, r#""position":"#, now, payload.len());
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
                9 => {
                    let pong = masked_frame(10, payload);
                    if tcp.write_all(&pong).await.is_err() {
                        seen.closed = Some("pong failed".into());
                        break 'read;
                    }
                }
                8 => {
                    seen.closed = Some(format!("close frame {:?}", String::from_utf8_lossy(payload)));
                    break 'read;
                }
                _ => {}
            }
            consumed += len;
        }
        buf.drain(..consumed);
        if let Err(why) = read_more(&mut tcp, &mut buf, &stop).await {
            seen.closed = why;
            break;
        }
    }
    let _ = tcp.write_all(&masked_frame(8, &1000u16.to_be_bytes())).await;
    seen
}

#[tokio::main]
async fn main() {
    if env("CIM_BENCH_PEER", "") == "nats" {
        return peer::run().await;
    }
    let seconds: f64 = env("CIM_BENCH_SECONDS", "30").parse().expect("CIM_BENCH_SECONDS");
    let clients: usize = env("CIM_BENCH_CLIENTS", "1000").parse().expect("CIM_BENCH_CLIENTS");
    let rate: u64 = env("CIM_BENCH_RATE", "1000").parse().expect("CIM_BENCH_RATE");
    let database_url = env("CIM_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres");
    let nats_url = env("CIM_TEST_NATS_URL", "nats://127.0.0.1:4222");
    let prefix = unique("p");
    let schema = unique("g");

    // The graph service, in this process.
    let vars: HashMap<&str, String> = HashMap::from([
        ("CIM_DATABASE_URL", database_url),
        ("CIM_NATS_URL", nats_url.clone()),
        ("CIM_SUBJECT_PREFIX", prefix.clone()),
        ("CIM_GRAPH_ADDR", "127.0.0.1:0".into()),
        ("CIM_GRAPH_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("CIM_DATABASE_MAX_CONNECTIONS", "16".into()),
        ("CIM_LOG", "warn".into()),
    ]);
    let config = Config::from_lookup(&|k| vars.get(k).cloned()).expect("config");
    let graph_stop = Shutdown::new();
    let options = cim_graph::app::GraphOptions { schema: schema.clone() };
    let prepared = cim_graph::app::prepare_with(&config, &graph_stop, options).await.expect("graph service");
    let grpc = prepared.grpc_addr;
    let pool = prepared.store.pool().clone();
    let graph_task = tokio::spawn(async move { prepared.run().await.expect("graph service runs") });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("graph channel");
    let mut graph = GraphServiceClient::new(channel);

    // The websocket server, as its own process.
    let websocket = start_websocket(env!("CARGO_BIN_EXE_cim-websocket"), &nats_url, &prefix).await;
    let (mut server, pid, ws_addr, admin_addr) =
        (websocket.child, websocket.pid, websocket.ws_addr, websocket.admin_addr);
    let rss_idle = vm_kib(pid, "VmRSS:");

    let tenant = TenantId::new();
    let mut graphs = Vec::new();
    for _ in 0..GRAPHS {
        let r = pb::CreateGraphRequest { name: "bench".into(), ..Default::default() };
        graphs.push(graph.create_graph(req(tenant, r)).await.expect("create graph").into_inner().graph_id);
    }
    let token = reader_token(tenant);

    // Clients connect in waves, so the listen backlog is never the bottleneck.
    let ready = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut counters = Vec::with_capacity(clients);
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let got = Arc::new(AtomicU64::new(0));
        counters.push((i % GRAPHS, got.clone()));
        let task = client(ws_addr.clone(), token.clone(), graphs[i % GRAPHS].clone(), ready.clone(), got, stop.clone());
        tasks.push(tokio::spawn(task));
        if i % 100 == 99 {
            while ready.load(Ordering::Relaxed) < (i + 1) as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < clients as u64 {
        assert!(Instant::now() < deadline, "clients did not all subscribe: {}", ready.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_connected = vm_kib(pid, "VmRSS:");

    // RSS while it works.
    let rss_max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (rss_max, stop) = (rss_max.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Some(kib) = vm_kib(pid, "VmRSS:") {
                    rss_max.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // When each event reached NATS, seen by a plain subscriber: splits commit-to-client into the
    // relay's part (commit → NATS) and the websocket server's part (NATS → client).
    let observed: Arc<std::sync::Mutex<HashMap<u128, Instant>>> = Arc::default();
    let observer = {
        let nats = async_nats::connect(nats_url.as_str()).await.expect("nats");
        let mut sub = nats.subscribe(format!("{prefix}.graph.evt.>")).await.expect("subscribe");
        let (observed, stop) = (observed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = sub.next() => m,
                    _ = stop.cancelled() => break,
                };
                let Some(message) = message else { break };
                let now = Instant::now();
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .and_then(|v| uuid::Uuid::parse_str(v.as_str()).ok());
                if let Some(id) = id {
                    observed.lock().expect("observed").insert(id.as_u128(), now);
                }
            }
            drop(nats);
        })
    };
    let cpu_before = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    // Publish at a fixed rate; each acknowledgement is the commit time of its event.
    // `CIM_BENCH_SOURCE=jetstream`: events published straight to the stream (as the relay would),
    // so the run measures the websocket server without Postgres and the relay on the same cores.
    let source = env("CIM_BENCH_SOURCE", "graph");
    let subject_prefix: SubjectPrefix = prefix.parse().expect("prefix");
    let mut direct = if source == "jetstream" {
        let js = async_nats::jetstream::new(async_nats::connect(nats_url.as_str()).await.expect("nats"));
        let chains: Vec<(EventContext, u64, EventHash)> = graphs
            .iter()
            .map(|g| {
                let ctx = EventContext {
                    domain: Domain::Graph,
                    aggregate_type: "graph".parse().expect("aggregate type"),
                    aggregate_id: g.parse().expect("graph id"),
                    tenant_id: tenant,
                    actor: Actor::service("bench"),
                    correlation_id: CorrelationId::new(),
                    causation_id: CausationId::new(),
                };
                // Sequence 1 is the graph_created event the graph service wrote.
                (ctx, 1, EventHash::GENESIS)
            })
            .collect();
        Some((js, chains))
    } else {
        None
    };
    let acks: Arc<std::sync::Mutex<Vec<(usize, u128, Instant)>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    let total = (seconds * rate as f64) as u64;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishers = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticker.tick().await;
        let permit = inflight.clone().acquire_owned().await.expect("semaphore");
        let (acks, failed) = (acks.clone(), failed.clone());
        let g = (n as usize) % GRAPHS;
        if let Some((js, chains)) = direct.as_mut() {
            // What the relay does for a committed event, without Postgres behind it.
            let (ctx, sequence, prev) = &mut chains[g];
            let new = NewEvent {
                event_type: "node_added".parse().expect("event type"),
                schema_version: 1,
                payload: serde_json::json!({"node_id": format!("n{n}"), "node_type": "person", "properties": {}}),
            };
            *sequence += 1;
            let e = EventEnvelope::seal(ctx, new, *sequence, *prev, chrono::Utc::now());
            *prev = e.hash;
            let subject = EventSubject {
                domain: e.domain,
                aggregate_type: e.aggregate_type.clone(),
                aggregate_id: e.aggregate_id,
                event_type: e.event_type.clone(),
            }
            .to_subject(&subject_prefix);
            let mut h = async_nats::HeaderMap::new();
            h.insert(headers::MSG_ID, e.event_id.to_string().as_str());
            h.insert(headers::TENANT_ID, e.tenant_id.to_string().as_str());
            h.insert(headers::EVENT_TYPE, e.event_type.as_str());
            h.insert(headers::AGGREGATE_ID, e.aggregate_id.to_string().as_str());
            let body = serde_json::to_vec(&e).expect("envelope");
            let message = async_nats::jetstream::message::PublishMessage::build().payload(body.into()).headers(h);
            let id = e.event_id.as_uuid().as_u128();
            match js.send_publish(subject, message).await {
                Ok(ack) => publishers.push(tokio::spawn(async move {
                    match ack.await {
                        Ok(_) => acks.lock().expect("acks").push((g, id, Instant::now())),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                })),
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            continue;
        }
        let mut graph = graph.clone();
        let graph_id = graphs[g].clone();
        publishers.push(tokio::spawn(async move {
            let node = pb::NodeSpec { id: format!("n{n}"), r#type: "person".into(), properties: None };
            let r = pb::AddNodeRequest { graph_id, node: Some(node), options: None };
            match graph.add_node(req(tenant, r)).await {
                Ok(resp) => {
                    let at = Instant::now();
                    let id = resp.into_inner().event_ids.first().and_then(|s| uuid::Uuid::parse_str(s).ok());
                    if let Some(id) = id {
                        acks.lock().expect("acks").push((g, id.as_u128(), at));
                    }
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for p in publishers {
        let _ = p.await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let cpu_after = (cpu_seconds(pid), cpu_seconds(std::process::id()));
    let cpu_share = |before: Option<f64>, after: Option<f64>| {
        before.zip(after).map(|(b, a)| ((a - b) / publish_secs * 100.0).round() / 100.0)
    };

    // Drain: wait until every client has what was published for its graph, at most 10 s.
    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    let mut per_graph = [0u64; GRAPHS];
    for (g, _, _) in &acks {
        per_graph[*g] += 1;
    }
    let expected: u64 = counters.iter().map(|(g, _)| per_graph[*g]).sum();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received: u64 = counters.iter().map(|(_, c)| c.load(Ordering::Relaxed)).sum();
        if received >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics_text = http_get(&admin_addr, "/metrics").await.unwrap_or_default();
    let rss_end = vm_kib(pid, "VmRSS:");
    let rss_hwm = vm_kib(pid, "VmHWM:");
    stop.cancel();
    let _ = sampler.await;
    let _ = observer.await;
    let observed = std::mem::take(&mut *observed.lock().expect("observed"));

    let ack_at: HashMap<u128, (usize, Instant)> = acks.iter().map(|(g, id, at)| (*id, (*g, *at))).collect();
    let mut by_graph: Vec<HashSet<u128>> = vec![HashSet::new(); GRAPHS];
    for (g, id, _) in &acks {
        by_graph[*g].insert(*id);
    }
    let (mut commit_lat, mut occurred_lat, mut nats_lat) = (Vec::new(), Vec::new(), Vec::new());
    let relay_lat: Vec<f64> = acks
        .iter()
        .filter_map(|(_, id, acked)| observed.get(id).map(|seen| seen.saturating_duration_since(*acked).as_secs_f64()))
        .collect();
    let (mut lost, mut duplicates, mut out_of_order, mut unknown, mut before_ack, mut closed) = (0, 0, 0, 0, 0, 0);
    let mut close_reasons: HashMap<String, u64> = HashMap::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let seen = task.await.expect("client task");
        out_of_order += seen.out_of_order;
        if let Some(reason) = seen.closed {
            closed += 1;
            *close_reasons.entry(reason.chars().take(120).collect()).or_default() += 1;
        }
        let mut distinct = HashSet::with_capacity(seen.frames.len());
        for (id, at, since_occurred) in &seen.frames {
            if !distinct.insert(*id) {
                duplicates += 1;
                continue;
            }
            match ack_at.get(id) {
                Some((_, acked)) => {
                    if *at < *acked {
                        before_ack += 1;
                    }
                    commit_lat.push(at.saturating_duration_since(*acked).as_secs_f64());
                }
                None => unknown += 1,
            }
            if let Some(seen) = observed.get(id) {
                nats_lat.push(at.saturating_duration_since(*seen).as_secs_f64());
            }
            if since_occurred.is_finite() {
                occurred_lat.push(*since_occurred);
            }
        }
        lost += by_graph[i % GRAPHS].difference(&distinct).count() as u64;
    }
    let frames_received: u64 = counters.iter().map(|(_, c)| c.load(Ordering::Relaxed)).sum();
    let metric = |name: &str| {
        metrics_text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.parse::<f64>().ok()))
    };
    let commit = percentiles_ms(commit_lat);
    let mib = |kib: Option<u64>| kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0);
    let rss_max_mib = mib(Some(rss_max.load(Ordering::Relaxed)).filter(|k| *k > 0));
    let p99 = commit["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let report = serde_json::json!({
        "benchmark": "websocket fan-out",
        "source": if direct.is_some() { "events published straight to JetStream (commit = JetStream ack)" } else { "graph service AddNode (commit = gRPC ack), relay to JetStream" },
        "clients": clients,
        "filter": "each client: one graph's node_added events (1 of 10 graphs = 10% of events)",
        "target_rate_per_s": rate,
        "seconds": seconds,
        "events_published": acks.len(),
        "publish_failures": failed.load(Ordering::Relaxed),
        "publish_rate_per_s": (acks.len() as f64 / publish_secs).round(),
        "frames_expected": expected,
        "frames_received": frames_received,
        "frames_per_s": (frames_received as f64 / publish_secs).round(),
        "lost_frames": lost,
        "duplicate_frames": duplicates,
        "out_of_order_frames": out_of_order,
        "unknown_frames": unknown,
        "clients_closed_early": closed,
        "close_reasons": close_reasons,
        "commit_to_client": commit,
        "frames_read_before_the_publisher_had_its_ack": before_ack,
        "occurred_at_to_client": percentiles_ms(occurred_lat),
        "split": {
            "commit_to_nats_relay": percentiles_ms(relay_lat),
            "nats_to_client_websocket_server": percentiles_ms(nats_lat),
            "how": "a plain NATS subscriber in the bench process notes when each event is published",
        },
        "server_rss_mib": {
            "idle": mib(rss_idle),
            "connected_subscribed": mib(rss_connected),
            "max_sampled_during_run": rss_max_mib,
            "end": mib(rss_end),
            "peak_vmhwm": mib(rss_hwm),
            "how": "cim-websocket runs as a child process; /proc/<pid>/status VmRSS sampled every 500 ms, VmHWM at the end",
        },
        "cpu_cores_used_while_publishing": {
            "websocket_server": cpu_share(cpu_before.0, cpu_after.0),
            "bench_process_graph_service_and_1000_clients": cpu_share(cpu_before.1, cpu_after.1),
            "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "server_histograms_ms_bucket_upper_bounds": {
            "delivery_latency_p50": bucket_quantile(&metrics_text, "cim_websocket_delivery_latency_seconds", 0.5),
            "delivery_latency_p99": bucket_quantile(&metrics_text, "cim_websocket_delivery_latency_seconds", 0.99),
            "feed_delay_p50": bucket_quantile(&metrics_text, "cim_websocket_feed_delay_seconds", 0.5),
            "feed_delay_p99": bucket_quantile(&metrics_text, "cim_websocket_feed_delay_seconds", 0.99),
        },
        "server_metrics": {
            "cim_websocket_frames_sent_total": metric("cim_websocket_frames_sent_total"),
            "cim_websocket_lagging_clients_closed_total": metric("cim_websocket_lagging_clients_closed_total"),
            "cim_websocket_connected_clients": metric("cim_websocket_connected_clients"),
            "cim_websocket_subscriptions": metric("cim_websocket_subscriptions"),
        },
        "targets": {"commit_to_client_p99_ms": 10, "lost_frames": 0, "server_rss_mib": 100},
        "met": {
            "p99": p99 <= 10.0,
            "lost": lost == 0,
            "rss": mib(rss_hwm).is_some_and(|m| m <= 100.0),
        },
    });
    let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report).unwrap_or_default());

    // Clean up: the server, the graph service, its schema and the streams of this prefix.
    let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    graph_stop.trigger();
    let _ = graph_task.await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&pool).await;
    if let Ok(client) = async_nats::connect(nats_url.as_str()).await {
        let js = async_nats::jetstream::new(client);
        for d in Domain::ALL {
            let _ = js.delete_stream(subject_prefix.stream_name(d)).await;
        }
    }
}
