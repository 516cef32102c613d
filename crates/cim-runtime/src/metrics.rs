//! The Prometheus recorder (one per process) and the metric names this crate emits.
//! Names follow `cim_<subsystem>_<what>_<unit>`; the service is a label so one dashboard panel
//! covers every service, in separate processes or in the monolith.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const GRPC_REQUESTS_TOTAL: &str = "cim_grpc_requests_total";
pub const GRPC_REQUEST_DURATION_SECONDS: &str = "cim_grpc_request_duration_seconds";
pub const GRPC_REQUESTS_IN_FLIGHT: &str = "cim_grpc_requests_in_flight";
pub const SERVICE_READY: &str = "cim_service_ready";
pub const DEPENDENCY_UP: &str = "cim_dependency_up";
pub const BUILD_INFO: &str = "cim_build_info";

/// Latency buckets from 250 µs to 10 s: RPCs here are mostly sub-millisecond to tens of ms.
const SECONDS_BUCKETS: &[f64] =
    &[0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Durations that include waiting on people, timers and other services, milliseconds to a
/// day: the workflow service's step attempts (`cim_workflow::metrics::STEP_DURATION`, named
/// here because the one recorder is built before any service describes its metrics).
const LONG_SECONDS: &[(&str, &[f64])] = &[(
    "cim_workflow_step_duration_seconds",
    &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0],
)];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder on first use and returns the handle `/metrics` renders.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // A full name's buckets win over the suffix's (the exporter tries full matchers first).
            let builder = LONG_SECONDS
                .iter()
                .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                    b.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            // Histograms keep samples until upkeep folds them; a thread avoids depending on a
            // particular tokio runtime being alive.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(GRPC_REQUESTS_TOTAL, "gRPC requests handled, by service, method and status code");
    metrics::describe_histogram!(
        GRPC_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "gRPC request duration until the response ended, by service, method and status code"
    );
    metrics::describe_gauge!(GRPC_REQUESTS_IN_FLIGHT, "gRPC requests being handled now, by service");
    metrics::describe_gauge!(SERVICE_READY, "1 while the service reports ready, by service");
    metrics::describe_gauge!(
        DEPENDENCY_UP,
        "1 while the service's readiness check of a dependency (postgres, nats) passes, by service and dependency"
    );
    metrics::describe_gauge!(BUILD_INFO, "Always 1; labels carry the version, by service");
}

/// Records the constant build-info series for `service`.
pub fn register_service(service: &str) {
    // The recorder must exist first, or the gauge goes to the no-op recorder and is lost.
    let _ = handle();
    metrics::gauge!(BUILD_INFO, "service" => service.to_owned(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
