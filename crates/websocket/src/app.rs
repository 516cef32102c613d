//! Wiring: configuration → token verifier → NATS and the domain streams → the live feeds → the
//! `/ws` listener and the admin listener. Used by the `cim-websocket` binary, the monolith
//! (`cim serve`) and the integration tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cim_auth::{AuthError, Verifier};
use cim_core::Domain;
use cim_runtime::config::Config;
use cim_runtime::tls::HttpListener;
use cim_runtime::{RuntimeError, ServiceHost, ServiceKind, Shutdown, bind, nats};
use tokio::net::TcpListener;

use crate::connection::{Settings, Shared};
use crate::feed::{Hub, HubError};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// A websocket server with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Prepared {
    host: ServiceHost,
    listener: HttpListener,
    admin: TcpListener,
    shared: Arc<Shared>,
    grace: Duration,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Connects and binds. Nothing is served until [`Prepared::run`].
pub async fn prepare(config: &Config, shutdown: &Shutdown) -> Result<Prepared, AppError> {
    // First: without keys no client could ever authenticate, which is a configuration error.
    let verifier = Verifier::from_settings(&config.edge.auth).await?;
    let listen = config.listen(ServiceKind::Websocket);
    let client = nats::connect(&nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-websocket".into(),
        connect_timeout: config.connect_timeout,
        security: config.nats_security.clone(),
    })
    .await?;
    let js = nats::jetstream(client.clone());
    let metrics = Metrics::new();
    let hub = Hub::open(js, config.subject_prefix.clone(), metrics.clone()).await?;

    let mut host = ServiceHost::new("websocket", shutdown, config.shutdown_grace);
    host.health().add_check("nats", nats::readiness(client));
    // Key files and the JWKS URL are read again while the server runs (rotation without restart).
    host.spawn_worker("jwt-keys", verifier.clone().run(host.workers_shutdown()));
    let listener = bind("websocket HTTP (CIM_WEBSOCKET_ADDR)", listen.addr).await?;
    let admin = bind("websocket admin (CIM_WEBSOCKET_ADMIN_ADDR)", listen.admin_addr).await?;
    let settings = Settings::from_config(&config.edge.websocket);
    // Tickets (the console's way in, `cim_auth::ticket`) are read from the gateway's Redis; not
    // a readiness check: tokens keep working without it, and a ticket then is refused.
    let redis = cim_runtime::redis::connect_lazy(&cim_runtime::redis::RedisSettings {
        url: config.redis_url.expose().to_owned(),
        max_size: 8,
        timeout: Duration::from_millis(500),
        tls: config.redis_tls.clone(),
    })?;
    let shared = Shared::new(hub, verifier, settings, metrics, shutdown.clone()).with_tickets(redis);
    let shared = Arc::new(shared);
    // wss:// with CIM_TLS_CERT_FILE: the certificate re-read when it changes.
    let tls = config.tls.http_server().map_err(RuntimeError::from)?;
    let listener = HttpListener::new(listener, tls).map_err(RuntimeError::from)?;
    Ok(Prepared {
        addr: listener.local_addr().map_err(RuntimeError::from)?,
        admin_addr: admin.local_addr().map_err(RuntimeError::from)?,
        host,
        listener,
        admin,
        shared,
        grace: config.shutdown_grace,
    })
}

impl Prepared {
    /// Serves until shutdown completes: sockets are closed with 1001 first, then the feeds stop,
    /// then the admin listener.
    pub async fn run(mut self) -> Result<(), AppError> {
        tracing::info!(addr = %self.addr, admin = %self.admin_addr, "websocket server listening");
        // Inside the host's own wait for this worker, so the drain is not cut off mid-way.
        let grace = self.grace.mul_f64(0.9);
        // Spawned first so the host waits for the sockets before the feeds.
        self.host.spawn_worker("websocket", crate::server::serve(self.listener, self.shared.clone(), grace));
        for domain in Domain::ALL {
            let feed = self.shared.hub.clone().run_feed(domain, self.host.workers_shutdown());
            self.host.spawn_worker(&format!("feed-{domain}"), feed);
        }
        self.host.run(self.admin, None).await?;
        Ok(())
    }
}

impl cim_runtime::service::Service for Prepared {
    fn describe(&self) -> String {
        let scheme = if self.listener.is_tls() { "wss" } else { "ws" };
        format!("websocket {scheme}://{}/ws  admin http://{}", self.addr, self.admin_addr)
    }

    fn run(self: Box<Self>) -> cim_runtime::service::BoxFuture<'static, Result<(), String>> {
        Box::pin(async move { Prepared::run(*self).await.map_err(|e| format!("websocket: {e}")) })
    }
}

/// This service for `cim serve`'s table ([`cim_runtime::service::Prepare`]).
pub fn service(
    config: &Config,
    shutdown: Shutdown,
) -> cim_runtime::service::BoxFuture<'_, Result<Box<dyn cim_runtime::service::Service>, String>> {
    cim_runtime::service::boxed("websocket", async move { prepare(config, &shutdown).await })
}
