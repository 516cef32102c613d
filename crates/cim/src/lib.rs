//! `cim serve` (the monolith: chosen services in one process, same code as their binaries),
//! `cim config`, `cim doctor`, `cim verify`, and for local development `cim token` and
//! `cim local-secret`. `cim migrate` and the other operations commands join later.

mod local;

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
        #[arg(long)]
        service: Option<String>,
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
    /// Make this user's development signing secret unless it exists (random, mode 0600, in
    /// CIM_DATA_DIR) and print its path. `scripts/up.sh` runs it and hands the secret to the
    /// services in CIM_JWT_HS256_SECRET; never use it for a deployment.
    LocalSecret,
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
        Command::LocalSecret => local_secret(),
        Command::Doctor { before_start } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(doctor(before_start)),
            Err(e) => fail(&format!("cannot start the async runtime: {e}"), 1),
        },
        Command::Verify { service } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(verify(service.as_deref())),
            Err(e) => fail(&format!("cannot start the async runtime: {e}"), 1),
        },
    }
}

/// `cim verify`: every aggregate of every (or one) domain service's schema.
async fn verify(only: Option<&str>) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let services: Vec<&DomainService> = DOMAIN_SERVICES.iter().filter(|s| only.is_none_or(|o| o == s.name)).collect();
    if services.is_empty() {
        let names: Vec<&str> = DOMAIN_SERVICES.iter().map(|s| s.name).collect();
        return fail(&format!("--service: expected one of {}", names.join(", ")), EXIT_CONFIG);
    }
    let mut broken = 0;
    for service in services {
        let pool = cim_runtime::postgres::connect(&cim_runtime::postgres::PgSettings {
            url: config.database_url.expose().to_owned(),
            schema: service.schema.into(),
            max_connections: 2,
            connect_timeout: config.connect_timeout,
            application_name: "cim-verify".into(),
        })
        .await;
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => return fail(&format!("postgres: {e}"), 1),
        };
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'events')",
        )
        .bind(service.schema)
        .fetch_one(&pool)
        .await;
        match exists {
            Ok(true) => {}
            Ok(false) => {
                out(&format!("{}: schema {} has no events yet; nothing to verify", service.name, service.schema));
                continue;
            }
            Err(e) => return fail(&format!("postgres: {e}"), 1),
        }
        let store = cim_eventstore::EventStore::open(
            pool,
            cim_eventstore::StoreConfig {
                domain: service.domain,
                schema: service.schema.to_owned(),
                snapshot_every: u64::MAX,
                upcasters: cim_core::Upcasters::new(),
            },
        )
        .await;
        let report = match store {
            Ok(store) => store.verify_all().await,
            Err(e) => Err(e),
        };
        match report {
            Ok(report) => {
                for b in &report.broken {
                    out(&format!(
                        "{}: BROKEN aggregate {} (tenant {}): {}",
                        service.name, b.aggregate, b.tenant, b.why
                    ));
                }
                broken += report.broken.len();
                out(&format!(
                    "{}: {} aggregates, {} events verified; {} broken",
                    service.name,
                    report.aggregates,
                    report.events,
                    report.broken.len()
                ));
            }
            Err(e) => return fail(&format!("{}: {e}", service.name), 1),
        }
    }
    if broken == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
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

/// One line per check: `ok`, `FAIL` (with what to do about it) or `skip` (a dependency it needs
/// already failed). Any `FAIL` makes doctor exit non-zero.
struct Report {
    checks: usize,
    failed: Vec<String>,
}

impl Report {
    fn line(&mut self, what: &str, outcome: Result<String, (String, &str)>) {
        self.checks += 1;
        match outcome {
            Ok(detail) => out(&format!("ok    {what:9} {detail}")),
            Err((error, fix)) => {
                self.failed.push(what.to_owned());
                out(&format!("FAIL  {what:9} {error}\n      {:9} fix: {fix}", ""));
            }
        }
    }

    fn fail(&mut self, what: &str, error: String, fix: &str) {
        self.line(what, Err((error, fix)));
    }

    fn skip(&mut self, what: &str, why: &str) {
        out(&format!("skip  {what:9} {why}"));
    }

    fn finish(self) -> ExitCode {
        out("");
        if self.failed.is_empty() {
            out(&format!("doctor: all {} checks passed", self.checks));
            ExitCode::SUCCESS
        } else {
            out(&format!("doctor: {} of {} checks failed: {}", self.failed.len(), self.checks, self.failed.join(", ")));
            ExitCode::FAILURE
        }
    }
}

/// A domain service as doctor expects to find it: its schema with the migrations its code
/// applies there, and its JetStream stream.
struct DomainService {
    name: &'static str,
    domain: cim_core::Domain,
    schema: &'static str,
    migrations: fn() -> Vec<sqlx::migrate::Migrator>,
}

/// The domain services of this build; the next domain adds a line.
const DOMAIN_SERVICES: &[DomainService] = &[
    DomainService {
        name: "graph",
        domain: cim_core::Domain::Graph,
        schema: cim_graph::SCHEMA,
        migrations: graph_migrations,
    },
    DomainService {
        name: "document",
        domain: cim_core::Domain::Document,
        schema: cim_document::SCHEMA,
        migrations: document_migrations,
    },
    DomainService {
        name: "agent",
        domain: cim_core::Domain::Agent,
        schema: cim_agent::SCHEMA,
        migrations: agent_migrations,
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

/// A consumer this many messages behind fails the check (the CimConsumerLagHigh threshold).
const LAG_LIMIT: u64 = 1000;

async fn doctor(before_start: bool) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut report = Report { checks: 0, failed: Vec::new() };
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
        Ok(pool) => match sqlx::query_scalar::<_, String>("SHOW server_version").fetch_one(&pool).await {
            Ok(v) => Ok((pool, v)),
            Err(e) => Err((e.to_string(), POSTGRES_FIX)),
        },
        Err(e) => Err((e.to_string(), postgres_fix(&e))),
    };
    match pg {
        Ok((pool, v)) => {
            report.line("postgres", Ok(format!("{:?} answers (server {v})", config.database_url)));
            for service in DOMAIN_SERVICES {
                check_schema(&mut report, &pool, service, before_start).await;
            }
        }
        Err((e, fix)) => {
            report.fail("postgres", e, fix);
            for service in DOMAIN_SERVICES {
                report.skip("schema", &format!("{}: Postgres unreachable", service.schema));
            }
        }
    }

    let nats = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: config.nats_url.clone(),
        client_name: "cim-doctor".into(),
        connect_timeout: config.connect_timeout,
    })
    .await;
    // The NATS URLs without their passwords, for the report.
    let nats_at = cim_runtime::config::redact_urls(&config.nats_url);
    match nats {
        Ok(client) => match js_api(&client, "$JS.API.INFO", "").await {
            Ok(info) => {
                let count = |k: &str| info.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                let detail = format!(
                    "{nats_at} answers, JetStream on ({} streams, {} consumers)",
                    count("streams"),
                    count("consumers")
                );
                report.line("nats", Ok(detail));
                for service in DOMAIN_SERVICES {
                    check_stream(&mut report, &client, &config.subject_prefix, service, before_start).await;
                }
                check_dead_letters(&mut report, &client, &config.subject_prefix).await;
            }
            Err(e) => {
                report.fail(
                    "nats",
                    format!("{nats_at} answers but JetStream does not: {e}"),
                    "start nats-server with -js (JetStream enabled)",
                );
                report.skip("stream", "JetStream unavailable");
            }
        },
        Err(e) => {
            report.fail("nats", e.to_string(), "start NATS with JetStream (scripts/infra.sh up) or fix CIM_NATS_URL");
            report.skip("stream", "NATS unreachable");
        }
    }

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

    check_objects(&mut report, &config).await;
    report.finish()
}
const POSTGRES_FIX: &str = "start Postgres (scripts/infra.sh up) or fix CIM_DATABASE_URL";

/// What to do about a failed connection, by what the server said.
fn postgres_fix(e: &cim_runtime::RuntimeError) -> &'static str {
    let cim_runtime::RuntimeError::Postgres { source, .. } = e else {
        return POSTGRES_FIX;
    };
    match source {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => "create the database (createdb), or fix the database name in CIM_DATABASE_URL",
            Some(c) if c.starts_with("28") => {
                "fix the user or password in CIM_DATABASE_URL, or let that user in (pg_hba.conf, CREATE ROLE)"
            }
            _ => POSTGRES_FIX,
        },
        sqlx::Error::Io(io) if io.to_string().contains("lookup address") => "fix the host name in CIM_DATABASE_URL",
        _ => POSTGRES_FIX,
    }
}

/// The object store takes a write, gives it back unchanged and deletes it.
async fn check_objects(report: &mut Report, config: &Config) {
    let fix = match config.objects.location {
        cim_runtime::config::ObjectLocation::Local(_) => {
            "make the directory writable by this user, or point CIM_OBJECT_STORE_URL elsewhere"
        }
        cim_runtime::config::ObjectLocation::S3 { .. } => {
            "start the S3 server (MinIO), create the bucket (compose: minio-init; k8s: the minio-buckets Job), or fix CIM_OBJECT_STORE_URL, CIM_S3_ENDPOINT and the CIM_S3_* credentials"
        }
    };
    let outcome = match cim_objects::Objects::open(&config.objects, config.connect_timeout) {
        Ok(objects) => objects.probe().await.map(|p| {
            format!(
                "{} takes writes ({} bytes put, read back and deleted in {} ms)",
                objects.describe(),
                p.bytes,
                p.elapsed.as_millis()
            )
        }),
        Err(e) => Err(e),
    };
    // S3 errors carry the server's XML body over several lines: one line, bounded, for the report.
    let one_line = |e: cim_objects::ObjectsError| {
        let mut text = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        if text.len() > 600 {
            let mut end = 600;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        (text, fix)
    };
    report.line("objects", outcome.map_err(one_line));
}

/// The schema exists and every migration the code embeds for it is applied, successfully and
/// unchanged. Versions applied by a newer build are reported, not failed: `set_ignore_missing`
/// lets an older binary run against them.
async fn check_schema(report: &mut Report, pool: &sqlx::PgPool, service: &DomainService, before_start: bool) {
    let schema = service.schema;
    let start = format!(
        "start the {0} service once: it creates and migrates schema {schema} (cim serve --services {0})",
        service.name
    );
    let exists = sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await;
    match exists {
        Ok(true) => {}
        Ok(false) if before_start => {
            let created = format!("{schema}: not created yet; the {} service creates it when it starts", service.name);
            return report.line("schema", Ok(created));
        }
        Ok(false) => return report.fail("schema", format!("{schema}: does not exist"), &start),
        Err(e) => return report.fail("schema", format!("{schema}: {e}"), "check the database user's privileges"),
    }
    let table = format!("{schema}._sqlx_migrations");
    let has_table =
        sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text").bind(&table).fetch_one(pool).await;
    match has_table {
        Ok(Some(_)) => {}
        Ok(None) => {
            return report.fail("schema", format!("{schema}: exists but was never migrated (no {table})"), &start);
        }
        Err(e) => return report.fail("schema", format!("{schema}: {e}"), "check the database user's privileges"),
    }
    // `table` is built from a constant of this build, not from input.
    let sql = format!("SELECT version, success, checksum FROM {table} ORDER BY version");
    let applied = sqlx::query_as::<_, (i64, bool, Vec<u8>)>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await;
    let applied = match applied {
        Ok(rows) => rows,
        Err(e) => {
            return report.fail(
                "schema",
                format!("{schema}: cannot read {table}: {e}"),
                "grant the database user SELECT on it",
            );
        }
    };
    let expected: Vec<(i64, String, Vec<u8>)> = (service.migrations)()
        .iter()
        .flat_map(|m| m.iter())
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.description.to_string(), m.checksum.to_vec()))
        .collect();
    let name = |v: i64| expected.iter().find(|e| e.0 == v).map_or_else(|| v.to_string(), |e| format!("{v} ({})", e.1));
    let dirty: Vec<String> = applied.iter().filter(|a| !a.1).map(|a| name(a.0)).collect();
    if !dirty.is_empty() {
        let fix = format!(
            "find the error in the service's log, repair the schema by hand, delete the row from {table}, restart the service"
        );
        return report.fail("schema", format!("{schema}: migration {} failed part-way", dirty.join(", ")), &fix);
    }
    let missing: Vec<String> =
        expected.iter().filter(|e| !applied.iter().any(|a| a.0 == e.0)).map(|e| name(e.0)).collect();
    if !missing.is_empty() {
        let error =
            format!("{schema}: {} of {} migrations not applied: {}", missing.len(), expected.len(), missing.join(", "));
        return report.fail("schema", error, &start);
    }
    let changed: Vec<String> =
        expected.iter().filter(|e| applied.iter().any(|a| a.0 == e.0 && a.2 != e.2)).map(|e| name(e.0)).collect();
    if !changed.is_empty() {
        return report.fail(
            "schema",
            format!("{schema}: migration {} differs from what was applied", changed.join(", ")),
            "an applied migration was edited: restore its original file and add a new migration instead",
        );
    }
    let newer = applied.iter().filter(|a| !expected.iter().any(|e| e.0 == a.0)).count();
    let latest = expected.iter().map(|e| e.0).max().unwrap_or(0);
    let mut detail = format!("{schema}: {} migrations applied, up to date (latest {latest})", expected.len());
    if newer > 0 {
        detail.push_str(&format!("; {newer} more from a newer build"));
    }
    report.line("schema", Ok(detail));
}

/// The domain's stream exists and captures the domain's subjects; then each of its consumers
/// with its lag.
async fn check_stream(
    report: &mut Report,
    client: &async_nats::Client,
    prefix: &cim_core::SubjectPrefix,
    service: &DomainService,
    before_start: bool,
) {
    let stream = prefix.stream_name(service.domain);
    let subjects = prefix.domain_events(service.domain);
    let info = match js_api(client, &format!("$JS.API.STREAM.INFO.{stream}"), "").await {
        Ok(info) => info,
        Err(e) if before_start && e.contains("not found") => {
            let created = format!("{stream}: not created yet; the {} service creates it when it starts", service.name);
            return report.line("stream", Ok(created));
        }
        Err(e) => {
            let fix = format!(
                "start the {} service: it creates {stream} (or set CIM_SUBJECT_PREFIX to the services' prefix)",
                service.name
            );
            return report.fail("stream", format!("{stream}: {e}"), &fix);
        }
    };
    let captured: Vec<&str> =
        info["config"]["subjects"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
    if !captured.contains(&subjects.as_str()) {
        let fix = format!("{stream} was made by something else: delete it and restart the {} service", service.name);
        return report.fail("stream", format!("{stream}: captures {captured:?}, not {subjects}"), &fix);
    }
    let messages = info["state"]["messages"].as_u64().unwrap_or(0);
    let replicas = info["config"]["num_replicas"].as_u64().unwrap_or(1);
    report.line("stream", Ok(format!("{stream}: {messages} messages, subjects {subjects}, {replicas} replica(s)")));

    let mut consumers = Vec::new();
    loop {
        let offset = format!("{{\"offset\":{}}}", consumers.len());
        let page = match js_api(client, &format!("$JS.API.CONSUMER.LIST.{stream}"), &offset).await {
            Ok(p) => p,
            Err(e) => {
                let error = format!("{stream}: cannot list consumers: {e}");
                return report.fail("consumer", error, "check the NATS server's log");
            }
        };
        let items = page["consumers"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0);
        let last = items.is_empty();
        consumers.extend(items);
        if last || consumers.len() as u64 >= total {
            break;
        }
    }
    if consumers.is_empty() {
        report.line("consumer", Ok(format!("{stream}: none yet")));
    }
    for c in consumers {
        let name = c["name"].as_str().unwrap_or("?");
        let pending = c["num_pending"].as_u64().unwrap_or(0);
        let unacked = c["num_ack_pending"].as_u64().unwrap_or(0);
        let redelivered = c["num_redelivered"].as_u64().unwrap_or(0);
        let detail = format!("{stream} {name}: {pending} pending, {unacked} awaiting ack, {redelivered} redelivered");
        if pending > LAG_LIMIT {
            let fix =
                format!("the service owning durable consumer {name} is down or too slow: check it runs and its log");
            report.fail("consumer", format!("{detail}: more than {LAG_LIMIT} behind"), &fix);
        } else {
            report.line("consumer", Ok(detail));
        }
    }
}

/// Dead letters need an operator: each is an event a consumer gave up on.
async fn check_dead_letters(report: &mut Report, client: &async_nats::Client, prefix: &cim_core::SubjectPrefix) {
    let stream = prefix.dlq_stream_name();
    match js_api(client, &format!("$JS.API.STREAM.INFO.{stream}"), "").await {
        Ok(info) => match info["state"]["messages"].as_u64().unwrap_or(0) {
            0 => report.line("dlq", Ok(format!("{stream}: no dead letters"))),
            n => {
                let fix = format!(
                    "read them (subjects {}, header Cim-Dlq-Reason), fix the consumer, then replay or purge them",
                    prefix.dlq_subjects()
                );
                report.fail("dlq", format!("{stream}: {n} dead letters"), &fix);
            }
        },
        Err(e) if e.contains("not found") => {
            report.line("dlq", Ok(format!("{stream}: not created yet, no dead letters")))
        }
        Err(e) => report.fail("dlq", format!("{stream}: {e}"), "check the NATS server's log"),
    }
}

/// One JetStream API request, raw: async-nats' typed replies (`query_account`, ...) need fields
/// NATS 2.9 does not send. An error reply becomes its description.
async fn js_api(client: &async_nats::Client, subject: &str, payload: &str) -> Result<serde_json::Value, String> {
    let request = client.request(subject.to_owned(), payload.to_owned().into());
    let reply = tokio::time::timeout(std::time::Duration::from_secs(3), request)
        .await
        .map_err(|_| "no answer within 3s".to_owned())?
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    if let Some(err) = value.get("error") {
        return Err(err.get("description").and_then(|d| d.as_str()).unwrap_or("error").to_owned());
    }
    Ok(value)
}

fn token(tenant: Option<String>, roles: &str, subject: String, ttl: u64) -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secret = match signing_secret(&config) {
        Ok(s) => s,
        Err(e) => return fail(&e, EXIT_CONFIG),
    };
    let tenant = tenant.unwrap_or_else(|| cim_core::TenantId::new().to_string());
    let claims = cim_auth::Claims {
        sub: subject,
        tenant,
        roles: roles.split(',').map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect(),
        exp: cim_auth::now_secs() + ttl,
        iss: config.edge.auth.issuer.clone(),
        aud: config.edge.auth.audience,
    };
    match cim_auth::issue_hs256(&secret, &claims) {
        Ok(t) => {
            out(&t);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), 1),
    }
}

/// CIM_JWT_HS256_SECRET, else (no public key configured either) the local development secret.
fn signing_secret(config: &Config) -> Result<String, String> {
    let auth = &config.edge.auth;
    if let Some(secret) = &auth.hs256_secret {
        return Ok(secret.expose().to_owned());
    }
    if let Some(key) = &auth.public_key_file {
        return Err(format!(
            "CIM_JWT_HS256_SECRET is not set and tokens are verified with the public key in {} \
             (CIM_JWT_PUBLIC_KEY_FILE): cim token signs only HS256; sign with that key's private half",
            key.display()
        ));
    }
    let Some(path) = config.local_secret_file() else {
        return Err("CIM_JWT_HS256_SECRET is not set, and there is no local secret: neither CIM_DATA_DIR \
                    nor HOME is set"
            .into());
    };
    if !path.exists() {
        return Err(format!(
            "CIM_JWT_HS256_SECRET is not set and there is no local development secret at {}: start CIM \
             with scripts/up.sh (it makes one), or run `cim local-secret`, or set CIM_JWT_HS256_SECRET \
             to the secret the gateway uses",
            path.display()
        ));
    }
    local::read(&path)
}

fn local_secret() -> ExitCode {
    let config = match load() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(path) = config.local_secret_file() else {
        return fail("no data directory: set CIM_DATA_DIR (or HOME)", EXIT_CONFIG);
    };
    match local::ensure(&path) {
        Ok(_) => {
            out(&path.display().to_string());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, 1),
    }
}

/// The services of this build, in start order (domain services before the edges that call
/// them); the next service adds a line.
const SERVICES: &[(ServiceKind, cim_runtime::service::Prepare)] = &[
    (ServiceKind::Graph, cim_graph::app::service),
    (ServiceKind::Document, cim_document::app::service),
    (ServiceKind::Agent, cim_agent::app::service),
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

async fn serve(spec: &str) -> ExitCode {
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
        && config.edge.auth.hs256_secret.is_none()
        && config.edge.auth.public_key_file.is_none()
    {
        return fail(
            &format!(
                "{kind}: set CIM_JWT_HS256_SECRET or CIM_JWT_PUBLIC_KEY_FILE to verify bearer tokens \
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
    let shutdown = cim_runtime::Shutdown::new();
    if let Err(e) = shutdown.listen_for_signals() {
        return fail(&format!("cannot install signal handlers: {e}"), 1);
    }
    let mut running = tokio::task::JoinSet::new();
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
