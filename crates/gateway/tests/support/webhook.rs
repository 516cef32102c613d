//! A webhook service for the gateway's tests: port 0, its own schema, the caller's subject
//! prefix, a sender that looks for due deliveries every 50 ms.

#![allow(dead_code)]

use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, unique};
use cim_webhook::app::{WebhookOptions, prepare_with};

pub struct WebhookService {
    pub running: Running,
}

impl WebhookService {
    pub async fn start(prefix: &str) -> WebhookService {
        let schema = unique("gw");
        let shutdown = Shutdown::new();
        let vars = [("CIM_DATABASE_MAX_CONNECTIONS", "8".to_owned()), ("CIM_WEBHOOK_POLL_MS", "50".to_owned())];
        let service_config = config(ServiceKind::Webhook, prefix, &vars);
        let options = WebhookOptions { schema: schema.clone(), settings: service_config.webhook.clone() };
        let prepared = prepare_with(&service_config, &shutdown, options).await.unwrap();
        WebhookService { running: Running::spawn(prepared, schema, prefix.to_owned(), shutdown) }
    }

    /// `CIM_GATEWAY_WEBHOOK_URLS` for a gateway in front of it.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.grpc)
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}
