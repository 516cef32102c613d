//! Wiring: the kit's domain host (Postgres schema `document`, event store, stream, relay,
//! listeners) plus the object store, the document gRPC service and the content sweeper.

use std::time::Duration;

use cim_aggregate::CommandExecutor;
use cim_aggregate::host::{DomainHost, DomainSpec, HostError};
use cim_core::Domain;
use cim_proto::document::document_service_server::DocumentServiceServer;
use cim_runtime::config::Config;
use cim_runtime::{ServiceKind, Shutdown};

use crate::content::ContentStore;
use crate::projection::DocumentProjection;
use crate::service::DocumentApi;
use crate::sweeper::Sweeper;

pub use cim_aggregate::host::Prepared;

pub type AppError = HostError;

/// What differs between deployments beyond `CIM_*` (tests use their own schema and sweep often).
#[derive(Debug, Clone)]
pub struct DocumentOptions {
    pub schema: String,
    /// How often the sweeper looks for unreferenced content.
    pub sweep_every: Duration,
}

impl Default for DocumentOptions {
    fn default() -> Self {
        Self { schema: crate::SCHEMA.to_owned(), sweep_every: Duration::from_secs(300) }
    }
}

/// Connects, migrates and binds. Nothing is served until [`Prepared::run`].
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    prepare_with(config, shutdown, DocumentOptions::default()).await
}

/// [`prepare`] with explicit options.
pub async fn prepare_with(
    config: &Config,
    shutdown: &Shutdown,
    options: DocumentOptions,
) -> Result<Prepared, AppError> {
    crate::metrics::describe();
    let objects = cim_objects::Objects::open(&config.objects, config.connect_timeout)
        .map_err(|e| HostError::Setup(e.to_string()))?;
    let spec = DomainSpec {
        kind: ServiceKind::Document,
        domain: Domain::Document,
        schema: options.schema,
        migrator: crate::migrator(),
        snapshot_every: 100,
    };
    let mut domain = DomainHost::connect(config, shutdown, spec).await?;
    // Without its store the service can still list and describe documents, but not one upload
    // or download: an operator must see it (the operations page, `/health/ready`).
    domain.host().health().add_check("object_store", objects.readiness());
    let local_root = match &config.objects.location {
        cim_runtime::config::ObjectLocation::Local(dir) => std::fs::canonicalize(dir).ok(),
        cim_runtime::config::ObjectLocation::S3 { .. } => None,
    };
    let content = ContentStore::new(&objects, config.document.max_content_bytes, local_root);
    let sweeper = Sweeper {
        pool: domain.pool.clone(),
        content: content.clone(),
        grace: config.document.gc_grace,
        interval: options.sweep_every,
    };
    let stop = domain.host().workers_shutdown();
    domain.host().spawn_worker("content sweeper", sweeper.run(stop));
    let executor = CommandExecutor::new(domain.store.clone(), "document").with_projection(DocumentProjection);
    let api = DocumentApi::new(executor, content);
    // Upload messages carry chunks of up to 4 MiB each (the default limit); an upload's total
    // size is CIM_DOCUMENT_MAX_CONTENT_BYTES.
    let server = domain
        .grpc_server()
        .add_service(DocumentServiceServer::new(api))
        .streaming_method("/cim.document.v1.DocumentService/UploadContent");
    domain.serve(server)
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("document", async move { prepare(config, &shutdown).await })
}
