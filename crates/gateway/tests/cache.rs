//! The response cache across domains, over real TCP: documents cached and invalidated like
//! graphs (by a write through the gateway at once, by the domain's events otherwise), streamed
//! content never cached, and each domain cached on its own, whatever the others' streams do.

#[path = "support/document.rs"]
mod document;
#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;

use cim_auth::now_secs;
use cim_core::{Domain, SubjectPrefix, TenantId};
use cim_proto::document::UpdateMetadataRequest;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{config, req, unique};
use http::{call, exchange};
use support::*;

/// A request head for [`exchange`], which keeps a body's bytes as they are.
fn request(method: &str, path: &str, auth: &[(&str, String)], extra: &[&str]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: cim\r\nConnection: close\r\n");
    for (k, v) in auth {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head + "\r\n"
}

/// Until a repeated GET of `path` is a hit: the events of earlier writes bump the generation
/// again when they arrive, dropping what was cached before them.
async fn cached(a: std::net::SocketAddr, path: &str, auth: &[(&str, String)]) -> bool {
    eventually(|| async {
        call(a, "GET", path, auth, None).await;
        call(a, "GET", path, auth, None).await.header("x-cache") == Some("hit")
    })
    .await
}

/// With no graph service under its prefix (no graph stream), so the document cache is shown to
/// stand on its own consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn document_reads_are_cached_fresh_after_every_change_and_content_never_cached() {
    let prefix = unique("p");
    let service = document::DocumentService::start(&prefix).await;
    let vars = [("CIM_GATEWAY_DOCUMENT_URLS", service.url()), ("CIM_JWT_HS256_SECRET", SECRET.to_owned())];
    let stop = Shutdown::new();
    let gw = cim_gateway::app::prepare(&config(ServiceKind::Gateway, &prefix, &vars), &stop).await.unwrap();
    let a = gw.addr;
    let task = tokio::spawn(async move { gw.run().await.unwrap() });
    let tenant = TenantId::new();
    let writer = bearer(&token(tenant, &["writer"], now_secs() + 600));
    let reader = bearer(&token(tenant, &["reader"], now_secs() + 600));

    let created = call(a, "POST", "/api/v1/documents", &writer, Some(r#"{"title":"Site plan"}"#)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["document_id"].as_str().unwrap().to_owned();
    let (doc, content) = (format!("/api/v1/documents/{id}"), format!("/api/v1/documents/{id}/content"));
    let body: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let upload = |len: usize| {
        request(
            "PUT",
            &content,
            &writer,
            &["Content-Type: application/octet-stream", &format!("Content-Length: {len}")],
        )
    };
    let (status, _, reply) = exchange(a, upload(body.len()), &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));

    // A repeated GET is a hit, and the same document.
    assert!(cached(a, &doc, &reader).await, "a repeated document GET was never a cache hit");
    let hit = call(a, "GET", &doc, &reader, None).await;
    assert_eq!((hit.header("x-cache"), hit.json()["title"].as_str()), (Some("hit"), Some("Site plan")), "{hit:?}");

    // Read-your-writes: a change through the gateway is seen by the very next GET, before its
    // event arrives.
    let r = call(a, "PATCH", &doc, &writer, Some(r#"{"title":"Revised"}"#)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let fresh = call(a, "GET", &doc, &reader, None).await;
    assert_eq!((fresh.header("x-cache"), fresh.json()["title"].as_str()), (Some("miss"), Some("Revised")), "{fresh:?}");
    // A streamed upload is a write too.
    let versions = format!("{doc}/versions");
    assert!(cached(a, &versions, &reader).await, "a repeated versions GET was never a cache hit");
    let body: Vec<u8> = body.into_iter().rev().collect();
    let (status, _, reply) = exchange(a, upload(body.len()), &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let r = call(a, "GET", &versions, &reader, None).await;
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(2), "{r:?}");

    // A change made behind the gateway's back (directly over gRPC) shows once its event arrives,
    // and stays.
    assert!(cached(a, &doc, &reader).await, "the revised document was never a cache hit");
    let mut direct = DocumentServiceClient::new(service.running.channel().await);
    let change = UpdateMetadataRequest { document_id: id.clone(), title: "Direct".into(), ..Default::default() };
    direct.update_metadata(req(tenant, change)).await.unwrap();
    let title = || async { call(a, "GET", &doc, &reader, None).await.json()["title"].as_str().map(str::to_owned) };
    assert!(eventually(|| async { title().await.as_deref() == Some("Direct") }).await, "the change never showed");
    for _ in 0..5 {
        assert_eq!(title().await.as_deref(), Some("Direct"));
    }

    // Content is a transfer: never cached, whole or ranged, and its bytes intact.
    for _ in 0..2 {
        let (status, headers, bytes) = exchange(a, request("GET", &content, &reader, &[]), b"").await;
        assert_eq!((status, headers.get("x-cache")), (200, None), "{headers:?}");
        assert!(bytes == body, "downloaded {} bytes", bytes.len());
        let (status, headers, bytes) =
            exchange(a, request("GET", &content, &reader, &["Range: bytes=10-19"]), b"").await;
        assert_eq!((status, headers.get("x-cache")), (206, None), "{headers:?}");
        assert_eq!(bytes, body[10..20]);
    }

    stop.trigger();
    let _ = task.await;
    service.stop().await;
}

/// A domain whose stream is missing (here: no document service deployed) bypasses only its own
/// routes: the graphs are still cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_graph_cache_hits_while_the_document_stream_is_missing() {
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[]).await;
    let js = async_nats::jetstream::new(async_nats::connect(harness::nats_url()).await.unwrap());
    let prefix: SubjectPrefix = graph.prefix.parse().unwrap();
    assert!(js.get_stream(prefix.stream_name(Domain::Document)).await.is_err(), "a document stream exists");
    let writer = bearer(&token(TenantId::new(), &["writer"], now_secs() + 600));
    let r = call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"alone"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let base = format!("/api/v1/graphs/{}", r.json()["graph_id"].as_str().unwrap());
    assert!(cached(gw.addr, &base, &writer).await, "no graph cache hit without a document stream");
    gw.stop().await;
    graph.stop().await;
}

/// `cim streams rebuild` after the graph stream was lost while the gateway was down and a graph
/// changed behind its back. The shared invalidator's durable consumer went with the stream; the
/// restarted gateway creates it again, starting at new messages, so it never sees the change: the
/// cache forgets what Redis held instead of serving the graph as it was, then goes on
/// invalidating on new events, each handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_stream_rebuild_the_cache_serves_nothing_it_missed_and_goes_on() {
    use cim_proto::graph as pb;

    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[]).await;
    let js = async_nats::jetstream::new(async_nats::connect(harness::nats_url()).await.unwrap());
    let prefix: SubjectPrefix = graph.prefix.parse().unwrap();
    let stream_name = prefix.stream_name(Domain::Graph);
    let tenant = TenantId::new();
    let auth = bearer(&token(tenant, &["reader", "writer"], now_secs() + 600));
    let r = call(gw.addr, "POST", "/api/v1/graphs", &auth, Some(r#"{"name":"rebuilt"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let graph_id = r.json()["graph_id"].as_str().unwrap().to_owned();
    let nodes = format!("/api/v1/graphs/{graph_id}/nodes");
    assert!(cached(gw.addr, &nodes, &auth).await, "the node list was never a cache hit");
    let ids = |at: std::net::SocketAddr| {
        let (nodes, auth) = (nodes.clone(), auth.clone());
        async move {
            let r = call(at, "GET", &nodes, &auth, None).await;
            let mut ids: Vec<String> = r.json()["items"]
                .as_array()
                .map(|items| items.iter().filter_map(|n| n["id"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            ids.sort();
            ids
        }
    };
    assert!(ids(gw.addr).await.is_empty());
    gw.stop().await;

    // JetStream loses the stream (and the invalidator's consumer with it); a node is added
    // directly over gRPC; the stream is rebuilt, as `cim streams rebuild --domain graph` does.
    js.delete_stream(&stream_name).await.unwrap();
    let mut direct = graph.client().await;
    let add = |id: &str| pb::AddNodeRequest {
        graph_id: graph_id.clone(),
        node: Some(harness::node(id, "person")),
        options: None,
    };
    direct.add_node(harness::req(tenant, add("missed"))).await.unwrap();
    let rebuilt = cim_eventstore::archive::republish::republish(
        &graph.pool,
        &graph.schema,
        Domain::Graph,
        &js,
        &prefix,
        1,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(rebuilt.published + rebuilt.present, 2, "{rebuilt:?}");

    // The gateway again, with the same Redis: nothing cached before is served.
    let gw = gateway(&graph, &[]).await;
    let bound = eventually(|| async {
        let Ok(stream) = js.get_stream(&stream_name).await else { return false };
        stream.consumer_info(cim_gateway::cache::DURABLE).await.is_ok()
    })
    .await;
    assert!(bound, "the invalidator never bound the rebuilt stream");
    assert!(cached(gw.addr, &nodes, &auth).await, "the cache never served again after the rebuild");
    assert_eq!(ids(gw.addr).await, ["missed"], "the graph as it was before the loss was served");

    // And goes on: a later direct change arrives as an event and invalidates.
    direct.add_node(harness::req(tenant, add("later"))).await.unwrap();
    assert!(eventually(|| async { ids(gw.addr).await == ["later", "missed"] }).await, "the later change never showed");
    // Caught up with the rebuilt stream, each message handled once.
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let info = stream.consumer_info(cim_gateway::cache::DURABLE).await.unwrap();
    assert_eq!((info.delivered.stream_sequence, info.num_ack_pending, info.num_redelivered), (last, 0, 0), "{info:?}");

    gw.stop().await;
    graph.stop().await;
}

/// Redis keeps nothing on disk: restarted, it has lost every generation, and the other gateways'
/// writes count them afresh. An instance's memory still holds bodies kept under the generations
/// from before; when a count started again from the same number, the first of them served a
/// response older than a write (the fault harness's Redis restart, 1 stale read in 143). Now a
/// generation starts from a random number, so a count begun afresh never meets an old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_kept_before_redis_lost_its_data_are_not_served_after_it() {
    // A database of its own: the test empties it, as a restart does.
    let base = std::env::var("CIM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = format!("{}/13", base.trim_end_matches('/'));
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[("CIM_REDIS_URL", &redis)]).await;
    let writer = bearer(&token(TenantId::new(), &["writer"], now_secs() + 600));
    let r = call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"before"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let graph_id = r.json()["graph_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/graphs/{graph_id}");
    assert!(cached(gw.addr, &path, &writer).await, "the gateway never cached the graph");

    let key = format!("cim:gw:cache:{graph_id}");
    let mut conn =
        deadpool_redis::redis::Client::open(redis).unwrap().get_multiplexed_async_connection().await.unwrap();
    let kept_under: i64 = deadpool_redis::redis::cmd("HGET").arg(&key).arg("gen").query_async(&mut conn).await.unwrap();
    let () = deadpool_redis::redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    // Writes after the restart counted from zero, with no event reaching this gateway: as many
    // as it takes to reach the old generation when that was a small count (at most 5). A
    // gateway's own bump starts a missing generation at random, so it never does.
    for _ in 0..kept_under.clamp(1, 5) {
        let _: i64 =
            deadpool_redis::redis::cmd("HINCRBY").arg(&key).arg("gen").arg(1).query_async(&mut conn).await.unwrap();
    }
    let now: i64 = deadpool_redis::redis::cmd("HGET").arg(&key).arg("gen").query_async(&mut conn).await.unwrap();
    let r = call(gw.addr, "GET", &path, &writer, None).await;
    assert_eq!(
        r.header("x-cache"),
        Some("miss"),
        "a body kept under generation {kept_under} before Redis lost its data was served at {now}"
    );
    gw.stop().await;
    graph.stop().await;
}

/// Two gateways share Redis. A write through one bumps the shared generation before its answer
/// leaves; the other hears of the write only when the event arrives. Its own memory must not
/// answer in between: a client that wrote through one replica and reads through the other reads
/// what it wrote (the fault harness found 3–10 % of such reads stale when the first level
/// trusted its own subscription alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_one_gateway_is_read_through_another_at_once() {
    let graph = harness::Service::start().await;
    let (one, other) = (gateway(&graph, &[]).await, gateway(&graph, &[]).await);
    let writer = bearer(&token(TenantId::new(), &["writer"], now_secs() + 600));
    let r = call(one.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"shared"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let graph_id = r.json()["graph_id"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/graphs/{graph_id}");
    assert!(cached(other.addr, &base, &writer).await, "the other gateway never cached the graph");

    // Made certain: the shared generation moves as a write through another gateway moves it,
    // with no event at all. The other gateway's memory still holds the body; it must not serve it.
    let redis = std::env::var("CIM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut conn =
        deadpool_redis::redis::Client::open(redis).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = deadpool_redis::redis::cmd("HINCRBY")
        .arg(format!("cim:gw:cache:{graph_id}"))
        .arg("gen")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = call(other.addr, "GET", &base, &writer, None).await;
    assert_eq!(r.header("x-cache"), Some("miss"), "served from memory after the shared generation moved");

    // And as it happens: each rename through one gateway is read back through the other at once.
    for round in 0..20 {
        let name = format!("shared-{round}");
        let body = format!(r#"{{"name":"{name}"}}"#);
        assert_eq!(call(one.addr, "PATCH", &base, &writer, Some(&body)).await.status, 200);
        let r = call(other.addr, "GET", &base, &writer, None).await;
        assert_eq!(r.json()["name"], name.as_str(), "round {round}: {r:?}");
        // Cached again on the other side before the next write.
        call(other.addr, "GET", &base, &writer, None).await;
    }
    one.stop().await;
    other.stop().await;
    graph.stop().await;
}

/// A TCP relay to Redis that can be cut: every connection through it dropped and new ones
/// closed at once, while Redis itself keeps what it holds.
struct Cuttable {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relays: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut_in, relays_in) = (cut.clone(), relays.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut_in.load(std::sync::atomic::Ordering::Acquire) {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                relays_in.lock().unwrap().push(relay.abort_handle());
            }
        });
        Self { addr, cut, relays }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Redis away for a moment keeps what it held (a dropped connection; a restart from its
/// append-only file, as compose and k8s run it). A write acknowledged meanwhile could not bump
/// its generation, so when Redis was back it still held the body kept before the write, and the
/// writer was served that (the fault harness: 1 stale read of 172 with Redis and Postgres
/// restarted together). Now nothing cached is served after Redis was unreachable until every
/// entry has been bumped once since; then the cache works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_acknowledged_while_redis_was_away_is_not_read_stale_after_it_is_back() {
    let base = std::env::var("CIM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let hostport =
        base.trim_start_matches("redis://").rsplit('@').next().unwrap().split('/').next().unwrap().to_owned();
    let relay = Cuttable::start(hostport).await;
    // A database of its own: the sweep bumps every entry it finds.
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[("CIM_REDIS_URL", &format!("redis://{}/12", relay.addr))]).await;
    let writer = bearer(&token(TenantId::new(), &["writer"], now_secs() + 600));
    let r = call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"before"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let path = format!("/api/v1/graphs/{}", r.json()["graph_id"].as_str().unwrap());
    assert!(cached(gw.addr, &path, &writer).await, "the gateway never cached the graph");

    relay.cut();
    // Long enough for the rate limiter's flush (every 100 ms) to find Redis away, as it would.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = call(gw.addr, "PATCH", &path, &writer, Some(r#"{"name":"while-away"}"#)).await;
    assert_eq!(r.status, 200, "a write does not need Redis: {r:?}");
    relay.restore();

    let r = call(gw.addr, "GET", &path, &writer, None).await;
    assert_eq!(r.json()["name"], "while-away", "the body kept before the write was served: {r:?}");
    assert_ne!(r.header("x-cache"), Some("hit"), "{r:?}");
    // Swept, the cache serves again, what was written.
    assert!(cached(gw.addr, &path, &writer).await, "the cache never served again after Redis came back");
    assert_eq!(call(gw.addr, "GET", &path, &writer, None).await.json()["name"], "while-away");
    gw.stop().await;
    graph.stop().await;
}
