//! An agent service for the gateway's tests: port 0, its own schema, the caller's subject prefix.

#![allow(dead_code)]

use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, unique};

pub struct AgentService {
    pub running: Running,
}

impl AgentService {
    pub async fn start(prefix: &str) -> AgentService {
        let schema = unique("ga");
        let shutdown = Shutdown::new();
        let options = cim_agent::app::AgentOptions { schema: schema.clone(), ..Default::default() };
        let config = config(ServiceKind::Agent, prefix, &[]);
        let prepared = cim_agent::app::prepare_with(&config, &shutdown, options).await.unwrap();
        AgentService { running: Running::spawn(prepared, schema, prefix.to_owned(), shutdown) }
    }

    /// `CIM_GATEWAY_AGENT_URLS` for a gateway in front of it.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.grpc)
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}
