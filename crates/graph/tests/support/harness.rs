//! Starts a graph service on port 0 with its own schema and subject prefix, and a tonic client.

#![allow(dead_code, unused_imports)]

use cim_core::TenantId;
use cim_graph::app::{GraphOptions, prepare_with};
use cim_proto::graph as pb;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::Running;
use tonic::transport::Channel;

pub use cim_testkit::domain::{database_url, nats_url, req, unique};

/// A graph service on the kit's test host (cim_testkit::domain): its fields (`grpc`, `prefix`,
/// `pool`, ...) through `Deref`.
pub struct Service {
    running: Running,
}

impl std::ops::Deref for Service {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.running
    }
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
        Self::start_with(schema, prefix, &[]).await
    }

    /// With settings of its own (`CIM_*` variables).
    pub async fn start_with(schema: String, prefix: String, vars: &[(&str, String)]) -> Service {
        let config = cim_testkit::domain::config(ServiceKind::Graph, &prefix, vars);
        let shutdown = Shutdown::new();
        let prepared = prepare_with(&config, &shutdown, GraphOptions { schema: schema.clone() }).await.unwrap();
        Service { running: Running::spawn(prepared, schema, prefix, shutdown) }
    }

    pub async fn client(&self) -> GraphServiceClient<Channel> {
        GraphServiceClient::new(self.channel().await)
    }

    /// Stops without dropping the schema (another instance still uses it).
    pub async fn stop_replica(self) {
        self.running.stop_replica().await;
    }

    /// Stops, verifies the hash chain of every aggregate the test wrote (the sweep `cim verify`
    /// runs: so every test of the suite ends with its histories checked), drops the schema and
    /// the streams.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

pub type Client = GraphServiceClient<Channel>;

/// A new graph named "people" in `tenant`; its id.
pub async fn create(client: &mut Client, tenant: TenantId) -> String {
    client
        .create_graph(req(tenant, pb::CreateGraphRequest { name: "people".into(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .graph_id
}

/// Every node of `graph` (of `node_type` when not empty), page by page.
pub async fn all_nodes(c: &mut Client, tenant: TenantId, graph: &str, node_type: &str) -> Vec<pb::Node> {
    let mut nodes = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_nodes(req(
                tenant,
                pb::ListNodesRequest {
                    graph_id: graph.into(),
                    r#type: node_type.into(),
                    page: Some(cim_proto::common::PageRequest { page_size: 1000, page_token: token }),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        nodes.extend(page.nodes);
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            return nodes;
        }
    }
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

pub fn expect(version: u64) -> Option<cim_proto::common::CommandOptions> {
    Some(cim_proto::common::CommandOptions { expected_version: Some(version), idempotency_key: String::new() })
}

/// The service's event store, opened over its schema (as `cim verify` would).
pub async fn store_of(svc: &Service) -> cim_eventstore::EventStore {
    svc.store.clone()
}

/// Random JSON documents: doubles of every class (subnormal, tiny, huge, negative, integral),
/// integers a double holds, unicode keys and strings, nesting within the limits.
pub fn documents(count: usize) -> Vec<serde_json::Map<String, serde_json::Value>> {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    let number = prop_oneof![
        // Every finite double: subnormal, normal up to f64::MAX, zero, either sign.
        (prop::num::f64::NORMAL
            | prop::num::f64::SUBNORMAL
            | prop::num::f64::ZERO
            | prop::num::f64::NEGATIVE
            | prop::num::f64::POSITIVE)
            .prop_map(serde_json::Value::from),
        (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(serde_json::Value::from),
    ];
    let leaf = prop_oneof![
        3 => number,
        1 => "[^\u{0}]{0,12}".prop_map(serde_json::Value::from),
        1 => any::<bool>().prop_map(serde_json::Value::from),
        1 => Just(serde_json::Value::Null),
    ];
    let value = leaf.prop_recursive(6, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[^\u{0}]{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let doc = prop::collection::btree_map("[^\u{0}]{1,8}", value, 0..5);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..count).map(|_| doc.new_tree(&mut runner).unwrap().current().into_iter().collect()).collect()
}

/// Equal as JSON values: numbers by IEEE equality (so 3 == 3.0, and -0 == 0), the rest exactly.
pub fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
