//! `cim serve` (the monolith: chosen services in one process, same code as their binaries),
//! `cim config` and `cim doctor`. `cim migrate` and the operations commands join later.

use std::io::Write;
use std::process::ExitCode;

use cim_runtime::ServiceKind;
use cim_runtime::config::{Config, VARS};
use clap::{Parser, Subcommand};

/// Exit code for bad configuration (distinct from "a dependency is down").
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "cim", version, about = "CIM, the Composable Information Machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run services in this process: `all` or a comma-separated list (graph, ...).
    Serve {
        #[arg(long, default_value = "all")]
        services: String,
    },
    /// Print every CIM_* variable with its effective value (secrets redacted) and validate them.
    Config,
    /// Check configuration, Postgres, NATS JetStream and Redis; exit non-zero if any is broken.
    Doctor,
    /// Print an HS256 bearer token signed with CIM_JWT_HS256_SECRET (local development).
    Token {
        /// The tenant (a UUID); a new one when absent.
        #[arg(long)]
        tenant: Option<String>,
        /// Comma-separated roles: reader, writer, admin.
        #[arg(long, default_value = "admin")]
        roles: String,
        #[arg(long, default_value = "dev")]
        subject: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { services } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(serve(&services)),
            Err(e) => fail(&format!("cannot start the async runtime: {e}"), 1),
        },
        Command::Config => config(),
        Command::Token { tenant, roles, subject, ttl } => token(tenant, &roles, subject, ttl),
        Command::Doctor => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(doctor()),
            Err(e) => fail(&format!("cannot start the async runtime: {e}"), 1),
        },
    }
}

fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn fail(message: &str, code: u8) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "{message}");
    ExitCode::from(code)
}

/// Loads the configuration or explains, one line per bad variable, what is wrong.
fn load() -> Result<Config, ExitCode> {
    let unknown = Config::unknown_vars(std::env::vars().map(|(k, _)| k));
    for var in unknown {
        let _ = writeln!(std::io::stderr().lock(), "warning: {var} is set but no CIM component reads it (typo?)");
    }
    Config::from_env().map_err(|e| fail(&e.to_string(), EXIT_CONFIG))
}

fn config() -> ExitCode {
    let lookup = |k: &str| std::env::var(k).ok();
    let width = VARS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for (name, value, is_default) in Config::describe(&lookup) {
        let origin = if is_default { "default" } else { "set" };
        out(&format!("{name:width$}  {origin:7}  {value}"));
    }
    match load() {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, what: &str, outcome: Result<String, (String, &str)>) {
        match outcome {
            Ok(detail) => out(&format!("ok    {what:9} {detail}")),
            Err((error, fix)) => {
                self.failed = true;
                out(&format!("FAIL  {what:9} {error}\n      {:9} fix: {fix}", ""));
            }
        }
    }
}

async fn doctor() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut report = Report { failed: false };
    report.line("config", Ok(format!("{} variables valid", VARS.len())));

    let pg = cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
        url: config.database_url.expose().to_owned(),
        schema: "public".into(),
        max_connections: 1,
        connect_timeout: config.connect_timeout,
        application_name: "cim-doctor".into(),
    })
    .await;
    let pg = match pg {
        Ok(pool) => sqlx::query_scalar::<_, String>("SHOW server_version")
            .fetch_one(&pool)
            .await
            .map(|v| format!("{:?} answers (server {v})", config.database_url))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    report.line("postgres", pg.map_err(|e| (e, "start Postgres (scripts/infra.sh up) or fix CIM_DATABASE_URL")));

    let nats = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-doctor".into(),
        connect_timeout: config.connect_timeout,
    })
    .await;
    let nats = match nats {
        Ok(client) => match jetstream_streams(&client).await {
            Ok(streams) => Ok(format!("{} answers, JetStream on ({streams} streams)", config.nats_url)),
            Err(e) => Err((
                format!("{} answers but JetStream does not: {e}", config.nats_url),
                "start nats-server with -js (JetStream enabled)",
            )),
        },
        Err(e) => Err((e.to_string(), "start NATS with JetStream (scripts/infra.sh up) or fix CIM_NATS_URL")),
    };
    report.line("nats", nats);

    let redis = cim_runtime::redis::connect(&cim_runtime::redis::RedisSettings {
        url: config.redis_url.expose().to_owned(),
        max_size: 1,
        timeout: config.connect_timeout,
    })
    .await;
    report.line(
        "redis",
        redis
            .map(|_| format!("{:?} answers PING", config.redis_url))
            .map_err(|e| (e.to_string(), "start Redis (scripts/infra.sh up) or fix CIM_REDIS_URL")),
    );

    if report.failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Asks JetStream for the account's stream count. A raw `$JS.API.INFO` request rather than
/// async-nats' `query_account`, whose response type needs fields NATS 2.9 does not send.
async fn jetstream_streams(client: &async_nats::Client) -> Result<u64, String> {
    let reply = tokio::time::timeout(std::time::Duration::from_secs(3), client.request("$JS.API.INFO", "".into()))
        .await
        .map_err(|_| "no answer within 3s".to_owned())?
        .map_err(|e| e.to_string())?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    if let Some(err) = info.get("error") {
        return Err(err.get("description").and_then(|d| d.as_str()).unwrap_or("error").to_owned());
    }
    info.get("streams").and_then(serde_json::Value::as_u64).ok_or_else(|| format!("unexpected reply {info}"))
}

fn token(tenant: Option<String>, roles: &str, subject: String, ttl: u64) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(secret) = &config.edge.auth.hs256_secret else {
        return fail("CIM_JWT_HS256_SECRET is not set", EXIT_CONFIG);
    };
    let tenant = tenant.unwrap_or_else(|| cim_core::TenantId::new().to_string());
    let claims = cim_auth::Claims {
        sub: subject,
        tenant,
        roles: roles.split(',').map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect(),
        exp: cim_auth::now_secs() + ttl,
        iss: config.edge.auth.issuer.clone(),
        aud: config.edge.auth.audience.clone(),
    };
    match cim_auth::issue_hs256(secret.expose(), &claims) {
        Ok(t) => {
            out(&t);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 1),
    }
}

/// The services this build can run.
const AVAILABLE: &[ServiceKind] = &[ServiceKind::Graph, ServiceKind::Gateway];

fn select(spec: &str) -> Result<Vec<ServiceKind>, String> {
    if spec.trim() == "all" {
        return Ok(AVAILABLE.to_vec());
    }
    let mut chosen = Vec::new();
    for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind: ServiceKind = name.parse()?;
        if !AVAILABLE.contains(&kind) {
            return Err(format!("service {name} is not part of this build yet; available: graph, gateway"));
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

async fn serve(spec: &str) -> ExitCode {
    let kinds = match select(spec) {
        Ok(k) => k,
        Err(e) => return fail(&format!("--services: {e}"), EXIT_CONFIG),
    };
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let telemetry = match cim_runtime::telemetry::init("cim", &config) {
        Ok(t) => t,
        Err(e) => return fail(&e.to_string(), EXIT_CONFIG),
    };
    let shutdown = cim_runtime::Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        return fail(&format!("cannot install signal handlers: {e}"), 1);
    }
    let mut running = tokio::task::JoinSet::new();
    for kind in kinds {
        match kind {
            ServiceKind::Graph => {
                let prepared = match cim_graph::app::prepare(&config, &shutdown.child()).await {
                    Ok(p) => p,
                    Err(e) => {
                        shutdown.trigger();
                        return fail(&format!("graph: {e}"), 1);
                    }
                };
                out(&format!("graph     gRPC {}  admin http://{}", prepared.grpc_addr, prepared.admin_addr));
                running.spawn(async move { prepared.run().await.map_err(|e| format!("graph: {e}")) });
            }
            ServiceKind::Gateway => {
                let prepared = match cim_gateway::app::prepare(&config, &shutdown.child()).await {
                    Ok(p) => p,
                    Err(e) => {
                        shutdown.trigger();
                        return fail(&format!("gateway: {e}"), 1);
                    }
                };
                out(&format!("gateway   http://{}  admin http://{}", prepared.addr, prepared.admin_addr));
                running.spawn(async move { prepared.run().await.map_err(|e| format!("gateway: {e}")) });
            }
            other => return fail(&format!("service {other} is not part of this build yet"), EXIT_CONFIG),
        }
    }
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
