//! Workflow service benchmark against Restate, on the same machine in the same run (issue 18).
//! Prints one JSON document:
//! - closed loop at c=16 and c=64, workflows of 1, 3 and 9 no-op steps: workflows completed per
//!   second and start → completed p50/p99, CIM and Restate point by point (each CIM point runs
//!   just before the Restate point it is compared with), with the ratios CIM/Restate.
//!   CIM: a definition of N `automated` steps chained by `depends_on`, each client calling
//!   StartWorkflow and waiting for the instance's `workflow_completed` event (NATS). Restate: a
//!   workflow (Rust SDK, `bench/restate-peer`) of N `ctx.run` no-ops, each client calling
//!   `Chain/<new key>/run` on the ingress and waiting for its answer.
//! - 1,000 instances sleeping on a timer step (2–5 s): how late each timer fired, with the
//!   engine's default poll and with `CIM_WORKFLOW_POLL_MS=20`.
//! - both sides' durability settings as found in this run, and whether the goals were met.
//!
//! `cargo bench -p cim-workflow --bench workflow` (CIM_BENCH_SECONDS per point, default 5;
//! CIM_BENCH_TIMERS instances in the timer run, default 1000; CIM_BENCH_DB_CONNECTIONS the
//! service's pool, default 40, opened before the run: the shared Postgres allows 100 in all; CIM_BENCH_RESTATE=0 skips the peer;
//! CIM_BENCH_RESTATE_SERVER a restate-server binary instead of the npm one;
//! CIM_BENCH_WORKFLOW_ENV="K=V ..." overrides the service's settings, for experiments).

use std::io::Write;

use cim_testkit::bench::Throughput;
use serde_json::{Value, json};

#[path = "workflow/cim.rs"]
mod cim;
#[path = "workflow/restate.rs"]
mod restate;

use cim::round3;

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEPS: [usize; 3] = [1, 3, 9];
const CLIENTS: [usize; 2] = [16, 64];
/// The bound on a timer's lateness.
const TIMER_P99_MS: f64 = 100.0;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// One (N, c) point: both sides, their ratios and whether CIM met the goals there.
fn point(steps: usize, c: usize, ours: &(Throughput, Value), theirs: Option<&(Throughput, u64)>) -> Value {
    let (ours, parts) = ours;
    let mut point = json!({"steps": steps, "clients": c, "cim": ours.json(), "cim_parts": parts});
    if let Some((theirs, failures)) = theirs {
        let throughput = round3(ours.per_s / theirs.per_s);
        let p99 = round3(ours.quantile_ms(0.99) / theirs.quantile_ms(0.99));
        let mut restate = theirs.json();
        restate["failures"] = json!(failures);
        point["restate"] = restate;
        point["throughput_cim_over_restate"] = json!(throughput);
        point["p99_cim_over_restate"] = json!(p99);
        point["goals"] = json!({"throughput_ge_1x": throughput >= 1.0, "p99_le_restate": p99 <= 1.0});
    }
    point
}

#[tokio::main]
async fn main() {
    let secs: f64 = env("CIM_BENCH_SECONDS", "5").parse().expect("CIM_BENCH_SECONDS");
    let timers: usize = env("CIM_BENCH_TIMERS", "1000").parse().expect("CIM_BENCH_TIMERS");
    // reqwest (Restate's APIs, the service's /metrics) is built without a TLS provider here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ours = cim::Cim::start(None).await;
    let peer = match env("CIM_BENCH_RESTATE", "1").as_str() {
        "0" => Err("skipped (CIM_BENCH_RESTATE=0)".to_owned()),
        _ => restate::Restate::start().await,
    };

    let mut points = Vec::new();
    for steps in STEPS {
        let definition = ours.chain(steps).await;
        for c in CLIENTS {
            let cim = ours.closed_loop(&definition, c, secs).await;
            let theirs = match &peer {
                Ok(peer) => Some(peer.closed_loop(steps, c, secs).await),
                Err(_) => None,
            };
            points.push(point(steps, c, &cim, theirs.as_ref()));
        }
    }
    let durability = json!({
        "cim_postgres": ours.durability().await,
        "restate": match &peer { Ok(p) => p.durability().await, Err(_) => Value::Null },
    });
    let engine = json!({
        "poll_ms": ours.engine.poll.as_millis() as u64,
        "lease_ms": ours.engine.lease.as_millis() as u64,
        "concurrency": ours.engine.concurrency,
        "overrides": env("CIM_BENCH_WORKFLOW_ENV", ""),
        "db_pool_opened_before_run": {"opened": ours.pool.0, "max": ours.pool.1},
    });
    let timers_default = ours.timers(timers).await;
    ours.stop().await;
    let fast = cim::Cim::start(Some(20)).await;
    let timers_fast = fast.timers(timers).await;
    fast.stop().await;

    let peer_json = match &peer {
        Ok(p) => json!({"name": "restate", "available": true, "version": p.version}),
        Err(reason) => json!({"name": "restate", "available": false, "reason": reason}),
    };
    if let Ok(peer) = peer {
        peer.stop().await;
    }
    let compared: Vec<&Value> = points.iter().filter(|p| p.get("goals").is_some()).collect();
    let all = |goal: &str| match compared.is_empty() {
        true => Value::Null,
        false => json!(compared.iter().all(|p| p["goals"][goal] == json!(true))),
    };
    let timer_p99 = timers_default["recorded_lateness"]["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let report = json!({
        "bench": "workflow",
        "seconds_per_point": secs,
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "shared": true},
        "peer": peer_json,
        "durability": durability,
        "cim_engine": engine,
        "closed_loop": points,
        "timers": {"default_poll": timers_default, "poll_20ms": timers_fast},
        "goals": {
            "throughput_ge_restate_at_every_point": all("throughput_ge_1x"),
            "p99_le_restate_at_every_point": all("p99_le_restate"),
            "timer_lateness_p99_ms": {"target": TIMER_P99_MS, "measured": timer_p99, "met": timer_p99 <= TIMER_P99_MS},
        },
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
