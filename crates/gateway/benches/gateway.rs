//! Gateway throughput, printed as one JSON document:
//! - GET of a cached graph through the gateway at concurrency 64 (target ≥ 10,000 req/s), next to
//!   GetGraph made directly over gRPC;
//! - AddNode through the gateway (POST) and directly over gRPC at concurrency 64, each client on
//!   its own graph, in three alternating pairs; the median pair is the result (target: the
//!   gateway costs ≤ 25% of the direct throughput).
//!
//! Everything runs in this process against the local Postgres, NATS and Redis; HTTP clients keep
//! one HTTP/1.1 connection each.

#[path = "../../graph/tests/support/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cim_auth::{Claims, issue_hs256, now_secs};
use cim_core::TenantId;
use cim_proto::graph as pb;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use http_body_util::{BodyExt, Full};

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const CONCURRENCY: usize = 64;

/// `CONCURRENCY` workers made by `make`, warmed up for half a second, then measured for `secs`:
/// the rate and latency of the operations that end inside the window.
async fn run<F, Fut>(secs: f64, make: F) -> cim_testkit::bench::Throughput
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Box<dyn FnMut(u64) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let mut op = make(w).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // (when it ended, how long it took) of every operation
            let mut timed = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                op(i).await;
                let ended = Instant::now();
                timed.push((ended, (ended - began).as_secs_f64()));
                i += 1;
            }
            timed
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        if let Ok(timed) = t.await {
            latencies.extend(timed.into_iter().filter(|(at, _)| *at >= start && *at <= end).map(|(_, d)| d));
        }
    }
    latencies.sort_by(f64::total_cmp);
    cim_testkit::bench::Throughput { per_s: latencies.len() as f64 / (end - start).as_secs_f64(), latencies }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let io = hyper_io::Io(stream);
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn send(s: &mut Sender, method: &str, uri: &str, token: &str, body: Option<String>) -> u16 {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "gateway")
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).expect("request");
    let res = s.send_request(req).await.expect("send");
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    status
}

/// tokio's TcpStream as hyper's IO traits (hyper-util would bring a lot more than this).
mod hyper_io {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    pub struct Io(pub tokio::net::TcpStream);

    impl hyper::rt::Read for Io {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            mut buf: hyper::rt::ReadBufCursor<'_>,
        ) -> Poll<std::io::Result<()>> {
            // Read into a stack buffer, then copy: no unsafe access to the uninitialized cursor.
            let mut tmp = [0u8; 16 * 1024];
            let n = {
                let mut rb = ReadBuf::new(&mut tmp[..buf.remaining().min(16 * 1024)]);
                match Pin::new(&mut self.get_mut().0).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => rb.filled().len(),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            buf.put_slice(&tmp[..n]);
            Poll::Ready(Ok(()))
        }
    }

    impl hyper::rt::Write for Io {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }
}

#[tokio::main]
async fn main() {
    let secs: f64 = std::env::var("CIM_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let graph = harness::Service::start().await;
    let vars: HashMap<String, String> = HashMap::from([
        ("CIM_GATEWAY_GRAPH_URLS".into(), format!("http://{}", graph.grpc)),
        ("CIM_NATS_URL".into(), harness::nats_url()),
        ("CIM_SUBJECT_PREFIX".into(), graph.prefix.clone()),
        ("CIM_GATEWAY_ADDR".into(), "127.0.0.1:0".into()),
        ("CIM_GATEWAY_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("CIM_JWT_HS256_SECRET".into(), SECRET.into()),
        ("CIM_LOG".into(), "error".into()),
        // Counted like in production (one Redis INCR per request), but high enough not to refuse.
        ("CIM_GATEWAY_RATE_LIMIT_PER_MINUTE".into(), "10000000".into()),
    ]);
    // Experiments: `CIM_BENCH_GATEWAY_ENV="K=V K=V"` overrides gateway settings for one run.
    let mut vars = vars;
    for kv in std::env::var("CIM_BENCH_GATEWAY_ENV").unwrap_or_default().split_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    let config = Config::from_lookup(&|k| vars.get(k).cloned()).expect("config");
    let shutdown = Shutdown::new();
    let gw = cim_gateway::app::prepare(&config, &shutdown).await.expect("gateway");
    let addr = gw.addr;
    let server = tokio::spawn(gw.run());
    let tenant = TenantId::new();
    let token = Arc::new(
        issue_hs256(
            SECRET,
            &Claims {
                sub: "bench".into(),
                tenant: tenant.to_string(),
                roles: vec!["writer".into()],
                exp: now_secs() + 3600,
                iss: "cim".into(),
                aud: "cim".into(),
            },
        )
        .expect("token"),
    );
    let grpc = graph.client().await;
    let new_graph = |mut c: pb::graph_service_client::GraphServiceClient<tonic::transport::Channel>| async move {
        c.create_graph(harness::req(tenant, pb::CreateGraphRequest { name: "b".into(), ..Default::default() }))
            .await
            .expect("create")
            .into_inner()
            .graph_id
    };
    let hot = new_graph(grpc.clone()).await;
    // Let the cache invalidator's consumer start so the cache is in use.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let get_gw = {
        let (hot, token) = (hot.clone(), token.clone());
        run(secs, move |_| {
            let (hot, token) = (hot.clone(), token.clone());
            async move {
                let sender = Arc::new(tokio::sync::Mutex::new(connect(addr).await));
                Box::new(move |_| {
                    let (hot, token, sender) = (hot.clone(), token.clone(), sender.clone());
                    Box::pin(async move {
                        let status =
                            send(&mut *sender.lock().await, "GET", &format!("/api/v1/graphs/{hot}"), &token, None)
                                .await;
                        assert_eq!(status, 200);
                    }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
                }) as Box<dyn FnMut(u64) -> _ + Send>
            }
        })
        .await
    };
    let get_grpc = {
        let (hot, grpc) = (hot.clone(), grpc.clone());
        run(secs, move |_| {
            let (hot, grpc) = (hot.clone(), grpc.clone());
            async move {
                Box::new(move |_| {
                    let (hot, mut grpc) = (hot.clone(), grpc.clone());
                    Box::pin(async move {
                        grpc.get_graph(harness::req(tenant, pb::GetGraphRequest { graph_id: hot })).await.expect("get");
                    }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
                }) as Box<dyn FnMut(u64) -> _ + Send>
            }
        })
        .await
    };
    let add_gw = || {
        let (token, grpc) = (token.clone(), grpc.clone());
        run(secs, move |_| {
            let (token, grpc) = (token.clone(), grpc.clone());
            async move {
                let g = new_graph(grpc).await;
                let sender = Arc::new(tokio::sync::Mutex::new(connect(addr).await));
                Box::new(move |i| {
                    let (g, token, sender) = (g.clone(), token.clone(), sender.clone());
                    Box::pin(async move {
                        let body = format!(r#"{{"id":"n{i}","type":"person"}}"#);
                        let status = send(
                            &mut *sender.lock().await,
                            "POST",
                            &format!("/api/v1/graphs/{g}/nodes"),
                            &token,
                            Some(body),
                        )
                        .await;
                        assert_eq!(status, 201);
                    }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
                }) as Box<dyn FnMut(u64) -> _ + Send>
            }
        })
    };
    let add_grpc = || {
        let grpc = grpc.clone();
        run(secs, move |_| {
            let grpc = grpc.clone();
            async move {
                let g = new_graph(grpc.clone()).await;
                Box::new(move |i| {
                    let (g, mut grpc) = (g.clone(), grpc.clone());
                    Box::pin(async move {
                        grpc.add_node(harness::req(
                            tenant,
                            pb::AddNodeRequest {
                                graph_id: g,
                                node: Some(pb::NodeSpec {
                                    id: format!("n{i}"),
                                    r#type: "person".into(),
                                    properties: None,
                                }),
                                options: None,
                            },
                        ))
                        .await
                        .expect("add");
                    }) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
                }) as Box<dyn FnMut(u64) -> _ + Send>
            }
        })
    };
    // The two AddNode points alternate, three rounds: each pair runs back to back under the same
    // conditions (relay and consumer backlogs, autovacuum, other tenants of the machine), and
    // the median pair is reported. A single pair varied from 0.05 to 0.49 between runs.
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let gw = add_gw().await;
        let direct = add_grpc().await;
        let overhead = 1.0 - gw.per_s / direct.per_s;
        pairs.push((gw, direct, overhead));
    }
    let mut by_overhead: Vec<usize> = (0..pairs.len()).collect();
    by_overhead.sort_by(|a, b| pairs[*a].2.total_cmp(&pairs[*b].2));
    let (add_gw, add_grpc, overhead) = &pairs[by_overhead[1]];
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let doc = serde_json::json!({
        "bench": "gateway",
        "concurrency": CONCURRENCY,
        "seconds_per_point": secs,
        "cached_get_per_s": get_gw.per_s.round(),
        "grpc_get_graph_per_s": get_grpc.per_s.round(),
        "add_node_gateway_per_s": add_gw.per_s.round(),
        "add_node_grpc_per_s": add_grpc.per_s.round(),
        "gateway_overhead_on_add_node": round3(*overhead),
        "latency": {
            "cached_get": get_gw.json(),
            "grpc_get_graph": get_grpc.json(),
            "add_node_gateway": add_gw.json(),
            "add_node_grpc": add_grpc.json(),
        },
        "add_node_rounds": pairs.iter().map(|(gw, direct, o)| serde_json::json!({
            "gateway": gw.json(), "grpc": direct.json(), "overhead": round3(*o),
        })).collect::<Vec<_>>(),
        "targets": {
            "cached_get_per_s": {"target": 10000, "measured": get_gw.per_s.round(), "met": get_gw.per_s >= 10000.0},
            "add_node_overhead": {"target": 0.25, "measured": round3(*overhead), "met": *overhead <= 0.25},
        },
    });
    let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    shutdown.trigger();
    let _ = server.await;
    graph.stop().await;
}
