//! Wiring: the kit's domain host (Postgres schema `webhook`, event store, stream `CIM_WEBHOOK`,
//! relay, listeners) plus the webhook gRPC service and the delivery workers (an intake consumer
//! per domain stream, the sender).

use cim_aggregate::CommandExecutor;
use cim_aggregate::host::{DomainHost, DomainSpec, HostError};
use cim_core::Domain;
use cim_proto::webhook::webhook_service_server::WebhookServiceServer;
use cim_runtime::config::{Config, WebhookSettings};
use cim_runtime::{ServiceKind, Shutdown};

use crate::delivery::Delivery;
use crate::projection::SubscriptionProjection;
use crate::service::WebhookApi;
use crate::subscription::Subscription;

pub use cim_aggregate::host::Prepared;

pub type AppError = HostError;

/// What differs between deployments beyond `CIM_*` (tests use their own schema).
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub schema: String,
    pub settings: WebhookSettings,
}

/// Connects, migrates and binds. Nothing is served until [`Prepared::run`].
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    let options = WebhookOptions { schema: crate::SCHEMA.to_owned(), settings: config.webhook.clone() };
    prepare_with(config, shutdown, options).await
}

/// [`prepare`] with explicit options.
pub async fn prepare_with(config: &Config, shutdown: &Shutdown, options: WebhookOptions) -> Result<Prepared, AppError> {
    crate::metrics::describe();
    let spec = DomainSpec {
        kind: ServiceKind::Webhook,
        domain: Domain::Webhook,
        schema: options.schema,
        migrator: crate::migrator(),
        // Subscriptions have a handful of events.
        snapshot_every: 100,
    };
    let mut domain = DomainHost::connect(config, shutdown, spec).await?;
    let subscriptions =
        CommandExecutor::<Subscription>::new(domain.store.clone(), "webhook").with_projection(SubscriptionProjection);
    let delivery = Delivery::new(subscriptions.clone(), options.settings).map_err(HostError::Setup)?;
    let js = domain.jetstream.clone();
    delivery.start(domain.host(), js, config.subject_prefix.clone(), shutdown);
    let server = domain.grpc_server().add_service(WebhookServiceServer::new(WebhookApi::new(subscriptions, delivery)));
    domain.serve(server)
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("webhook", async move { prepare(config, &shutdown).await })
}
