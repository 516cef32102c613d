//! Starts a graph service on port 0 with its own schema and subject prefix, and a tonic client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_core::TenantId;
use cim_graph::app::{GraphOptions, prepare_with};
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use tonic::transport::Channel;

pub fn database_url() -> String {
    std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn unique(tag: &str) -> String {
    format!("t{tag}_{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

pub struct Service {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub schema: String,
    pub prefix: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<()>,
    pub pool: sqlx::PgPool,
}

impl Service {
    pub async fn start() -> Service {
        Self::start_on(unique("g"), unique("p")).await
    }

    /// A second instance over the same schema and subjects: another process, as far as the
    /// database can tell.
    pub async fn replica(&self) -> Service {
        Self::start_on(self.schema.clone(), self.prefix.clone()).await
    }

    pub async fn start_on(schema: String, prefix: String) -> Service {
        let vars: HashMap<&str, String> = HashMap::from([
            ("CIM_DATABASE_URL", database_url()),
            ("CIM_NATS_URL", nats_url()),
            ("CIM_SUBJECT_PREFIX", prefix.clone()),
            ("CIM_GRAPH_ADDR", "127.0.0.1:0".into()),
            ("CIM_GRAPH_ADMIN_ADDR", "127.0.0.1:0".into()),
            ("CIM_SHUTDOWN_GRACE_MS", "2000".into()),
            ("CIM_DATABASE_MAX_CONNECTIONS", "40".into()),
        ]);
        let config = Config::from_lookup(&|k| vars.get(k).cloned()).unwrap();
        let shutdown = Shutdown::new();
        let prepared = prepare_with(&config, &shutdown, GraphOptions { schema: schema.clone() }).await.unwrap();
        let (grpc, admin) = (prepared.grpc_addr, prepared.admin_addr);
        let pool = prepared.store.pool().clone();
        let task = tokio::spawn(async move {
            prepared.run().await.unwrap();
        });
        Service { grpc, admin, schema, prefix, shutdown, task, pool }
    }

    pub async fn client(&self) -> GraphServiceClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        GraphServiceClient::new(channel)
    }

    /// Stops without dropping the schema (another instance still uses it).
    pub async fn stop_replica(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
        let _ =
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.schema))).execute(&self.pool).await;
    }
}

/// A request carrying the tenant, as the gateway sends it.
pub fn req<T>(tenant: TenantId, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("x-cim-tenant", tenant.to_string().parse().unwrap());
    r.metadata_mut().insert("x-cim-actor", "user:test".parse().unwrap());
    r
}

pub fn props(v: serde_json::Value) -> Option<prost_types::Struct> {
    Some(cim_graph::convert::json_to_struct(v.as_object().unwrap()))
}

pub fn node(id: &str, ty: &str) -> pb::NodeSpec {
    pb::NodeSpec { id: id.into(), r#type: ty.into(), properties: props(serde_json::json!({"name": id})) }
}

pub fn edge(id: &str, ty: &str, s: &str, t: &str) -> pb::EdgeSpec {
    pb::EdgeSpec { id: id.into(), r#type: ty.into(), source: s.into(), target: t.into(), properties: None }
}

pub fn expect(version: u64) -> Option<pb::CommandOptions> {
    Some(pb::CommandOptions { expected_version: Some(version), idempotency_key: String::new() })
}
