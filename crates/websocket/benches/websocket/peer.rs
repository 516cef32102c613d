//! `CIM_BENCH_PEER=nats`: the same load through CIM's websocket server and through
//! nats-server's own websocket listener, in one run, point by point.
//!
//! Both sides share one private `nats-server` (JetStream in a temporary directory) and one
//! publisher: events sealed as the relay seals them, published to the domain stream at a fixed
//! rate, each stored by JetStream before its acknowledgement. CIM's clients subscribe through
//! `cim-websocket` (which follows the stream with its ordered consumer); the peer's clients speak
//! the NATS protocol over nats-server's websocket listener, subscribed to the same aggregates'
//! subjects. Each (point, side) has a subject prefix and stream of its own; the sides alternate
//! which goes first from point to point.
//!
//! Server CPU counts, from `/proc/<pid>/stat` (utime + stime) over publishing and the drain:
//! CIM: `cim-websocket` + `nats-server` (it stores the events and feeds CIM's consumer);
//! NATS: `nats-server` (it stores the events and feeds the clients). Each process is also shown.
//! `CIM_BENCH_CAPACITY` (events/s at 100 %, default 1000: 1,000 clients × 10 % selectivity make
//! 100,000 frames/s, where this 2-core machine saturates), `CIM_BENCH_POINTS` (fractions, default
//! `0.25,0.5,1`), `CIM_BENCH_SECONDS` (per side per point, default 10), `CIM_BENCH_CLIENTS`
//! (1000), `CIM_BENCH_AGGREGATES` (10: each client follows one, so selectivity 1/10),
//! `CIM_BENCH_PAD_BYTES` (256: a property of that size in each event's payload),
//! `CIM_BENCH_BASELINE_BIN` (another `cim-websocket` binary, run as a third side: before/after).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cim_core::{
    Actor, AggregateId, CausationId, CorrelationId, Domain, EventContext, EventEnvelope, EventHash, EventSubject,
    NewEvent, SubjectPrefix, TenantId, headers,
};
use tokio_util::sync::CancellationToken;

use super::nats_ws::{self, PrivateNats};
use super::{Seen, cpu_seconds, env, percentiles_ms, unique, vm_kib};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Side {
    Cim,
    /// `cim-websocket` from `CIM_BENCH_BASELINE_BIN`: an earlier build, for before/after in one run.
    Baseline,
    Nats,
}

impl Side {
    fn key(self) -> &'static str {
        match self {
            Side::Cim => "cim",
            Side::Baseline => "cim_baseline",
            Side::Nats => "nats",
        }
    }
}

/// An acknowledged event: its aggregate's index, its id, when it was sent and acknowledged.
type Published = (usize, u128, Instant, Instant);

struct Load {
    clients: usize,
    rate: u64,
    seconds: f64,
    aggregates: usize,
    pad: usize,
}

/// Busy and total CPU ticks of the whole machine (`/proc/stat`), for the noise other processes make.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// One side of one point: connect the clients, publish for `load.seconds`, drain, report.
async fn run_side(side: Side, load: &Load, nats: &PrivateNats, order: usize) -> serde_json::Value {
    let prefix_text = unique("pp");
    let prefix: SubjectPrefix = prefix_text.parse().expect("prefix");
    let client = async_nats::connect(nats.url.as_str()).await.expect("private nats");
    let js = async_nats::jetstream::new(client.clone());
    let stream = cim_streams::streams::ensure_domain_stream(&js, &prefix, Domain::Graph, 1).await.expect("stream");
    let tenant = TenantId::new();
    let aggregates: Vec<AggregateId> = (0..load.aggregates).map(|_| AggregateId::new()).collect();
    let subject = |a: &AggregateId| {
        EventSubject {
            domain: Domain::Graph,
            aggregate_type: "graph".parse().expect("aggregate type"),
            aggregate_id: *a,
            event_type: "node_added".parse().expect("event type"),
        }
        .to_subject(&prefix)
    };

    let mut cim = None;
    let (pids, ws_addr): (Vec<(&str, u32)>, String) = match side {
        Side::Cim | Side::Baseline => {
            let binary = match side {
                Side::Baseline => std::env::var("CIM_BENCH_BASELINE_BIN").expect("CIM_BENCH_BASELINE_BIN"),
                _ => env!("CARGO_BIN_EXE_cim-websocket").to_owned(),
            };
            let websocket = super::start_websocket(&binary, &nats.url, &prefix_text).await;
            let (child, pid, addr) = (websocket.child, websocket.pid, websocket.ws_addr);
            cim = Some(child);
            (vec![("cim-websocket", pid), ("nats-server", nats.pid)], addr)
        }
        Side::Nats => (vec![("nats-server", nats.pid)], nats.ws_addr.clone()),
    };
    let token = super::reader_token(tenant);

    // Clients connect in waves of 100.
    let (ready, stop) = (Arc::new(AtomicU64::new(0)), CancellationToken::new());
    let mut counters = Vec::with_capacity(load.clients);
    let mut tasks = Vec::with_capacity(load.clients);
    for i in 0..load.clients {
        let got = Arc::new(AtomicU64::new(0));
        let a = &aggregates[i % load.aggregates];
        counters.push((i % load.aggregates, got.clone()));
        let (addr, r, stop) = (ws_addr.clone(), ready.clone(), stop.clone());
        tasks.push(match side {
            Side::Cim | Side::Baseline => tokio::spawn(super::client(addr, token.clone(), a.to_string(), r, got, stop)),
            Side::Nats => tokio::spawn(nats_ws::client(addr, subject(a), r, got, stop)),
        });
        if i % 100 == 99 {
            while ready.load(Ordering::Relaxed) < (i + 1) as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < load.clients as u64 {
        assert!(Instant::now() < deadline, "{side:?}: clients did not all subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_connected: Vec<Option<u64>> = pids.iter().map(|(_, p)| vm_kib(*p, "VmRSS:")).collect();
    let rss_max: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
    let sampler = {
        let (rss_max, stop, pids) = (rss_max.clone(), stop.clone(), pids.iter().map(|p| p.1).collect::<Vec<_>>());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for (i, pid) in pids.iter().enumerate() {
                    rss_max[i].fetch_max(vm_kib(*pid, "VmRSS:").unwrap_or(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let load_before = load_average();
    let machine_before = machine_ticks();
    let cpu_before: Vec<f64> = pids.iter().map(|(_, p)| cpu_seconds(*p).unwrap_or(0.0)).collect();
    let bench_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    // (aggregate, event id, sent, acknowledged)
    let published: Arc<std::sync::Mutex<Vec<Published>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut chains: Vec<(EventContext, u64, EventHash)> = aggregates
        .iter()
        .map(|a| {
            let ctx = EventContext {
                domain: Domain::Graph,
                aggregate_type: "graph".parse().expect("aggregate type"),
                aggregate_id: *a,
                tenant_id: tenant,
                actor: Actor::service("bench"),
                correlation_id: CorrelationId::new(),
                causation_id: CausationId::new(),
            };
            (ctx, 0, EventHash::GENESIS)
        })
        .collect();
    let subjects: Vec<String> = aggregates.iter().map(subject).collect();
    let pad = "x".repeat(load.pad);
    let mut envelope_bytes = 0usize;
    let total = (load.seconds * load.rate as f64) as u64;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishers = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticker.tick().await;
        let permit = inflight.clone().acquire_owned().await.expect("semaphore");
        let g = (n as usize) % load.aggregates;
        let (ctx, sequence, prev) = &mut chains[g];
        let new = NewEvent {
            event_type: "node_added".parse().expect("event type"),
            schema_version: 1,
            payload: serde_json::json!({"node_id": format!("n{n}"), "node_type": "person", "properties": {"pad": pad}}),
        };
        *sequence += 1;
        let e = EventEnvelope::seal(ctx, new, *sequence, *prev, chrono::Utc::now());
        *prev = e.hash;
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, e.event_id.to_string().as_str());
        h.insert(headers::TENANT_ID, e.tenant_id.to_string().as_str());
        h.insert(headers::EVENT_TYPE, e.event_type.as_str());
        h.insert(headers::AGGREGATE_ID, e.aggregate_id.to_string().as_str());
        let body = serde_json::to_vec(&e).expect("envelope");
        envelope_bytes = body.len();
        let message = async_nats::jetstream::message::PublishMessage::build().payload(body.into()).headers(h);
        let id = e.event_id.as_uuid().as_u128();
        let (published, failed) = (published.clone(), failed.clone());
        let sent = Instant::now();
        match js.send_publish(subjects[g].clone(), message).await {
            Ok(ack) => publishers.push(tokio::spawn(async move {
                match ack.await {
                    Ok(_) => published.lock().expect("published").push((g, id, sent, Instant::now())),
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
    }
    for p in publishers {
        let _ = p.await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let published = std::mem::take(&mut *published.lock().expect("published"));
    let mut per_aggregate = vec![0u64; load.aggregates];
    for (g, ..) in &published {
        per_aggregate[*g] += 1;
    }
    let expected: u64 = counters.iter().map(|(g, _)| per_aggregate[*g]).sum();
    let received = || counters.iter().map(|(_, c)| c.load(Ordering::Relaxed)).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let window = started.elapsed().as_secs_f64();
    let cpu_after: Vec<f64> = pids.iter().map(|(_, p)| cpu_seconds(*p).unwrap_or(0.0)).collect();
    let bench_cpu = cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_before;
    let machine_after = machine_ticks();
    let load_after = load_average();
    stop.cancel();
    let _ = sampler.await;

    let by_id: HashMap<u128, (usize, Instant, Instant)> =
        published.iter().map(|(g, id, sent, acked)| (*id, (*g, *sent, *acked))).collect();
    let mut by_aggregate: Vec<HashSet<u128>> = vec![HashSet::new(); load.aggregates];
    for (g, id, ..) in &published {
        by_aggregate[*g].insert(*id);
    }
    let (mut from_publish, mut from_ack) = (Vec::new(), Vec::new());
    let (mut lost, mut duplicates, mut out_of_order, mut before_ack, mut closed, mut bytes) = (0, 0, 0, 0, 0, 0);
    let mut close_reasons: HashMap<String, u64> = HashMap::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let seen: Seen = task.await.expect("client task");
        out_of_order += seen.out_of_order;
        bytes += seen.bytes;
        if let Some(reason) = seen.closed {
            closed += 1;
            *close_reasons.entry(reason.chars().take(120).collect()).or_default() += 1;
        }
        let mut distinct = HashSet::with_capacity(seen.frames.len());
        for (id, at, _) in &seen.frames {
            if !distinct.insert(*id) {
                duplicates += 1;
                continue;
            }
            if let Some((_, sent, acked)) = by_id.get(id) {
                before_ack += u64::from(at < acked);
                from_publish.push(at.saturating_duration_since(*sent).as_secs_f64());
                from_ack.push(at.saturating_duration_since(*acked).as_secs_f64());
            }
        }
        lost += by_aggregate[i % load.aggregates].difference(&distinct).count() as u64;
    }
    let frames = received();
    let cpu: Vec<f64> = cpu_before.iter().zip(&cpu_after).map(|(b, a)| a - b).collect();
    let server_cpu: f64 = cpu.iter().sum();
    let own = server_cpu + bench_cpu;
    let busy = (machine_after.0 - machine_before.0) as f64 / 100.0;
    let processes: serde_json::Map<String, serde_json::Value> =
        pids.iter().zip(&cpu).map(|((name, _), s)| ((*name).to_owned(), round(*s, 2).into())).collect();
    let mib = |kib: u64| round(kib as f64 / 1024.0, 1);
    let rss_peak: serde_json::Map<String, serde_json::Value> = pids
        .iter()
        .zip(rss_max.iter())
        .map(|((name, _), k)| ((*name).to_owned(), mib(k.load(Ordering::Relaxed)).into()))
        .collect();
    let rss_total = rss_max.iter().map(|k| k.load(Ordering::Relaxed)).sum::<u64>();
    let report = serde_json::json!({
        "server": match side {
            Side::Cim => "cim-websocket (its ordered consumer on the stream) → clients",
            Side::Baseline => "cim-websocket of CIM_BENCH_BASELINE_BIN (an earlier build), same path",
            Side::Nats => "nats-server websocket listener → clients (NATS protocol, core subscriptions)",
        },
        "ran": order,
        "events_published": published.len(),
        "publish_failures": failed.load(Ordering::Relaxed),
        "publish_rate_per_s": round(published.len() as f64 / publish_secs, 0),
        "envelope_bytes": envelope_bytes,
        "frames_expected": expected,
        "frames_received": frames,
        "frames_per_s": round(frames as f64 / window, 0),
        "mean_frame_payload_bytes": bytes.checked_div(frames).unwrap_or(0),
        "lost_frames": lost,
        "duplicate_frames": duplicates,
        "out_of_order_frames": out_of_order,
        "clients_closed_early": closed,
        "close_reasons": close_reasons,
        "publish_to_client": percentiles_ms(from_publish),
        "ack_to_client": percentiles_ms(from_ack),
        "frames_read_before_the_publisher_had_its_ack": before_ack,
        "server_cpu": {
            "counted": processes,
            "seconds": round(server_cpu, 2),
            "cores": round(server_cpu / window, 2),
            "seconds_per_million_frames": if frames > 0 { round(server_cpu / frames as f64 * 1e6, 2) } else { f64::NAN },
            "window_s": round(window, 2),
        },
        "bench_process_cpu_seconds_publisher_and_clients": round(bench_cpu, 2),
        "server_rss_mib": {
            "connected_subscribed": pids.iter().zip(&rss_connected).map(|((n, _), k)| ((*n).to_owned(), k.map(mib).into())).collect::<serde_json::Map<_, _>>(),
            "peak_sampled": rss_peak,
            "peak_sampled_total": mib(rss_total),
        },
        "noise": {
            "load_average_before": load_before,
            "load_average_after": load_after,
            "other_processes_cores": round((busy - own).max(0.0) / window, 2),
        },
    });
    drop(client);
    if let Some(mut child) = cim {
        let _ =
            tokio::process::Command::new("kill").arg("-TERM").arg(child.id().unwrap_or(0).to_string()).status().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    let _ = js.delete_stream(&stream).await;
    report
}

fn ratio(cim: &serde_json::Value, nats: &serde_json::Value, path: &[&str]) -> serde_json::Value {
    let at = |v: &serde_json::Value| path.iter().try_fold(v, |v, k| v.get(*k)).and_then(serde_json::Value::as_f64);
    match (at(cim), at(nats)) {
        (Some(c), Some(n)) if n > 0.0 => round(c / n, 2).into(),
        _ => serde_json::Value::Null,
    }
}

/// The ratios of `a` over `b` the issue asks for.
fn ratios(a: &serde_json::Value, b: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "publish_to_client_p50": ratio(a, b, &["publish_to_client", "p50_ms"]),
        "publish_to_client_p99": ratio(a, b, &["publish_to_client", "p99_ms"]),
        "publish_to_client_p999": ratio(a, b, &["publish_to_client", "p999_ms"]),
        "server_cpu_per_frame": ratio(a, b, &["server_cpu", "seconds_per_million_frames"]),
        "server_rss_peak": ratio(a, b, &["server_rss_mib", "peak_sampled_total"]),
    })
}

pub async fn run() {
    let capacity: f64 = env("CIM_BENCH_CAPACITY", "1000").parse().expect("CIM_BENCH_CAPACITY");
    let points: Vec<f64> = env("CIM_BENCH_POINTS", "0.25,0.5,1")
        .split(',')
        .map(|p| p.trim().parse().expect("CIM_BENCH_POINTS: fractions"))
        .collect();
    let base = Load {
        clients: env("CIM_BENCH_CLIENTS", "1000").parse().expect("CIM_BENCH_CLIENTS"),
        rate: 0,
        seconds: env("CIM_BENCH_SECONDS", "10").parse().expect("CIM_BENCH_SECONDS"),
        aggregates: env("CIM_BENCH_AGGREGATES", "10").parse().expect("CIM_BENCH_AGGREGATES"),
        pad: env("CIM_BENCH_PAD_BYTES", "256").parse().expect("CIM_BENCH_PAD_BYTES"),
    };
    let baseline = std::env::var("CIM_BENCH_BASELINE_BIN").is_ok();
    let nats = PrivateNats::start().await;
    let mut results = Vec::new();
    for (i, fraction) in points.iter().enumerate() {
        let load = Load { rate: (capacity * fraction).round().max(1.0) as u64, ..base };
        let mut sides = vec![Side::Cim, Side::Nats];
        if baseline {
            sides.insert(1, Side::Baseline);
        }
        if i % 2 == 1 {
            sides.reverse();
        }
        let mut point = serde_json::Map::new();
        point.insert("point".into(), format!("{}% of capacity", round(fraction * 100.0, 0)).into());
        point.insert("events_per_s".into(), load.rate.into());
        point.insert("frames_per_s_offered".into(), (load.rate as usize * load.clients / load.aggregates).into());
        let mut done = HashMap::new();
        for (order, side) in sides.iter().enumerate() {
            done.insert(*side, run_side(*side, &load, &nats, order + 1).await);
        }
        let mut pairs = vec![(Side::Cim, Side::Nats)];
        if baseline {
            pairs.extend([(Side::Baseline, Side::Nats), (Side::Cim, Side::Baseline)]);
        }
        for (a, b) in pairs {
            point.insert(format!("{}_over_{}", a.key(), b.key()), ratios(&done[&a], &done[&b]));
        }
        for side in sides {
            point.insert(side.key().into(), done.remove(&side).unwrap_or_default());
        }
        results.push(serde_json::Value::Object(point));
    }
    nats.stop().await;
    let report = serde_json::json!({
        "benchmark": "websocket fan-out against nats-server's own websocket listener",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "clients": base.clients,
        "filter": format!("each client: one of {} aggregates' node_added events (selectivity 1/{})", base.aggregates, base.aggregates),
        "seconds_per_side": base.seconds,
        "capacity_events_per_s": capacity,
        "publisher": "events sealed as the relay seals them, published to JetStream (file store) on a private nats-server; 'ack' = JetStream's acknowledgement",
        "cpu_counted": "CIM: cim-websocket + nats-server; NATS: nats-server (utime+stime from /proc over publishing and drain)",
        "points": results,
    });
    let _ = writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
