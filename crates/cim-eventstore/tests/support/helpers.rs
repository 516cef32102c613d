//! Shared helpers for the event-store tests: a fresh schema and subject prefix per test, so tests
//! run in parallel against the one shared Postgres and NATS; and a private nats-server for tests
//! that must stop one.

#![allow(dead_code, unused_imports)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use cim_core::{
    Actor, AggregateId, CausationId, CorrelationId, Domain, EventContext, EventEnvelope, NewEvent, SubjectPrefix,
    TenantId, Upcasters,
};
use cim_eventstore::{EventStore, StoreConfig};
use futures::StreamExt;
use sqlx::PgPool;

pub use cim_testkit::domain::{database_url, nats_url, unique};

pub async fn pool(schema: &str, max: u32) -> PgPool {
    cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
        url: database_url(),
        schema: schema.to_owned(),
        max_connections: max,
        connect_timeout: Duration::from_secs(10),
        application_name: "cim-eventstore-test".into(),
    })
    .await
    .unwrap()
}

pub async fn nats(url: &str) -> async_nats::Client {
    cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: url.to_owned(),
        client_name: "cim-eventstore-test".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .unwrap()
}

pub struct TestEnv {
    pub schema: String,
    pub pool: PgPool,
    pub store: EventStore,
    pub js: jetstream::Context,
    pub prefix: SubjectPrefix,
    pub stream: String,
}

impl TestEnv {
    pub async fn new(snapshot_every: u64) -> TestEnv {
        Self::with(snapshot_every, &nats_url(), None).await
    }

    /// `schema`: reuse an existing schema (a restarted writer).
    pub async fn with(snapshot_every: u64, nats_url: &str, existing: Option<(&str, &str)>) -> TestEnv {
        let (schema, prefix) = match existing {
            Some((s, p)) => (s.to_owned(), p.to_owned()),
            None => (unique("s"), unique("p")),
        };
        let pool = pool(&schema, 24).await;
        let store = EventStore::open(
            pool.clone(),
            StoreConfig { domain: Domain::Graph, schema: schema.clone(), snapshot_every, upcasters: Upcasters::new() },
        )
        .await
        .unwrap();
        let js = cim_runtime::nats::jetstream(nats(nats_url).await);
        let prefix: SubjectPrefix = prefix.parse().unwrap();
        let stream = cim_streams::streams::ensure_domain_stream(&js, &prefix, Domain::Graph, 1).await.unwrap();
        TestEnv { schema, pool, store, js, prefix, stream }
    }

    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&self.pool).await.unwrap()
    }

    pub async fn wait_outbox_empty(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let n = self.outbox_len().await;
            if n == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "outbox still holds {n} events");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stored_ids(&self) -> HashSet<uuid::Uuid> {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT event_id FROM events")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .collect()
    }

    pub async fn cleanup(self) {
        let _ = self.js.delete_stream(&self.stream).await;
        let _ = self.js.delete_stream(self.prefix.dlq_stream_name()).await;
        let _ =
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.schema))).execute(&self.pool).await;
    }
}

pub fn context(tenant: TenantId, aggregate: AggregateId) -> EventContext {
    EventContext {
        domain: Domain::Graph,
        aggregate_type: "counter".parse().unwrap(),
        aggregate_id: aggregate,
        tenant_id: tenant,
        actor: Actor::service("test"),
        correlation_id: CorrelationId::new(),
        causation_id: CausationId::new(),
    }
}

pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_type: "counted".parse().unwrap(),
        schema_version: 1,
        payload: serde_json::json!({"n": n, "note": "x", "ratio": 0.1 + n as f64, "big": 1e20}),
    }
}

/// A published message as a test sees it.
#[derive(Debug, Clone)]
pub struct Published {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub event: EventEnvelope,
}

/// Every message in `stream`, in stream order.
pub async fn read_stream(js: &jetstream::Context, stream: &str) -> Vec<Published> {
    let mut s = js.get_stream(stream).await.unwrap();
    let total = s.info().await.unwrap().state.messages as usize;
    if total == 0 {
        return vec![];
    }
    let consumer = s
        .create_consumer(pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < total {
        let m = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), messages.next())
            .await
            .expect("timed out reading the stream")
            .unwrap()
            .unwrap();
        let headers = m
            .headers
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.to_string(), v[0].as_str().to_owned())).collect())
            .unwrap_or_default();
        out.push(Published {
            subject: m.subject.to_string(),
            headers,
            event: serde_json::from_slice(&m.payload).unwrap(),
        });
    }
    out
}

/// Asserts each stored event appears once in the stream and aggregates keep their order.
pub fn assert_exactly_once_in_order(published: &[Published], stored: &HashSet<uuid::Uuid>) {
    let mut seen = HashSet::new();
    for p in published {
        assert!(seen.insert(p.event.event_id.as_uuid()), "duplicate in stream: {}", p.event.event_id);
    }
    let missing: Vec<_> = stored.difference(&seen).collect();
    assert!(missing.is_empty(), "{} stored events missing from the stream, e.g. {:?}", missing.len(), missing.first());
    let extra: Vec<_> = seen.difference(stored).collect();
    assert!(extra.is_empty(), "{} events in the stream that Postgres does not have", extra.len());
    let mut last: HashMap<AggregateId, u64> = HashMap::new();
    for p in published {
        let prev = last.insert(p.event.aggregate_id, p.event.sequence).unwrap_or(0);
        assert_eq!(p.event.sequence, prev + 1, "aggregate {} out of order", p.event.aggregate_id);
    }
}

/// A nats-server of our own (for tests that stop it), on a free port with its own store.
pub struct PrivateNats {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: Option<Child>,
}

fn nats_server_binary() -> String {
    for candidate in ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Command::new(candidate).arg("--version").output().is_ok() {
            return candidate.to_owned();
        }
    }
    panic!("nats-server not found: run scripts/infra.sh up, which installs it");
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(unique("nats"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut me = PrivateNats { port, dir, child: None };
        me.restart();
        me
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private nats-server did not start");
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
