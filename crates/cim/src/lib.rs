//! `cim serve` (the monolith: chosen services in one process, same code as their binaries),
//! `cim config`, `cim doctor`, `cim verify`, and for local development `cim token` and
//! `cim local-secret`; backup and recovery: `cim backup`, `cim restore`, `cim replay`, `cim streams rebuild`;
//! `cim webhooks replay` (dead-lettered webhook deliveries back in the queue).

mod backup;
mod doctor;
mod local;
mod progress;
mod replay;
mod restore;
mod serve;
mod streams;
mod token;
mod verify;
mod wake;
mod webhooks;

pub use backup::BackupArgs;
pub use restore::RestoreArgs;

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
enum StreamsCommand {
    /// Publish again, from Postgres and in order, the events a domain's stream lacks (the
    /// stream is created if it is gone), with their original message ids: consumers that saw
    /// an event already apply nothing twice.
    Rebuild {
        #[arg(long)]
        domain: String,
    },
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Put a subscription's dead-lettered deliveries back in the queue with a fresh retry budget
    /// (the webhook service sends them again; a replayed event goes out after later events of its
    /// aggregate that were delivered meanwhile).
    Replay {
        /// The subscription's id.
        #[arg(long)]
        subscription: String,
        /// One dead-lettered event's id; all of the subscription's when absent.
        #[arg(long)]
        event: Option<String>,
    },
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
    /// Check configuration, Postgres (schemas migrated), NATS JetStream (streams, consumers and
    /// their lag, dead letters), Redis and the object store; exit non-zero if any is broken.
    Doctor {
        /// Before the services' first start (what `scripts/up.sh` runs): a schema or stream not
        /// created yet is fine, since each service creates its own when it starts.
        #[arg(long)]
        before_start: bool,
    },
    /// Verify the hash chain of every aggregate each domain service stored: each event against
    /// its payload exactly as stored. Exit 1 naming every aggregate whose history does not hold.
    Verify {
        /// Only this domain service (graph, ...).
        #[arg(long, visible_alias = "domain")]
        service: Option<String>,
        /// Only this aggregate (its id), searched in every domain unless one is named.
        #[arg(long)]
        aggregate: Option<String>,
    },
    /// Back up every domain's events (and the rows events cannot rebuild) to a directory or
    /// s3://bucket/prefix: compressed segments and a manifest, at one consistent cut while the
    /// services keep writing. Incremental from the latest backup there; an interrupted backup
    /// run again skips the segments it already wrote. Each completed backup is recorded in the
    /// schemas it covers (`<schema>.backups`), which the services export for CimBackupStale.
    Backup {
        #[arg(long)]
        to: String,
        /// Start from the first event instead of the latest backup's cut (a new chain).
        #[arg(long)]
        full: bool,
        /// Start a new chain (a full backup) when the latest one started at least this long ago
        /// (`1d`, `12h`, `7days`); incremental otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        full_every: Option<std::time::Duration>,
        /// After the backup, keep the newest N chains (a full backup and its incrementals) and
        /// delete older manifests, table copies and the segments no kept backup names.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        /// Events per segment.
        #[arg(long, default_value_t = 50_000)]
        segment_events: i64,
    },
    /// Restore a backup into an empty database: events imported, every chain verified against
    /// the manifest, projections rebuilt, streams given the events they lack. A corrupted or
    /// incomplete backup is refused, naming the segment, and nothing is restored.
    Restore {
        #[arg(long)]
        from: String,
        /// The backup's id (manifests/<id>.json); the newest when absent.
        #[arg(long)]
        backup: Option<String>,
        /// Do not touch the streams (run `cim streams rebuild` later).
        #[arg(long)]
        no_streams: bool,
    },
    /// Rebuild a domain's projections from its events without downtime: built beside the live
    /// tables, swapped in (writers pause for the events appended meanwhile), the old dropped.
    Replay {
        #[arg(long)]
        domain: String,
    },
    /// JetStream operations.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Webhook operations.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Print an HS256 bearer token (local development), signed with CIM_JWT_HS256_SECRET or, when
    /// neither it nor CIM_JWT_PUBLIC_KEY_FILE is set, with the local secret `scripts/up.sh` made.
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
    /// Start a service's command whenever work waits for it (the serverless pattern on one
    /// machine, as KEDA does in a cluster): `cim wake --service webhook -- cim serve --services
    /// webhook`, with CIM_WEBHOOK_IDLE_EXIT_SECS so that it exits again when idle.
    Wake {
        /// The service: webhook.
        #[arg(long)]
        service: String,
        /// How often to look for work, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// The command that runs the service, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the metadata a program sends when it calls a domain service directly (an agent
    /// worker's `ConnectAgent`, grpcurl) while the services check caller signatures
    /// (CIM_SERVICE_TOKEN_SECRET): `x-cim-tenant`, `x-cim-actor`, `x-cim-roles` and
    /// `x-cim-caller-signature`, one `name: value` per line (grpcurl's `-H` form).
    ServiceToken {
        /// The tenant (a UUID).
        #[arg(long)]
        tenant: String,
        /// Who acts: `service:<name>` or `user:<name>`.
        #[arg(long, default_value = "service:worker")]
        actor: String,
        /// Comma-separated roles: reader, writer, admin (with the roles they imply).
        #[arg(long, default_value = "")]
        roles: String,
        /// Lifetime in seconds, at most 31 days.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Make this user's development signing secret unless it exists (random, mode 0600, in
    /// CIM_DATA_DIR) and print its path. `scripts/up.sh` runs it and hands the secret to the
    /// services in CIM_JWT_HS256_SECRET; never use it for a deployment.
    LocalSecret,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { services } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(serve::serve(&services)),
            Err(e) => fail(&format!("cannot start the async runtime: {e}"), 1),
        },
        Command::Config => config(),
        Command::Token { tenant, roles, subject, ttl } => token::token(tenant, &roles, subject, ttl),
        Command::LocalSecret => token::local_secret(),
        Command::Wake { service, interval_ms, command } => {
            block_on(wake::wake(&service, std::time::Duration::from_millis(interval_ms.max(50)), &command))
        }
        Command::ServiceToken { tenant, actor, roles, ttl } => token::service_token(&tenant, &actor, &roles, ttl),
        Command::Doctor { before_start } => block_on(doctor::doctor(before_start)),
        Command::Verify { service, aggregate } => block_on(verify::verify(service.as_deref(), aggregate.as_deref())),
        Command::Backup { to, full, full_every, keep, segment_events } => {
            let keep = keep.map(|k| k as usize);
            let args = BackupArgs { to, full, full_every, keep, segment_events: segment_events.max(1) };
            block_on(operation("backup failed", |config| async move { backup::backup(&config, &args).await }))
        }
        Command::Restore { from, backup, no_streams } => {
            let args = RestoreArgs { from, backup, no_streams };
            block_on(operation("restore failed", |config| async move { restore::restore(&config, &args).await }))
        }
        Command::Replay { domain } => {
            block_on(operation("replay failed", |config| async move { replay::replay(&config, &domain).await }))
        }
        Command::Streams { command: StreamsCommand::Rebuild { domain } } => block_on(streams::run(&domain)),
        Command::Webhooks { command: WebhooksCommand::Replay { subscription, event } } => {
            block_on(operation("webhook replay failed", |config| async move {
                webhooks::replay(&config, &subscription, event.as_deref()).await
            }))
        }
    }
}

fn block_on(run: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run),
        Err(e) => fail(&format!("cannot start the async runtime: {e}"), 1),
    }
}

/// Runs an operation that needs the configuration: its summary on stdout and exit 0, or its
/// error on stderr after `failed` and exit 1 (2 for bad configuration).
async fn operation<F, Fut>(failed: &str, op: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match op(config).await {
        Ok(summary) => {
            out(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("{failed}: {e}"), 1),
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
    for line in Config::describe(&lookup) {
        let (name, origin) = (line.name, line.origin.as_str());
        out(format!("{name:width$}  {origin:7}  {}", line.shown.unwrap_or_default()).trim_end());
    }
    match load() {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// A domain service as doctor expects to find it: its schema with the migrations its code
/// applies there, and its JetStream stream.
struct DomainService {
    name: &'static str,
    domain: cim_core::Domain,
    schema: &'static str,
    migrations: fn() -> Vec<sqlx::migrate::Migrator>,
    /// Its projections, as a rebuild runs them over the whole history.
    projector: fn() -> Box<dyn cim_eventstore::Projector>,
    /// Tables besides the event store's that events cannot rebuild, in the order a restore
    /// fills them (backed up whole, with the idempotency keys).
    kept: &'static [&'static str],
}

/// The domain services of this build; the next domain adds a line.
const DOMAIN_SERVICES: &[DomainService] = &[
    DomainService {
        name: "graph",
        domain: cim_core::Domain::Graph,
        schema: cim_graph::SCHEMA,
        migrations: graph_migrations,
        projector: || Box::new(cim_graph::projection::GraphProjection),
        kept: &[],
    },
    DomainService {
        name: "document",
        domain: cim_core::Domain::Document,
        schema: cim_document::SCHEMA,
        migrations: document_migrations,
        projector: || Box::new(cim_aggregate::Projected(cim_document::projection::DocumentProjection)),
        // Content records are written by uploads, not events (their bytes stay in the object
        // store, which is backed up on its own); versions reference them.
        kept: &["content_blobs", "content_text"],
    },
    DomainService {
        name: "agent",
        domain: cim_core::Domain::Agent,
        schema: cim_agent::SCHEMA,
        migrations: agent_migrations,
        projector: || {
            Box::new(cim_aggregate::ByAggregateType(vec![
                (
                    cim_agent::agent::AGGREGATE_TYPE,
                    Box::new(cim_aggregate::Projected(cim_agent::projection::AgentProjection)),
                ),
                (
                    cim_agent::task::AGGREGATE_TYPE,
                    Box::new(cim_aggregate::Projected(cim_agent::projection::TaskProjection)),
                ),
            ]))
        },
        kept: &[],
    },
    DomainService {
        name: "workflow",
        domain: cim_core::Domain::Workflow,
        schema: cim_workflow::SCHEMA,
        migrations: workflow_migrations,
        // The engine's due-work rows are projected from the instance events, so a replay
        // rebuilds them with the instances.
        projector: || {
            Box::new(cim_aggregate::ByAggregateType(vec![
                (
                    cim_workflow::definition::AGGREGATE_TYPE,
                    Box::new(cim_aggregate::Projected(cim_workflow::projection::DefinitionProjection)),
                ),
                (
                    cim_workflow::instance::AGGREGATE_TYPE,
                    Box::new(cim_aggregate::Projected(cim_workflow::projection::WorkflowProjection)),
                ),
            ]))
        },
        kept: &[],
    },
    DomainService {
        name: "webhook",
        domain: cim_core::Domain::Webhook,
        schema: cim_webhook::SCHEMA,
        migrations: webhook_migrations,
        projector: || Box::new(cim_aggregate::Projected(cim_webhook::projection::SubscriptionProjection)),
        // Signing secrets are never in events (they would be published and kept forever), and the
        // delivery queue is written by the intake from other domains' streams, not by this
        // schema's events: both are backed up whole.
        kept: &["webhook_secrets", "webhook_deliveries"],
    },
];

fn graph_migrations() -> Vec<sqlx::migrate::Migrator> {
    // The directory cim_eventstore::migrator() embeds, named by path so that `cim` need not
    // depend on the event store crate for this list alone.
    vec![sqlx::migrate!("../cim-eventstore/migrations"), cim_graph::migrator()]
}

fn document_migrations() -> Vec<sqlx::migrate::Migrator> {
    vec![sqlx::migrate!("../cim-eventstore/migrations"), cim_document::migrator()]
}

fn agent_migrations() -> Vec<sqlx::migrate::Migrator> {
    vec![sqlx::migrate!("../cim-eventstore/migrations"), cim_agent::migrator()]
}

fn workflow_migrations() -> Vec<sqlx::migrate::Migrator> {
    vec![sqlx::migrate!("../cim-eventstore/migrations"), cim_workflow::migrator()]
}

fn webhook_migrations() -> Vec<sqlx::migrate::Migrator> {
    vec![sqlx::migrate!("../cim-eventstore/migrations"), cim_webhook::migrator()]
}
