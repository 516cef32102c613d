//! The CIM side: the workflow service in this process (its own schema and subject prefix, port
//! 0, the engine settings a deployment gets from the default `CIM_WORKFLOW_*` values), clients
//! over gRPC, and a watcher of the service's `workflow_completed` events on NATS, which tells
//! each client when its instance completed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cim_core::TenantId;
use cim_proto::workflow as pb;
use cim_proto::workflow::workflow_service_client::WorkflowServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::bench::{Rng, Throughput, rate};
use cim_testkit::domain::{Running, config, req};
use cim_workflow::app::{WorkflowOptions, prepare_with};
use cim_workflow::engine::EngineOptions;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::transport::Channel;

type Client = WorkflowServiceClient<Channel>;

/// How long one instance may take before the bench calls it lost.
const PATIENCE: Duration = Duration::from_secs(60);
/// gRPC connections the clients share (HTTP/2 multiplexes the rest).
const CONNECTIONS: usize = 4;
/// Operations before this are not measured.
const WARM_UP: Duration = Duration::from_secs(1);

/// When each instance's end was seen, and who waits for it (the event can arrive before the
/// client has the id StartWorkflow answers).
#[derive(Default)]
struct Tracker {
    ended: Mutex<HashMap<String, Entry>>,
}

/// An instance's end as the watcher saw it: when, whether it completed, and how long after the
/// event's time (`occurred_at`, stamped just before its append) it arrived.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: DateTime<Utc>,
    completed: bool,
    after_written: f64,
}

#[derive(Default)]
struct Entry {
    seen: Option<Seen>,
    waiter: Option<oneshot::Sender<Seen>>,
}

impl Tracker {
    fn ended(&self, id: &str, completed: bool, occurred_at: Option<DateTime<Utc>>) {
        let at = Utc::now();
        let after_written = occurred_at.map_or(f64::NAN, |t| (at - t).as_seconds_f64());
        let seen = Seen { at, completed, after_written };
        let mut ended = self.ended.lock().expect("tracker");
        let entry = ended.entry(id.to_owned()).or_default();
        match entry.waiter.take() {
            Some(waiter) => {
                ended.remove(id);
                let _ = waiter.send(seen);
            }
            None => entry.seen = Some(seen),
        }
    }

    /// Resolves with when the instance ended and whether it completed.
    fn wait(&self, id: &str) -> oneshot::Receiver<Seen> {
        let (tx, rx) = oneshot::channel();
        let mut ended = self.ended.lock().expect("tracker");
        let entry = ended.entry(id.to_owned()).or_default();
        match entry.seen.take() {
            Some(seen) => {
                ended.remove(id);
                let _ = tx.send(seen);
            }
            None => entry.waiter = Some(tx),
        }
        rx
    }
}

pub struct Cim {
    running: Running,
    clients: Vec<Client>,
    tenant: TenantId,
    tracker: Arc<Tracker>,
    watcher: tokio::task::JoinHandle<()>,
    pub engine: EngineOptions,
    /// Connections the pool opened before the run, of how many it may hold.
    pub pool: (u32, u32),
}

impl Cim {
    /// Starts the service with the engine settings `CIM_WORKFLOW_*` give (`poll_ms`: none for
    /// the deployments' default) and subscribes to its instances' ends.
    pub async fn start(poll_ms: Option<u64>) -> Cim {
        let tag = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let (schema, prefix) = (format!("bench_workflow_{tag}"), format!("benchw{tag}"));
        let connections = std::env::var("CIM_BENCH_DB_CONNECTIONS").unwrap_or_else(|_| "40".into());
        let mut extra = vec![("CIM_LOG", "error".to_owned()), ("CIM_DATABASE_MAX_CONNECTIONS", connections)];
        if let Some(ms) = poll_ms {
            extra.push(("CIM_WORKFLOW_POLL_MS", ms.to_string()));
        }
        // Experiments: `CIM_BENCH_WORKFLOW_ENV="K=V K=V"` overrides service settings for one run.
        let overrides = std::env::var("CIM_BENCH_WORKFLOW_ENV").unwrap_or_default();
        let overrides: Vec<(&str, String)> =
            overrides.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k, v.to_owned())).collect();
        extra.extend(overrides.iter().cloned());
        let config = config(ServiceKind::Workflow, &prefix, &extra);
        let engine = EngineOptions::from_settings(&config.workflow);
        let shutdown = Shutdown::new();
        let options = WorkflowOptions { schema: schema.clone(), engine: engine.clone() };
        let prepared = prepare_with(&config, &shutdown, options).await.expect("workflow service");
        let running = Running::spawn(prepared, schema, prefix.clone(), shutdown);

        let nats = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
            url: cim_testkit::domain::nats_url(),
            client_name: "bench-watcher".into(),
            connect_timeout: Duration::from_secs(5),
            security: Default::default(),
        })
        .await
        .expect("nats");
        let subject = |event: &str| format!("{prefix}.workflow.evt.*.*.{event}");
        let completed = nats.subscribe(subject("workflow_completed")).await.expect("subscribe");
        let failed = nats.subscribe(subject("workflow_failed")).await.expect("subscribe");
        nats.flush().await.expect("subscriptions registered");
        let tracker = Arc::new(Tracker::default());
        let watching = tracker.clone();
        let watcher = tokio::spawn(async move {
            let mut ends = futures::stream::select(completed, failed);
            while let Some(message) = ends.next().await {
                // <prefix>.workflow.evt.<type>.<instance id>.<event type>
                let mut tokens = message.subject.rsplit('.');
                if let (Some(event), Some(id)) = (tokens.next(), tokens.next()) {
                    let envelope: Value = serde_json::from_slice(&message.payload).unwrap_or_default();
                    let occurred_at = envelope["occurred_at"].as_str().and_then(|t| t.parse().ok());
                    watching.ended(id, event == "workflow_completed", occurred_at);
                }
            }
        });

        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(WorkflowServiceClient::new(running.channel().await));
        }
        let pool = warm_pool(&running.pool, running.pool.options().get_max_connections()).await;
        Cim { running, clients, tenant: TenantId::new(), tracker, watcher, engine, pool }
    }

    fn client(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }

    /// A definition of `steps` automated no-op steps, each depending on the one before.
    pub async fn chain(&self, steps: usize) -> String {
        let steps: Vec<Value> = (1..=steps)
            .map(|i| {
                let after: Vec<String> = if i == 1 { vec![] } else { vec![format!("s{}", i - 1)] };
                json!({"id": format!("s{i}"), "kind": "automated", "depends_on": after, "set": {format!("s{i}"): "1"}})
            })
            .collect();
        self.define(json!({"name": format!("chain of {}", steps.len()), "steps": steps})).await
    }

    async fn define(&self, definition: Value) -> String {
        let document = cim_proto::json::json_to_struct(definition.as_object().expect("an object"));
        let r = pb::CreateDefinitionRequest { definition: Some(document), ..Default::default() };
        self.client(0).create_definition(req(self.tenant, r)).await.expect("definition").into_inner().id
    }

    /// `c` clients for `secs`, each starting an instance of `definition` and waiting until it
    /// completed; the latency of each is StartWorkflow sent → its `workflow_completed` seen.
    /// Beside it, where the time went (operations ending after the warm-up): StartWorkflow
    /// answered, and the completion's way from its append to this client (commit, relay, NATS).
    pub async fn closed_loop(&self, definition: &str, c: usize, secs: f64) -> (Throughput, Value) {
        let (clients, tenant, tracker) = (self.clients.clone(), self.tenant, self.tracker.clone());
        let definition = definition.to_owned();
        let parts = Arc::new(Mutex::new(Vec::new()));
        let warm = Instant::now() + WARM_UP;
        let noted = parts.clone();
        let before = self.advances().await;
        let rate = rate(c, WARM_UP, secs, move |w, _| {
            let (client, tracker, definition) =
                (clients[w % clients.len()].clone(), tracker.clone(), definition.clone());
            let noted = noted.clone();
            async move {
                let parts = run_once(client, tenant, &tracker, &definition).await;
                if Instant::now() >= warm {
                    noted.lock().expect("parts").push(parts);
                }
            }
        })
        .await;
        let after = self.advances().await;
        let advances: BTreeMap<&String, f64> =
            after.iter().map(|(k, n)| (k, n - before.get(k).copied().unwrap_or_default())).collect();
        let (started, relayed): (Vec<f64>, Vec<f64>) =
            std::mem::take(&mut *parts.lock().expect("parts")).into_iter().unzip();
        let parts = json!({
            "start_rpc": cim_testkit::bench::percentiles(started),
            "completion_append_to_seen": cim_testkit::bench::percentiles(relayed),
            "engine_advances_by_outcome": advances,
        });
        (rate, parts)
    }

    /// `count` instances of one timer step each, started by 64 clients; sleeps of 6–8.85 s, so
    /// that (on this machine) every instance sleeps before the first timer is due and the fires
    /// (about 300/s) are measured on their own. How late each timer fired, as recorded (the
    /// `timer_fired` event's time against its `fire_at`) and as seen by a client (its
    /// `workflow_completed` event arriving here).
    pub async fn timers(&self, count: usize) -> serde_json::Value {
        const SPREAD: usize = 20;
        let mut definitions = Vec::new();
        for k in 0..SPREAD {
            let sleep_ms = 6_000 + k * 150;
            let step = json!({"id": "wait", "kind": "timer", "sleep_ms": sleep_ms});
            definitions.push(self.define(json!({"name": format!("sleep {sleep_ms} ms"), "steps": [step]})).await);
        }
        let mut rng = Rng(18);
        let picks: Vec<String> = (0..count).map(|_| definitions[rng.next() as usize % SPREAD].clone()).collect();
        let began = Instant::now();
        let started: Vec<(String, oneshot::Receiver<_>)> = futures::stream::iter(picks.into_iter().enumerate())
            .map(|(i, definition)| {
                let (mut client, tracker, tenant) = (self.client(i), self.tracker.clone(), self.tenant);
                async move {
                    let id = start(&mut client, tenant, &definition).await;
                    let ended = tracker.wait(&id);
                    (id, ended)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let start_secs = began.elapsed().as_secs_f64();
        let all_started = Utc::now();
        let mut seen = HashMap::new();
        for (id, ended) in started {
            let ended = tokio::time::timeout(PATIENCE, ended).await.expect("timer in time").expect("tracker");
            assert!(ended.completed, "timer instance {id} failed");
            seen.insert(id, ended.at);
        }
        let total_secs = began.elapsed().as_secs_f64();
        let lateness: Vec<(DateTime<Utc>, f64, f64)> = futures::stream::iter(seen)
            .map(|(id, seen_at)| {
                let (mut client, tenant) = (self.client(0), self.tenant);
                async move {
                    let (fire_at, recorded) = fired(&mut client, tenant, &id).await;
                    (fire_at, (recorded - fire_at).as_seconds_f64(), (seen_at - fire_at).as_seconds_f64())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let early = lateness.iter().filter(|(_, recorded, _)| *recorded < 0.0).count();
        let overlapping = lateness.iter().filter(|(fire_at, ..)| *fire_at < all_started).count();
        let (recorded, observed): (Vec<f64>, Vec<f64>) = lateness.into_iter().map(|(_, r, o)| (r, o)).unzip();
        json!({
            "instances": count,
            "sleeps_ms": "6000..8850, 20 definitions",
            "start_all_s": round3(start_secs),
            "all_completed_s": round3(total_secs),
            "fired_early": early,
            "due_before_all_were_started": overlapping,
            "recorded_lateness": cim_testkit::bench::percentiles(recorded),
            "client_seen_lateness": cim_testkit::bench::percentiles(observed),
        })
    }

    /// The engine's `cim_workflow_advances_total` by outcome, from the service's `/metrics`.
    pub async fn advances(&self) -> BTreeMap<String, f64> {
        let url = format!("http://{}/metrics", self.running.admin);
        let text = match reqwest::get(url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter_map(|line| line.strip_prefix("cim_workflow_advances_total{outcome=\""))
            .filter_map(|rest| rest.split_once("\"} "))
            .filter_map(|(outcome, n)| Some((outcome.to_owned(), n.trim().parse().ok()?)))
            .collect()
    }

    /// What makes a commit durable on this Postgres.
    pub async fn durability(&self) -> serde_json::Value {
        let mut settings = serde_json::Map::new();
        for name in ["synchronous_commit", "fsync", "wal_sync_method", "full_page_writes"] {
            let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&self.running.pool)
                .await
                .expect("a setting");
            settings.insert(name.into(), value.into());
        }
        settings.into()
    }

    /// Stops the service (every hash chain verified, schema and streams dropped).
    pub async fn stop(self) {
        self.watcher.abort();
        self.running.stop().await;
    }
}

/// Opens the pool's connections before anything is measured (idle ones stay open for minutes):
/// on the shared Postgres, whose 100 connections other sessions' tests also take, a pool that
/// has to open connections mid-run can wait seconds for one. How many it got, of `max`.
async fn warm_pool(pool: &sqlx::PgPool, max: u32) -> (u32, u32) {
    let held: Vec<_> = futures::stream::iter(0..max)
        .map(|_| pool.acquire())
        .buffer_unordered(max as usize)
        .filter_map(|c| async move { c.ok() })
        .collect()
        .await;
    (held.len() as u32, max)
}

async fn start(client: &mut Client, tenant: TenantId, definition: &str) -> String {
    let r = pb::StartWorkflowRequest { definition_id: definition.into(), ..Default::default() };
    client.start_workflow(req(tenant, r)).await.expect("start").into_inner().id
}

/// One instance started and seen completed: how long StartWorkflow took, and how long the
/// completion took from its append to this client (seconds).
async fn run_once(mut client: Client, tenant: TenantId, tracker: &Tracker, definition: &str) -> (f64, f64) {
    let began = Instant::now();
    let id = start(&mut client, tenant, definition).await;
    let started = began.elapsed().as_secs_f64();
    let seen = tokio::time::timeout(PATIENCE, tracker.wait(&id)).await.expect("completed in time").expect("tracker");
    assert!(seen.completed, "instance {id} failed");
    (started, seen.after_written)
}

/// The instance's timer: when it was due, and when the engine recorded it firing.
async fn fired(client: &mut Client, tenant: TenantId, id: &str) -> (DateTime<Utc>, DateTime<Utc>) {
    let r = pb::GetWorkflowHistoryRequest { instance_id: id.into() };
    let history = client.get_workflow_history(req(tenant, r)).await.expect("history").into_inner();
    let event = history.events.into_iter().find(|e| e.event_type == "timer_fired").expect("a timer_fired event");
    let payload = cim_proto::json::struct_to_json(event.payload).expect("payload");
    let fire_at: DateTime<Utc> = payload["fire_at"].as_str().and_then(|s| s.parse().ok()).expect("fire_at");
    let t = event.occurred_at.expect("occurred_at");
    let recorded = DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a timestamp");
    (fire_at, recorded)
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
