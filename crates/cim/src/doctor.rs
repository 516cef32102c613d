//! `cim doctor`: configuration, Postgres, NATS JetStream, Redis and the object store, one line
//! per check with what to do about a failure.

use cim_runtime::nats::{capacity, cluster};

use super::*;

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

/// A consumer this many messages behind fails the check (the CimConsumerLagHigh threshold).
const LAG_LIMIT: u64 = 1000;

pub(crate) async fn doctor(before_start: bool) -> ExitCode {
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
        security: config.nats_security.clone(),
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
                match capacity::account_room(&info) {
                    Ok(()) => report.line("nats", Ok(detail)),
                    Err(e) => report.fail("nats", format!("{nats_at}: {e}"), capacity::ACCOUNT_FIX),
                }
                let nodes = cluster::nodes(&config.nats_url, config.connect_timeout).await;
                report.line("cluster", nodes.map_err(|e| (e, cluster::NODES_FIX)));
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
        tls: config.redis_tls.clone(),
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
    // Lost replicas or no room left fail the line; the consumers are listed either way.
    match (cluster::stream_replicas(&info), capacity::stream_room(&info)) {
        (Ok(replicas), Ok(())) => {
            report.line("stream", Ok(format!("{stream}: {messages} messages, subjects {subjects}, {replicas}")))
        }
        (Err(e), _) => report.fail("stream", format!("{stream}: {e}"), cluster::REPLICAS_FIX),
        (Ok(_), Err(e)) => report.fail("stream", format!("{stream}: {e}"), capacity::STREAM_FIX),
    }

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

/// One JetStream API request (`cim_runtime::nats::js_api`), bounded like every check here.
async fn js_api(client: &async_nats::Client, subject: &str, payload: &str) -> Result<serde_json::Value, String> {
    cim_runtime::nats::js_api(client, subject, payload, std::time::Duration::from_secs(3)).await
}
