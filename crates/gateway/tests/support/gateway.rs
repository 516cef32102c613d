//! A gateway on port 0 in front of a test graph service, and the tokens and checks its tests
//! share.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cim_auth::{Claims, issue_hs256};
use cim_core::TenantId;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;

use super::harness;
use super::http::Reply;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

pub struct Gateway {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<()>,
}

pub async fn gateway(graph: &harness::Service, extra: &[(&str, &str)]) -> Gateway {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("CIM_GATEWAY_GRAPH_URLS".into(), format!("http://{}", graph.grpc)),
        ("CIM_NATS_URL".into(), harness::nats_url()),
        ("CIM_SUBJECT_PREFIX".into(), graph.prefix.clone()),
        ("CIM_GATEWAY_ADDR".into(), "127.0.0.1:0".into()),
        ("CIM_GATEWAY_ADMIN_ADDR".into(), "127.0.0.1:0".into()),
        ("CIM_JWT_HS256_SECRET".into(), SECRET.into()),
        ("CIM_GATEWAY_MAX_BODY_BYTES".into(), "4096".into()),
        ("CIM_SHUTDOWN_GRACE_MS".into(), "1000".into()),
        // Plain HTTP, as a browser on this machine would reach it.
        ("CIM_GATEWAY_COOKIE_SECURE".into(), "false".into()),
        // Every test process reaches its gateway from 127.0.0.1 and counts in the one shared
        // Redis: one test's deliberate failures must not lock the others out. The lockout's own
        // test turns it on with addresses of its own (tests/security.rs).
        ("CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE".into(), "0".into()),
    ]);
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    let config = Config::from_lookup(&|k| vars.get(k).cloned()).unwrap();
    let shutdown = Shutdown::new();
    let prepared = cim_gateway::app::prepare(&config, &shutdown).await.unwrap();
    let addr = prepared.addr;
    let task = tokio::spawn(async move {
        prepared.run().await.unwrap();
    });
    Gateway { addr, shutdown, task }
}

impl Gateway {
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = self.task.await;
    }
}

pub fn token(tenant: TenantId, roles: &[&str], exp: u64) -> String {
    issue_hs256(
        SECRET,
        &Claims {
            sub: "alice".into(),
            tenant: tenant.to_string(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            exp,
            iss: "cim".into(),
            aud: "cim".into(),
        },
    )
    .unwrap()
}

pub fn bearer(t: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {t}"))]
}

pub fn problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "{r:?}");
    assert_eq!(r.json()["code"], code, "{r:?}");
}

/// Polls until `f` holds (events travel through NATS), up to 10 s.
pub async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
