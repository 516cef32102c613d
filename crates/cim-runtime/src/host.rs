//! One service's lifecycle: admin listener up first, then the service, and on shutdown the
//! ordered sequence: not-ready -> stop accepting -> drain with a deadline -> stop background
//! workers -> stop the admin listener. The binary flushes telemetry after every host returned.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::RuntimeError;
use crate::grpc::GrpcServer;
use crate::health::Health;
use crate::shutdown::Shutdown;

/// Binds a listener, naming what it is for in the error.
pub async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr).await.map_err(|source| RuntimeError::Bind { what: what.to_owned(), addr, source })
}

#[derive(Debug)]
pub struct ServiceHost {
    name: &'static str,
    health: Health,
    shutdown: Shutdown,
    workers_stop: Shutdown,
    workers: Vec<(String, JoinHandle<()>)>,
    grace: Duration,
}

impl ServiceHost {
    /// `shutdown` is the process-wide signal (or a child of it).
    pub fn new(name: &'static str, shutdown: &Shutdown, grace: Duration) -> Self {
        crate::metrics::register_service(name);
        Self {
            name,
            health: Health::new(name, tonic_health::server::HealthReporter::new()),
            shutdown: shutdown.clone(),
            workers_stop: Shutdown::new(),
            workers: Vec::new(),
            grace,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Fires after the front door has drained: background loops (relays, consumers) watch it so
    /// work accepted during the drain still gets published.
    pub fn workers_shutdown(&self) -> Shutdown {
        self.workers_stop.clone()
    }

    pub fn spawn_worker(&mut self, name: &str, work: impl Future<Output = ()> + Send + 'static) {
        self.workers.push((name.to_owned(), tokio::spawn(work)));
    }

    /// Runs until shutdown completes.
    pub async fn run(self, admin: TcpListener, grpc: Option<(TcpListener, GrpcServer)>) -> Result<(), RuntimeError> {
        let admin_stop = Shutdown::new();
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            self.health.clone(),
            crate::metrics::handle(),
            admin_stop.wait_owned(),
        ));
        let watch = self.health.spawn_watch(Duration::from_secs(2), self.shutdown.clone());

        let served = match grpc {
            Some((listener, server)) => {
                server.serve(listener, self.health.clone(), self.shutdown.clone(), self.grace).await
            }
            None => {
                self.shutdown.wait().await;
                self.health.mark_shutting_down().await;
                Ok(())
            }
        };

        self.workers_stop.trigger();
        for (name, handle) in self.workers {
            if tokio::time::timeout(self.grace, handle).await.is_err() {
                tracing::warn!(service = self.name, worker = %name, "worker did not stop within the grace period");
            }
        }
        watch.abort();
        admin_stop.trigger();
        match admin_task.await {
            Ok(Err(e)) => tracing::warn!(service = self.name, error = %e, "admin listener failed"),
            Err(e) => tracing::warn!(service = self.name, error = %e, "admin listener panicked"),
            Ok(Ok(())) => {}
        }
        tracing::info!(service = self.name, "stopped");
        served
    }
}
