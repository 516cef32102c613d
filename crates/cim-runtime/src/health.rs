//! Liveness and readiness. Ready means: not shutting down, and every dependency check answered
//! within its timeout. The same verdict drives `/health/ready` and the gRPC health service, so a
//! load balancer of either kind stops sending work at the same moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::metrics::{DEPENDENCY_UP, SERVICE_READY};

pub type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Each readiness check is also a gRPC health service of its own, `cim.dependency.<check>`
/// (SERVING while the check passes), so a caller holding only the service's gRPC channel (the
/// gateway's operations view) can say which dependency fails. The error text, which may name a
/// host, stays on `/health/ready`; this says only up or down, never a credential.
pub const DEPENDENCY_SERVICE_PREFIX: &str = "cim.dependency.";

/// The gRPC health service name of the readiness check `check`.
pub fn dependency_service(check: &str) -> String {
    format!("{DEPENDENCY_SERVICE_PREFIX}{check}")
}

#[derive(Clone)]
struct Check {
    name: &'static str,
    run: CheckFn,
}

#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    accepting: AtomicBool,
    checks: std::sync::RwLock<Vec<Check>>,
    reporter: HealthReporter,
    grpc_services: std::sync::RwLock<Vec<String>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").field("service", &self.inner.service).finish_non_exhaustive()
    }
}

/// One check's outcome, as shown by `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub service: String,
    pub ready: bool,
    pub shutting_down: bool,
    pub checks: Vec<CheckResult>,
}

impl Health {
    pub fn new(service: &str, reporter: HealthReporter) -> Self {
        Self {
            inner: Arc::new(Inner {
                service: service.to_owned(),
                accepting: AtomicBool::new(true),
                checks: Default::default(),
                reporter,
                grpc_services: Default::default(),
            }),
        }
    }

    pub fn service(&self) -> &str {
        &self.inner.service
    }

    pub(crate) fn reporter(&self) -> &HealthReporter {
        &self.inner.reporter
    }

    /// Adds a dependency check (Postgres, NATS, Redis, ...).
    pub fn add_check(&self, name: &'static str, run: CheckFn) {
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.push(Check { name, run });
        }
    }

    pub(crate) fn add_grpc_service(&self, name: &str) {
        if let Ok(mut names) = self.inner.grpc_services.write() {
            names.push(name.to_owned());
        }
    }

    /// Runs every check concurrently, each bounded by a timeout.
    pub async fn readiness(&self) -> Readiness {
        let checks = self.inner.checks.read().map(|c| c.clone()).unwrap_or_default();
        let results = futures::future::join_all(checks.into_iter().map(|c| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (c.run)()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            CheckResult { name: c.name, ok: outcome.is_ok(), error: outcome.err() }
        }))
        .await;
        // Per dependency as well as the overall verdict: an alert can then name the cause (NATS
        // down) instead of only its symptom (a service not ready), and inhibit the symptoms.
        for r in &results {
            metrics::gauge!(DEPENDENCY_UP, "service" => self.inner.service.clone(), "dependency" => r.name)
                .set(if r.ok { 1.0 } else { 0.0 });
        }
        let shutting_down = !self.inner.accepting.load(Ordering::Acquire);
        let ready = !shutting_down && results.iter().all(|r| r.ok);
        Readiness { service: self.inner.service.clone(), ready, shutting_down, checks: results }
    }

    /// First step of shutdown: report not-ready everywhere before anything stops.
    pub async fn mark_shutting_down(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        self.publish(false).await;
    }

    pub fn is_shutting_down(&self) -> bool {
        !self.inner.accepting.load(Ordering::Acquire)
    }

    async fn publish(&self, ready: bool) {
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        let names = self.inner.grpc_services.read().map(|n| n.clone()).unwrap_or_default();
        self.inner.reporter.set_service_status("", status).await;
        for name in names {
            self.inner.reporter.set_service_status(name, status).await;
        }
        metrics::gauge!(SERVICE_READY, "service" => self.inner.service.clone()).set(if ready { 1.0 } else { 0.0 });
    }

    /// Keeps the gRPC health status in step with the checks until shutdown.
    pub fn spawn_watch(&self, every: Duration, stop: crate::Shutdown) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut last_checks = std::collections::HashMap::new();
            loop {
                let readiness = this.readiness().await;
                let ready = readiness.ready;
                if this.is_shutting_down() {
                    break;
                }
                for check in &readiness.checks {
                    if last_checks.insert(check.name, check.ok) != Some(check.ok) {
                        let status = if check.ok { ServingStatus::Serving } else { ServingStatus::NotServing };
                        this.inner.reporter.set_service_status(dependency_service(check.name), status).await;
                    }
                }
                if last != Some(ready) {
                    if last.is_some() {
                        tracing::warn!(service = %this.inner.service, ready, "readiness changed");
                    }
                    this.publish(ready).await;
                    last = Some(ready);
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait() => break,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tonic::Request;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus as Answer};
    use tonic_health::server::{HealthReporter, HealthService};

    use super::*;

    /// Each readiness check is its own gRPC health service, up or down as the check is, and a
    /// name that is no check of this service is NOT_FOUND (what the gateway's operations view
    /// reads).
    #[tokio::test]
    async fn each_check_is_a_health_service_of_its_own() {
        let reporter = HealthReporter::new();
        let health = Health::new("probe", reporter.clone());
        health.add_check("postgres", Arc::new(|| Box::pin(async { Ok(()) })));
        health.add_check("nats", Arc::new(|| Box::pin(async { Err("connection refused".to_owned()) })));
        let stop = crate::Shutdown::new();
        let watch = health.spawn_watch(Duration::from_millis(20), stop.clone());
        let service = HealthService::from_health_reporter(reporter);
        let ask = |name: String| service.check(Request::new(HealthCheckRequest { service: name }));
        let mut answers = None;
        for _ in 0..100 {
            if let (Ok(pg), Ok(nats)) =
                (ask(dependency_service("postgres")).await, ask(dependency_service("nats")).await)
            {
                answers = Some((pg.into_inner().status, nats.into_inner().status));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(answers, Some((Answer::Serving as i32, Answer::NotServing as i32)));
        let unknown = ask(dependency_service("redis")).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        stop.trigger();
        watch.await.unwrap();
    }
}
