//! A document service for the gateway's tests: port 0, its own schema and object directory,
//! the caller's subject prefix.

#![allow(dead_code)]

use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{Running, config, unique};

pub struct DocumentService {
    pub running: Running,
    objects: std::path::PathBuf,
}

impl DocumentService {
    pub async fn start(prefix: &str) -> DocumentService {
        let objects = std::env::temp_dir().join(unique("gwobjects"));
        let schema = unique("gd");
        let vars = [("CIM_OBJECT_STORE_URL", objects.display().to_string())];
        let shutdown = Shutdown::new();
        let options = cim_document::app::DocumentOptions { schema: schema.clone(), ..Default::default() };
        let config = config(ServiceKind::Document, prefix, &vars);
        let prepared = cim_document::app::prepare_with(&config, &shutdown, options).await.unwrap();
        DocumentService { running: Running::spawn(prepared, schema, prefix.to_owned(), shutdown), objects }
    }

    /// `CIM_GATEWAY_DOCUMENT_URLS` for a gateway in front of it.
    pub fn url(&self) -> String {
        format!("http://{}", self.running.grpc)
    }

    pub async fn stop(self) {
        self.running.stop().await;
        let _ = std::fs::remove_dir_all(self.objects);
    }
}
