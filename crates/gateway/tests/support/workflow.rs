//! A workflow service for the gateway's tests: port 0, its own schema, the caller's subject
//! prefix, an engine that polls every 20 ms so steps advance within a test's patience.

#![allow(dead_code)]

use std::time::Duration;

use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, unique};
use cim_workflow::app::{WorkflowOptions, prepare_with};
use cim_workflow::engine::EngineOptions;

pub struct WorkflowService {
    pub running: Running,
}

impl WorkflowService {
    pub async fn start(prefix: &str) -> WorkflowService {
        let schema = unique("gw");
        let shutdown = Shutdown::new();
        let engine = EngineOptions { lease: Duration::from_secs(5), poll: Duration::from_millis(20), concurrency: 4 };
        let options = WorkflowOptions { schema: schema.clone(), engine };
        let prepared = prepare_with(&config(ServiceKind::Workflow, prefix, &[]), &shutdown, options).await.unwrap();
        WorkflowService { running: Running::spawn(prepared, schema, prefix.to_owned(), shutdown) }
    }

    /// `CIM_GATEWAY_WORKFLOW_URLS` for a gateway in front of it.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.grpc)
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}
