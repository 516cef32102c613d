//! The gateway in front of two graph services, one of them stopped: every call still succeeds,
//! the stopped replica ejected from the rotation at its first refused connection (commands too:
//! a refused connection never reached it), and taken back once it answers again.

#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;

use std::time::{Duration, Instant};

use cim_auth::now_secs;
use cim_core::TenantId;
use http::call;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_of_two_graph_replicas_stopped_every_command_and_query_succeeds() {
    let graph = harness::Service::start().await;
    let replica = graph.replica().await;
    let urls = format!("http://{},http://{}", graph.grpc, replica.grpc);
    let gw = gateway(&graph, &[("CIM_GATEWAY_GRAPH_URLS", &urls)]).await;
    let a = gw.addr;
    let writer = bearer(&token(TenantId::new(), &["writer"], now_secs() + 600));
    let r = call(a, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"replicated"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let base = format!("/api/v1/graphs/{}", r.json()["graph_id"].as_str().unwrap());
    let add = |n: usize| format!(r#"{{"id":"n{n}","type":"t"}}"#);
    // Both replicas in use: connections to each are open when one goes.
    for n in 0..6 {
        let r = call(a, "POST", &format!("{base}/nodes"), &writer, Some(&add(n))).await;
        assert_eq!(r.status, 201, "{r:?}");
    }

    replica.stop_replica().await;
    let started = Instant::now();
    let mut failed = Vec::new();
    for n in 6..106 {
        let r = call(a, "POST", &format!("{base}/nodes"), &writer, Some(&add(n))).await;
        if r.status != 201 {
            failed.push((n, r.status, r.body));
        }
        let r = call(a, "GET", &format!("{base}/nodes/n{n}"), &writer, None).await;
        if r.status != 200 {
            failed.push((n, r.status, r.body));
        }
    }
    let took = started.elapsed();
    assert!(failed.is_empty(), "{} of 200 calls failed with one replica down: {failed:?}", failed.len());
    // Nothing waited for the dead replica: 200 calls on the one left take well under a second
    // each (the harness saw 4–9 s of 503s before ejection).
    assert!(took < Duration::from_secs(20), "200 calls took {took:?}");
    let r = call(a, "GET", &base, &writer, None).await;
    assert_eq!(r.json()["node_count"], 106, "{r:?}");

    gw.stop().await;
    graph.stop().await;
}

/// Both replicas down: the call is answered 503 (`unavailable`) at once, not hung or INTERNAL;
/// and one coming back is used again (its ejection lapses and the next call re-probes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_replica_down_calls_are_unavailable_and_a_replica_back_is_taken_again() {
    let graph = harness::Service::start().await;
    let (schema, prefix) = (graph.schema.clone(), graph.prefix.clone());
    // A second address nothing listens on: a replica that never came up.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let urls = format!("http://{dead},http://{}", graph.grpc);
    let gw = gateway(&graph, &[("CIM_GATEWAY_GRAPH_URLS", &urls)]).await;
    let a = gw.addr;
    let writer = bearer(&token(TenantId::new(), &["writer"], now_secs() + 600));
    for _ in 0..4 {
        let r = call(a, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"g"}"#)).await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let grpc = graph.grpc;
    graph.stop_replica().await;
    let started = Instant::now();
    let r = call(a, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"g"}"#)).await;
    problem(&r, 503, "unavailable");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());

    // Back on its address: taken again within the longest ejection.
    let back = harness::Service::start_with(schema, prefix, &[("CIM_GRAPH_ADDR", grpc.to_string())]).await;
    assert!(
        eventually(|| async {
            call(a, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"g"}"#)).await.status == 201
        })
        .await,
        "the replica that came back was never taken again"
    );
    gw.stop().await;
    back.stop().await;
}

/// One principal's requests spread over two gateways sharing Redis are limited together: the
/// two accept the limit and at most what they serve in the flush intervals before each learns
/// the other's count (the documented overshoot: `limits::RateLimiter`), never twice the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_two_gateways_within_the_flush_overshoot() {
    const LIMIT: usize = 30;
    // Requests alternate between the gateways every PACE: 8 fall in two flush intervals.
    const PACE: Duration = Duration::from_millis(25);
    let graph = harness::Service::start().await;
    let limit = LIMIT.to_string();
    let vars = [("CIM_GATEWAY_RATE_LIMIT_PER_MINUTE", limit.as_str())];
    let gws = [gateway(&graph, &vars).await, gateway(&graph, &vars).await];
    let overshoot = (2 * cim_gateway::limits::FLUSH_EVERY.as_millis() / PACE.as_millis()) as usize;
    let me = bearer(&token(TenantId::new(), &["reader"], now_secs() + 600));
    // The windows are fixed minutes: the run (3 × LIMIT × PACE, about 2 s) must fit in one.
    while now_secs() % 60 > 50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let minute = now_secs() / 60;
    let mut accepted = [0usize; 2];
    let mut refused = 0;
    for i in 0..3 * LIMIT {
        let r = call(gws[i % 2].addr, "GET", "/api/v1/auth/me", &me, None).await;
        match r.status {
            200 => accepted[i % 2] += 1,
            429 => refused += 1,
            _ => panic!("{r:?}"),
        }
        tokio::time::sleep(PACE).await;
    }
    assert_eq!(now_secs() / 60, minute, "the run crossed a minute boundary");
    let total = accepted[0] + accepted[1];
    assert!(
        (LIMIT..=LIMIT + overshoot).contains(&total),
        "accepted {total} ({accepted:?}), refused {refused}: want {LIMIT} to {}",
        LIMIT + overshoot
    );
    assert!(accepted.iter().all(|a| *a > 0), "{accepted:?}");
    for gw in gws {
        gw.stop().await;
    }
    graph.stop().await;
}
