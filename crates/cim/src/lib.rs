//! `cim config` and `cim doctor` today; `cim serve`, `cim migrate` and the operations commands
//! join as the services that back them land.

use std::io::Write;
use std::process::ExitCode;

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
    /// Print every CIM_* variable with its effective value (secrets redacted) and validate them.
    Config,
    /// Check configuration, Postgres, NATS JetStream and Redis; exit non-zero if any is broken.
    Doctor,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config => config(),
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
