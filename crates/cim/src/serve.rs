//! `cim serve`: the chosen services in one process, the same code as their own binaries.

use super::*;

/// The services of this build, in start order (domain services before the edges that call
/// them); the next service adds a line.
const SERVICES: &[(ServiceKind, cim_runtime::service::Prepare)] = &[
    (ServiceKind::Graph, cim_graph::app::service),
    (ServiceKind::Document, cim_document::app::service),
    (ServiceKind::Agent, cim_agent::app::service),
    (ServiceKind::Workflow, cim_workflow::app::service),
    (ServiceKind::Webhook, cim_webhook::app::service),
    (ServiceKind::Gateway, cim_gateway::app::service),
    (ServiceKind::Websocket, cim_websocket::app::service),
];

fn select(spec: &str) -> Result<Vec<ServiceKind>, String> {
    if spec.trim() == "all" {
        return Ok(SERVICES.iter().map(|(kind, _)| *kind).collect());
    }
    let mut chosen = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind: ServiceKind = name.parse()?;
        if !SERVICES.iter().any(|(k, _)| *k == kind) {
            let available: Vec<String> = SERVICES.iter().map(|(k, _)| k.to_string()).collect();
            return Err(format!("service {name} is not part of this build yet; available: {}", available.join(", ")));
        }
        if !chosen.contains(&kind) {
            chosen.push(kind);
        }
    }
    if chosen.is_empty() {
        return Err("--services: name at least one service, or all".into());
    }
    Ok(chosen)
}

pub(crate) async fn serve(spec: &str) -> ExitCode {
    let kinds = match select(spec) {
        Ok(k) => k,
        Err(e) => return fail(&format!("--services: {e}"), EXIT_CONFIG),
    };
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The edge services verify bearer tokens: without a key none could be, so say at once how
    // to get one, before anything starts. There is no fallback to the local development
    // secret here on purpose: a deployment that forgot its key must not start with it.
    let edge = kinds.iter().find(|k| matches!(k, ServiceKind::Gateway | ServiceKind::Websocket));
    if let Some(kind) = edge
        && !config.edge.auth.has_keys()
    {
        return fail(
            &format!(
                "{kind}: set CIM_JWT_HS256_SECRET, CIM_JWT_PUBLIC_KEY_FILE or CIM_JWT_JWKS_URL to verify bearer tokens \
                 (for local development scripts/up.sh does it; by hand: \
                 export CIM_JWT_HS256_SECRET=\"$(cat \"$(cim local-secret)\")\")"
            ),
            EXIT_CONFIG,
        );
    }
    let telemetry = match cim_runtime::telemetry::init("cim", &config) {
        Ok(t) => t,
        Err(e) => return fail(&e.to_string(), EXIT_CONFIG),
    };
    // The metrics recorder before the first service prepares: each exports its counters at zero
    // as it prepares, and what is recorded before the recorder exists is lost (`--services
    // agent` alone would lose the agent's).
    let _ = cim_runtime::metrics::handle();
    let shutdown = cim_runtime::Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        return fail(&format!("cannot install signal handlers: {e}"), 1);
    }
    let mut running = tokio::task::JoinSet::new();
    let count = kinds.len();
    for kind in kinds {
        let Some((_, prepare)) = SERVICES.iter().find(|(k, _)| *k == kind) else {
            return fail(&format!("service {kind} is not part of this build yet"), EXIT_CONFIG);
        };
        let service = match prepare(&config, shutdown.child()).await {
            Ok(service) => service,
            Err(e) => {
                shutdown.trigger();
                return fail(&e, 1);
            }
        };
        out(&service.describe());
        running.spawn(service.run());
    }
    // Services prepare one after another; scripts wait for this line rather than guess how many
    // lines to expect.
    out(&format!("cim: {count} service(s) serving"));
    let mut failed = false;
    while let Some(result) = running.join_next().await {
        if let Ok(Err(e)) | Err(e) = result.map_err(|e| e.to_string()) {
            tracing::error!(error = %e, "service stopped with an error");
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            failed = true;
            // One service down takes the process down: an orchestrator restarts it whole.
            shutdown.trigger();
        }
    }
    telemetry.flush();
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
