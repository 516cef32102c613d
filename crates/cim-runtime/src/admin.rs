//! The admin listener every service runs: `/metrics`, `/health/live`, `/health/ready`.
//! It stays up through the drain so probes see "not ready" and the last metrics can be scraped.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::health::Health;

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: PrometheusHandle,
}

pub fn router(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .with_state(AdminState { health, metrics })
}

async fn render_metrics(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let readiness = s.health.readiness().await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(readiness))
}

/// Serves the admin routes until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    metrics: PrometheusHandle,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health, metrics)).with_graceful_shutdown(stop).await
}
