//! Runs a domain service (any service on the kit's host) the way the suites need it: on port 0,
//! with its own schema and subject prefix, so tests run beside each other and beside a CIM that
//! is up; and on stop, every hash chain the test wrote is verified before the schema is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_aggregate::host::Prepared;
use cim_core::TenantId;
use cim_runtime::config::Config;
use cim_runtime::{ServiceKind, Shutdown};

pub fn database_url() -> String {
    std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other test (or running CIM) uses: `t<tag>_<random>`.
pub fn unique(tag: &str) -> String {
    format!("t{tag}_{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// The configuration of one test service: real Postgres and NATS, its own subject prefix,
/// listeners on port 0; `extra` adds or overrides variables.
pub fn config(kind: ServiceKind, prefix: &str, extra: &[(&str, String)]) -> Config {
    let upper = kind.name().to_ascii_uppercase();
    let mut vars: HashMap<String, String> = HashMap::from([
        ("CIM_DATABASE_URL".into(), database_url()),
        ("CIM_NATS_URL".into(), nats_url()),
        ("CIM_SUBJECT_PREFIX".into(), prefix.to_owned()),
        (format!("CIM_{upper}_ADDR"), "127.0.0.1:0".into()),
        (format!("CIM_{upper}_ADMIN_ADDR"), "127.0.0.1:0".into()),
        ("CIM_SHUTDOWN_GRACE_MS".into(), "2000".into()),
        ("CIM_DATABASE_MAX_CONNECTIONS".into(), "40".into()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), v.clone());
    }
    Config::from_lookup(&|k| vars.get(k).cloned()).expect("test configuration")
}

/// A running domain service.
#[derive(Debug)]
pub struct Running {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub schema: String,
    pub prefix: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
    pub store: cim_eventstore::EventStore,
    pub pool: sqlx::PgPool,
}

impl Running {
    /// Runs a prepared service in the background.
    pub fn spawn(prepared: Prepared, schema: String, prefix: String, shutdown: Shutdown) -> Running {
        let (grpc, admin) = (prepared.grpc_addr, prepared.admin_addr);
        let store = prepared.store.clone();
        let pool = store.pool().clone();
        let task = tokio::spawn(async move {
            prepared.run().await.expect("service ran");
        });
        Running { grpc, admin, schema, prefix, shutdown, task, store, pool }
    }

    /// A channel to the gRPC listener.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .expect("an http URL")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("service reachable")
    }

    /// Stops without dropping the schema (another instance still uses it).
    pub async fn stop_replica(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }

    /// Stops, verifies the hash chain of every aggregate the test wrote (what `cim verify`
    /// runs), and drops the schema, the domain's stream and the prefix's dead-letter stream, so
    /// a suite run leaves nothing behind on the developer's Postgres and NATS.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
        let report = self.store.verify_all().await.expect("chain verification ran");
        assert!(report.broken.is_empty(), "hash chains broken in {}: {:?}", self.schema, report.broken);
        let drop = format!("DROP SCHEMA {} CASCADE", self.schema);
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&self.pool).await;
        if let (Ok(prefix), Ok(client)) =
            (self.prefix.parse::<cim_core::SubjectPrefix>(), async_nats::connect(nats_url()).await)
        {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(prefix.stream_name(self.store.domain())).await;
            let _ = js.delete_stream(prefix.dlq_stream_name()).await;
        }
    }
}

/// A request carrying the tenant and an actor, as the gateway sends it.
pub fn req<T>(tenant: TenantId, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-cim-tenant", tenant.to_string().parse().expect("a header value"));
    r.metadata_mut().insert("x-cim-actor", "user:test".parse().expect("a header value"));
    r
}
