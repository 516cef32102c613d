//! Postgres: one pool per service with `search_path` pinned to the service's schema, and
//! per-schema migrations (the migration table lives in the schema too, so services migrate
//! independently).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::RuntimeError;
use crate::health::CheckFn;

/// A schema name we are willing to splice into SQL.
pub fn validate_schema(schema: &str) -> Result<&str, RuntimeError> {
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some('a'..='z' | '_'))
        && schema.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'));
    if ok { Ok(schema) } else { Err(RuntimeError::SchemaName(schema.to_owned())) }
}

/// Where a URL points, for messages (never the password).
fn location(opts: &PgConnectOptions) -> String {
    format!("{}:{}", opts.get_host(), opts.get_port())
}

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub schema: String,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    pub application_name: String,
}

/// Whether a database error means "Postgres cannot serve this now" rather than "this request or
/// the data is wrong": the pool timed out or is closed, the connection broke, the server refused
/// a new connection (`53300` too many clients, class `53` insufficient resources, class `08`
/// connection exceptions) or is shutting down or starting (`57P01`..`57P03`). Callers answer
/// these with UNAVAILABLE, which clients (and the gateway, for queries) retry, instead of INTERNAL.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("53") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Connects and checks the server answers; a missing server is a clear error, not a hang.
pub async fn connect(settings: &PgSettings) -> Result<PgPool, RuntimeError> {
    let schema = validate_schema(&settings.schema)?;
    let opts = PgConnectOptions::from_str(&settings.url).map_err(|source| RuntimeError::Postgres {
        at: crate::config::redact_url(&settings.url),
        what: "has an unreadable URL".into(),
        source,
    })?;
    let at = location(&opts);
    // Generic plans: every statement is prepared and parameterized, and the best plan for our
    // key lookups does not depend on the values; planning afresh at each execution (Postgres'
    // default for the first runs and whenever a custom plan looks cheaper) cost about a fifth
    // of a graph write, measured.
    let opts = opts
        .application_name(&settings.application_name)
        .options([("search_path", schema), ("plan_cache_mode", "force_generic_plan")]);
    probe(&opts, settings.connect_timeout).await.map_err(|(what, source)| RuntimeError::Postgres {
        at: at.clone(),
        what,
        source,
    })?;
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        // sqlx pings every pooled connection it hands out by default: a round trip before each
        // statement or transaction, about a fifth of a one-statement write. A connection that
        // was in use a moment ago is trusted (one that died fails its query, and the pool drops
        // it); one idle for a while (a restarted server, a cut line) is pinged first.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(opts)
        .await
        .map_err(|source| RuntimeError::Postgres { at, what: "did not accept a connection".into(), source })
}

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// One direct connection attempt, closed again. The pool retries a failed connect until its
/// acquire timeout and then says only "pool timed out", which hides why: this attempt fails at
/// once when the server refuses, and says what it got.
async fn probe(opts: &PgConnectOptions, timeout: Duration) -> Result<(), (String, sqlx::Error)> {
    use sqlx::Connection;
    match tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err((diagnose(&e, opts), e)),
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the connection attempt");
            Err((
                format!("did not answer within {timeout:?} (a firewall dropping packets, or the wrong host?)"),
                e.into(),
            ))
        }
    }
}

/// What a failed connection attempt means, for the operator.
fn diagnose(e: &sqlx::Error, opts: &PgConnectOptions) -> String {
    use std::io::ErrorKind;
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => {
                "refused the connection (nothing listens on that port: is Postgres running there?)".into()
            }
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                "cannot be reached (no route to the host)".into()
            }
            ErrorKind::TimedOut => "did not answer (the connection attempt timed out)".into(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::UnexpectedEof => {
                "closed the connection during the handshake (not Postgres, or TLS required?)".into()
            }
            // sqlx hands rustls' verdict on the server's certificate on as an I/O error.
            _ if io.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
                "failed the TLS handshake (check sslrootcert, the host name and the certificates' dates)".into()
            }
            _ if io.to_string().contains("lookup address") => {
                format!("names an unknown host ({:?} does not resolve)", opts.get_host())
            }
            _ => "did not accept a connection".into(),
        },
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") => format!("rejected the password of user {:?} (authentication failed)", opts.get_username()),
            Some("28000") => format!("refused user {:?} (authentication failed)", opts.get_username()),
            Some("3D000") => format!("has no database {:?}", opts.get_database().unwrap_or_default()),
            Some("53300") => "has no connection slot left (too many clients)".into(),
            Some("57P03") => "is starting up or shutting down".into(),
            _ => "refused the connection".into(),
        },
        sqlx::Error::Tls(_) => "failed the TLS handshake".into(),
        _ => "did not accept a connection".into(),
    }
}

/// Applies `migrator` inside `schema`, creating the schema first. Safe to run concurrently from
/// several instances (sqlx holds an advisory lock).
pub async fn migrate(pool: &PgPool, schema: &str, mut migrator: sqlx::migrate::Migrator) -> Result<(), RuntimeError> {
    let schema = validate_schema(schema)?.to_owned();
    migrator.create_schema(schema.clone());
    // Several crates migrate one schema (the event store's tables, then the service's
    // projections), each with its own version range; each ignores the others' versions.
    migrator.set_ignore_missing(true);
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator.run(pool).await.map_err(|source| RuntimeError::Migrate { schema, source })
}

/// Ready while a connection can be had and answers `SELECT 1`.
pub fn readiness(pool: PgPool) -> CheckFn {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&pool)
                .await
                .map(|_| ())
                .map_err(|e| format!("postgres: {e}"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_strict() {
        for ok in ["graph", "t_0190abc", "_x"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Graph", "g-1", "g;drop", "1g", &"a".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }
}
