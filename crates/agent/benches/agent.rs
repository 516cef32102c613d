//! Agent service benchmark over gRPC: the service, its submitters and 32 workers in this process
//! (real Postgres and NATS; each worker its own HTTP/2 connection and `ConnectAgent` stream,
//! completing every task as soon as it arrives). Prints one JSON document:
//! - the raw Postgres transaction rate: single-row INSERT + COMMIT into a copy of `events` at
//!   concurrency 64, in the same run; and one at a time (c=1), whose p99 is the floor of every
//!   latency here (a commit on this machine at this moment);
//! - for each layout (one tenant of 32 agents; four tenants of 8):
//!   - max throughput: 64 submitters, each submitting a task and waiting until its worker's
//!     completion is accepted (the `reply` on the worker's stream: `TaskCompleted` committed),
//!     tasks/s with p50/p99 of submit → completed, and the ratio to the raw rate (a task is
//!     three durable changes: submitted, assigned, completed);
//!   - half that rate (or CIM_BENCH_AGENT_RATE per second), paced open-loop: submit → the worker
//!     receives the assignment, p50/p99/p999 (and submit → SubmitTask answered, submit →
//!     completed, beside it);
//!   - how many assignments were written with their submission and how many by a dispatch pass
//!     (`cim_agent_tasks_assigned_total{at}`).
//!
//! `cargo bench -p cim-agent --bench agent` (CIM_BENCH_SECONDS per point, default 5;
//! CIM_BENCH_DB_CONNECTIONS, default 40, the pool the service and the raw inserts share: the
//! shared Postgres allows 100 connections in all; CIM_BENCH_AGENT_LAYOUTS, default `1,4`, the
//! layouts to run by tenant count, in that order: `1` runs one tenant only, `4,1` measures four
//! tenants on the fresher tables).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cim_agent::app::{AgentOptions, prepare_with};
use cim_agent::dispatch::DispatchOptions;
use cim_core::TenantId;
use cim_proto::agent as pb;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_proto::agent::dispatch_message::Kind as Out;
use cim_proto::agent::worker_message::Kind as In;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Client = AgentServiceClient<Channel>;

const AGENTS: usize = 32;
const SUBMITTERS: usize = 64;
/// Each agent's max_concurrent_tasks: 32 × 4 slots, more than the 64 submitters keep busy.
const AGENT_LIMIT: u32 = 4;
const CAPABILITY: &str = "bench.echo";
/// Finished tasks of another tenant in `tasks` before the run (a deployment that has run a while).
const FINISHED_TASKS: i64 = 100_000;
/// How long one task may take before the bench calls it lost.
const PATIENCE: Duration = Duration::from_secs(30);

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn req<T>(tenant: TenantId, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-cim-tenant", tenant.to_string().parse().expect("tenant"));
    r.metadata_mut().insert("x-cim-actor", "user:bench".parse().expect("actor"));
    r
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50/p99/p999 (ms) of durations in seconds.
fn latency(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let q = |q: f64| {
        if samples.is_empty() {
            f64::NAN
        } else {
            round3(samples[((samples.len() as f64 - 1.0) * q).round() as usize] * 1000.0)
        }
    };
    serde_json::json!({"samples": samples.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)})
}

/// When the worker received a task and when its completion was accepted.
#[derive(Debug, Clone, Copy)]
struct Seen {
    received: Instant,
    completed: Instant,
}

#[derive(Default)]
struct Entry {
    received: Option<Instant>,
    completed: Option<Instant>,
    waiter: Option<oneshot::Sender<Seen>>,
}

/// Where the workers say what happened to each task and the submitters wait for it (the
/// assignment may reach the worker before the submitter has the task's id).
#[derive(Default)]
struct Tracker {
    tasks: Mutex<HashMap<String, Entry>>,
    refused: AtomicU64,
    assignments: AtomicU64,
}

impl Tracker {
    fn received(&self, task: &str, at: Instant) {
        self.assignments.fetch_add(1, Ordering::Relaxed);
        self.tasks.lock().expect("tracker").entry(task.to_owned()).or_default().received = Some(at);
    }

    fn completed(&self, task: &str, at: Instant) {
        let mut tasks = self.tasks.lock().expect("tracker");
        let entry = tasks.entry(task.to_owned()).or_default();
        let received = entry.received.unwrap_or(at);
        if let Some(waiter) = entry.waiter.take() {
            tasks.remove(task);
            let _ = waiter.send(Seen { received, completed: at });
        } else {
            entry.completed = Some(at);
        }
    }

    /// Resolves once the task's completion was accepted.
    fn wait(&self, task: &str) -> oneshot::Receiver<Seen> {
        let (tx, rx) = oneshot::channel();
        let mut tasks = self.tasks.lock().expect("tracker");
        let entry = tasks.entry(task.to_owned()).or_default();
        match (entry.received, entry.completed) {
            (Some(received), Some(completed)) => {
                tasks.remove(task);
                let _ = tx.send(Seen { received, completed });
            }
            _ => entry.waiter = Some(tx),
        }
        rx
    }
}

/// One connected worker: completes each assignment at once.
struct Worker {
    reader: tokio::task::JoinHandle<()>,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn connect(addr: std::net::SocketAddr, tenant: TenantId, agent: String, tracker: Arc<Tracker>) -> Worker {
        let channel = connect(addr).await;
        let mut client = AgentServiceClient::new(channel);
        let (tx, outgoing) = mpsc::channel::<pb::WorkerMessage>(1024);
        let hello = pb::Hello { agent_id: agent, ..Default::default() };
        tx.send(pb::WorkerMessage { kind: Some(In::Hello(hello)) }).await.expect("hello");
        let mut rx =
            client.connect_agent(req(tenant, ReceiverStream::new(outgoing))).await.expect("connect").into_inner();
        let welcome = match rx.message().await.expect("welcome") {
            Some(pb::DispatchMessage { kind: Some(Out::Welcome(w)) }) => w,
            other => panic!("expected welcome, got {other:?}"),
        };
        let every = Duration::from_millis(welcome.heartbeat_interval_ms.into());
        let beat = tx.clone();
        let heartbeats = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let msg = pb::WorkerMessage { kind: Some(In::Heartbeat(pb::Heartbeat { task_ids: vec![] })) };
                if beat.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let result = cim_proto::json::json_to_struct(&serde_json::Map::from_iter([("ok".to_owned(), true.into())]));
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = rx.message().await {
                match message.kind {
                    Some(Out::Assignment(a)) => {
                        tracker.received(&a.task_id, Instant::now());
                        let done = In::Completion(pb::TaskCompletion {
                            task_id: a.task_id,
                            result: Some(pb::task_completion::Result::ResultValue(result.clone())),
                        });
                        if tx.send(pb::WorkerMessage { kind: Some(done) }).await.is_err() {
                            break;
                        }
                    }
                    Some(Out::Reply(r)) if !r.task_id.is_empty() => {
                        if r.refusal.is_some() {
                            tracker.refused.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tracker.completed(&r.task_id, Instant::now());
                        }
                    }
                    _ => {}
                }
            }
        });
        Worker { reader, heartbeats }
    }

    /// Closes the stream: the service takes the agent offline.
    fn close(self) {
        self.heartbeats.abort();
        self.reader.abort();
    }
}

/// `cim_agent_tasks_assigned_total` by `at` (submit, dispatcher), since the service started.
fn assigned_at() -> serde_json::Value {
    let rendered = cim_runtime::metrics::handle().render();
    let mut counts = serde_json::Map::new();
    for line in rendered.lines().filter(|l| l.starts_with("cim_agent_tasks_assigned_total{")) {
        let at = line.split("at=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let n: f64 = line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(f64::NAN);
        counts.insert(at.to_owned(), n.into());
    }
    serde_json::Value::Object(counts)
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Deploys an active agent able to run the bench's tasks.
async fn agent(c: &mut Client, tenant: TenantId, i: usize) -> String {
    let deploy = pb::DeployAgentRequest {
        name: format!("bench-{i}"),
        agent_type: "system".into(),
        max_concurrent_tasks: AGENT_LIMIT,
        ..Default::default()
    };
    let id = c.deploy_agent(req(tenant, deploy)).await.expect("deploy").into_inner().id;
    let caps =
        pb::UpdateCapabilitiesRequest { agent_id: id.clone(), capabilities: vec![CAPABILITY.into()], options: None };
    c.update_capabilities(req(tenant, caps)).await.expect("capabilities");
    let activate = pb::AgentCommand { agent_id: id.clone(), ..Default::default() };
    c.activate_agent(req(tenant, activate)).await.expect("activate");
    id
}

/// What one submission saw: SubmitTask answered, the worker received it, its completion was
/// accepted; seconds from the submission.
struct Timed {
    answered: f64,
    received: f64,
    completed: f64,
}

async fn submit_and_wait(mut c: Client, tenant: TenantId, tracker: &Tracker, i: u64) -> Timed {
    let payload = serde_json::Map::from_iter([("n".to_owned(), i.into())]);
    let submit = pb::SubmitTaskRequest {
        required_capabilities: vec![CAPABILITY.into()],
        payload: Some(cim_proto::json::json_to_struct(&payload)),
        ..Default::default()
    };
    let began = Instant::now();
    let id = c.submit_task(req(tenant, submit)).await.expect("submit").into_inner().id;
    let answered = began.elapsed().as_secs_f64();
    let seen = tokio::time::timeout(PATIENCE, tracker.wait(&id)).await.expect("completed in time").expect("tracker");
    Timed {
        answered,
        received: (seen.received - began).as_secs_f64(),
        completed: (seen.completed - began).as_secs_f64(),
    }
}

/// One layout of tenants × agents: its max throughput and its dispatch latency at half of it.
async fn layout(
    addr: std::net::SocketAddr,
    submitters: &[Client],
    tenants: usize,
    secs: f64,
    raw_per_s: f64,
) -> serde_json::Value {
    let tenant_ids: Vec<TenantId> = (0..tenants).map(|_| TenantId::new()).collect();
    let tracker = Arc::new(Tracker::default());
    let mut admin = submitters[0].clone();
    let mut workers = Vec::new();
    for (t, tenant) in tenant_ids.iter().enumerate() {
        for i in 0..AGENTS / tenants {
            let id = agent(&mut admin, *tenant, t * 100 + i).await;
            workers.push(Worker::connect(addr, *tenant, id, tracker.clone()).await);
        }
    }
    // Warm-up: every worker connected, a few tasks through each.
    let warm: Vec<_> = (0..SUBMITTERS as u64)
        .map(|i| {
            let (c, tracker, tenant) =
                (submitters[i as usize % submitters.len()].clone(), tracker.clone(), tenant_ids[i as usize % tenants]);
            tokio::spawn(async move { submit_and_wait(c, tenant, &tracker, i).await })
        })
        .collect();
    for w in warm {
        w.await.expect("warm-up");
    }

    // (1) Max throughput: 64 closed-loop submitters, each its tenant's (round robin).
    let max = {
        let (submitters, tracker, tenant_ids) = (submitters.to_vec(), tracker.clone(), tenant_ids.clone());
        cim_testkit::bench::rate(SUBMITTERS, Duration::from_secs(1), secs, move |w, i| {
            let (c, tracker, tenant) =
                (submitters[w % submitters.len()].clone(), tracker.clone(), tenant_ids[w % tenants]);
            async move {
                submit_and_wait(c, tenant, &tracker, i).await;
            }
        })
        .await
    };

    // (2) Half that rate, open loop: submissions at fixed instants, whatever the earlier ones do.
    let half_rate = match std::env::var("CIM_BENCH_AGENT_RATE") {
        Ok(rate) => rate.parse::<f64>().expect("CIM_BENCH_AGENT_RATE: tasks per second").max(1.0),
        Err(_) => (max.per_s / 2.0).max(1.0),
    };
    let count = (half_rate * secs).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / half_rate);
    let started = tokio::time::Instant::now();
    let mut lag = Vec::with_capacity(count as usize);
    let mut paced = Vec::with_capacity(count as usize);
    for i in 0..count {
        let at = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        lag.push((tokio::time::Instant::now() - at).as_secs_f64());
        let (c, tracker, tenant) =
            (submitters[i as usize % submitters.len()].clone(), tracker.clone(), tenant_ids[i as usize % tenants]);
        paced.push(tokio::spawn(async move { submit_and_wait(c, tenant, &tracker, i).await }));
    }
    let offered = count as f64 / started.elapsed().as_secs_f64();
    let (mut answered, mut received, mut completed) = (Vec::new(), Vec::new(), Vec::new());
    for p in paced {
        let t = p.await.expect("paced submission");
        answered.push(t.answered);
        received.push(t.received);
        completed.push(t.completed);
    }
    let refused = tracker.refused.load(Ordering::Relaxed);
    let assigned_at = assigned_at();
    let assignments = tracker.assignments.load(Ordering::Relaxed);
    for w in workers {
        w.close();
    }

    let ratio = round3(max.per_s / raw_per_s);
    let receive = latency(received);
    let receive_p99 = receive["p99_ms"].as_f64().unwrap_or(f64::MAX);
    serde_json::json!({
        "tenants": tenants,
        "agents": AGENTS,
        "agents_per_tenant": AGENTS / tenants,
        "max_throughput_c64": {
            "tasks_per_s": max.per_s.round(),
            "submit_to_completed": max.json(),
            "tasks_over_raw_tx": ratio,
        },
        "half_load": {
            "target_per_s": half_rate.round(),
            "offered_per_s": offered.round(),
            "pacing_lag": latency(lag),
            "submit_to_worker_receives": receive,
            "submit_rpc": latency(answered),
            "submit_to_completed": latency(completed),
        },
        "assignments_received": assignments,
        "assigned_at_so_far": assigned_at,
        "completions_refused": refused,
        "targets": {
            "tasks_over_raw_tx_at_64": {"target": 0.3, "measured": ratio, "met": ratio >= 0.3},
            "dispatch_p99_ms_at_half_load": {"target": 10.0, "measured": receive_p99, "met": receive_p99 <= 10.0},
        },
    })
}

#[tokio::main]
async fn main() {
    let secs: f64 = env("CIM_BENCH_SECONDS", "5").parse().expect("CIM_BENCH_SECONDS");
    let tag = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let schema = format!("bench_agent_{tag}");
    let prefix = format!("bencha{tag}");
    let vars: HashMap<&str, String> = HashMap::from([
        ("CIM_DATABASE_URL", env("CIM_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")),
        ("CIM_NATS_URL", env("CIM_TEST_NATS_URL", "nats://127.0.0.1:4222")),
        ("CIM_SUBJECT_PREFIX", prefix.clone()),
        ("CIM_AGENT_ADDR", "127.0.0.1:0".into()),
        ("CIM_AGENT_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("CIM_DATABASE_MAX_CONNECTIONS", env("CIM_BENCH_DB_CONNECTIONS", "40")),
        ("CIM_SHUTDOWN_GRACE_MS", "2000".into()),
        ("CIM_LOG", "error".into()),
    ]);
    let config = Config::from_lookup(&|k| vars.get(k).cloned()).expect("config");
    let shutdown = Shutdown::new();
    // The deployments' timings (30 s leases, 5 s heartbeats).
    let options = AgentOptions { schema: schema.clone(), dispatch: DispatchOptions::default() };
    let prepared = prepare_with(&config, &shutdown, options).await.expect("prepare");
    let addr = prepared.grpc_addr;
    let pool = prepared.store.pool().clone();
    let server = tokio::spawn(prepared.run());

    // A deployment that has run a while: the planner knows `tasks` is large. A schema seconds
    // old has plans made for an empty table (a sequential scan of every task per statement,
    // kept for the run by the prepared statements) that no deployment keeps past autovacuum's
    // first analyze.
    sqlx::query(
        "INSERT INTO tasks (tenant_id, task_id, version, created_at, updated_at, state, payload, priority) \
         SELECT $1, gen_random_uuid(), 3, now(), now(), 'completed', '{}', 0 FROM generate_series(1, $2)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(FINISHED_TASKS)
    .execute(&pool)
    .await
    .expect("finished tasks of another tenant");
    sqlx::query("ANALYZE tasks").execute(&pool).await.expect("analyze tasks");

    // (3) The raw rate: one durable row per transaction, as an event append's insert is.
    cim_testkit::bench::RawEvents::create_table(&pool, "raw_events", "events").await;
    let raw_events = cim_testkit::bench::RawEvents {
        table: "raw_events",
        shape: ("task", "task_submitted", r#"{"required_capabilities":["bench.echo"],"payload":{"n":1},"priority":0}"#),
    };
    let raw = raw_events.rate(&pool, SUBMITTERS, Duration::from_secs(1), secs).await;
    // The floor of any latency here: one durable row, one transaction at a time.
    let raw_alone = raw_events.rate(&pool, 1, Duration::from_secs(1), secs).await;

    // Submitters over four HTTP/2 connections (16 each); every worker has its own.
    let mut submitters = Vec::new();
    for _ in 0..4 {
        submitters.push(AgentServiceClient::new(connect(addr).await));
    }
    let mut layouts = Vec::new();
    for tenants in env("CIM_BENCH_AGENT_LAYOUTS", "1,4").split(',') {
        let tenants: usize = tenants.trim().parse().expect("CIM_BENCH_AGENT_LAYOUTS: tenant counts, e.g. 1,4");
        assert!(
            tenants > 0 && AGENTS.is_multiple_of(tenants),
            "CIM_BENCH_AGENT_LAYOUTS: {tenants} tenants do not share {AGENTS} agents evenly"
        );
        layouts.push(layout(addr, &submitters, tenants, secs, raw.per_s).await);
    }

    let report = serde_json::json!({
        "bench": "agent",
        "seconds_per_point": secs,
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "shared": true},
        "raw_insert_c64": raw.json(),
        "raw_insert_c1": raw_alone.json(),
        "layouts": layouts,
    });
    shutdown.trigger();
    let _ = server.await;
    let client = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: env("CIM_TEST_NATS_URL", "nats://127.0.0.1:4222"),
        client_name: "bench".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .expect("nats");
    let prefix: cim_core::SubjectPrefix = prefix.parse().expect("prefix");
    let js = cim_runtime::nats::jetstream(client);
    let _ = js.delete_stream(prefix.stream_name(cim_core::Domain::Agent)).await;
    let _ = js.delete_stream(prefix.dlq_stream_name()).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&pool).await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap_or_default());
}
