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
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .connect_with(opts)
        .await
        .map_err(|source| RuntimeError::Postgres { at, what: "did not accept a connection".into(), source })
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
