//! Connection helpers against the real servers, and their errors when a server is absent.

use std::time::Duration;

use cim_runtime::{RuntimeError, nats, postgres, redis};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

fn database_url() -> String {
    std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

fn settings(schema: &str) -> postgres::PgSettings {
    postgres::PgSettings {
        url: database_url(),
        schema: schema.into(),
        max_connections: 2,
        connect_timeout: Duration::from_secs(5),
        application_name: "cim-runtime-test".into(),
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "notes".into(),
            MigrationType::Simple,
            "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)".into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "notes index".into(),
            MigrationType::Simple,
            "CREATE INDEX notes_body ON notes (body)".into_sql_str(),
            false,
        ),
    ])
}

#[tokio::test]
async fn migrations_land_in_the_service_schema_and_rerun_as_no_ops() {
    let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
    let pool = postgres::connect(&settings(&schema)).await.unwrap();
    postgres::migrate(&pool, &schema, migrator()).await.unwrap();
    postgres::migrate(&pool, &schema, migrator()).await.unwrap();

    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1")
            .bind(&schema)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, ["_sqlx_migrations", "notes"]);
    // search_path is the schema: unqualified names resolve there.
    sqlx::query("INSERT INTO notes VALUES (1, 'hello')").execute(&pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, 2);

    let drop = format!("DROP SCHEMA {schema} CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await.unwrap();
}

#[tokio::test]
async fn an_absent_postgres_is_a_clear_error() {
    let mut s = settings("graph");
    s.url = "postgres://postgres@127.0.0.1:1/cim".into();
    s.connect_timeout = Duration::from_millis(500);
    let err = postgres::connect(&s).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Postgres { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with("Postgres at 127.0.0.1:1 (CIM_DATABASE_URL) refused the connection"), "{msg}");
    assert_eq!(err.code(), cim_core::ErrorCode::Unavailable);
}

/// A loopback port nothing listens on: one the OS just handed out, released again.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_refused_postgres_connection_fails_at_once_and_says_refused() {
    let port = closed_port();
    let mut s = settings("graph");
    s.url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/cim");
    // Far longer than the test allows: a refusal must not wait for the timeout.
    s.connect_timeout = Duration::from_secs(30);
    let started = std::time::Instant::now();
    let err = postgres::connect(&s).await.unwrap_err();
    let elapsed = started.elapsed();
    let msg = err.to_string();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}: {msg}");
    assert!(
        msg.starts_with(&format!("Postgres at 127.0.0.1:{port} (CIM_DATABASE_URL) refused the connection")),
        "{msg}"
    );
    assert!(!msg.contains("pool timed out") && !msg.contains("hunter2"), "{msg}");
    assert_eq!(err.code(), cim_core::ErrorCode::Unavailable);
}

#[tokio::test]
async fn a_postgres_connection_failure_names_its_cause() {
    let mut s = settings("graph");
    s.connect_timeout = Duration::from_secs(10);

    // A database that does not exist on a server that answers.
    let missing = format!("cim_missing_{}", uuid::Uuid::now_v7().simple());
    let (base, _) = database_url().rsplit_once('/').map(|(b, d)| (b.to_owned(), d.to_owned())).unwrap();
    s.url = format!("{base}/{missing}");
    let msg = postgres::connect(&s).await.unwrap_err().to_string();
    assert!(msg.contains(&format!("has no database {missing:?}")), "{msg}");

    // A host name that cannot resolve (.invalid is reserved for that, RFC 6761).
    s.url = "postgres://postgres@no-such-host.invalid:5432/cim".into();
    let msg = postgres::connect(&s).await.unwrap_err().to_string();
    assert!(msg.contains("names an unknown host (\"no-such-host.invalid\" does not resolve)"), "{msg}");

    // An unreadable URL names where it points, without its password.
    s.url = "postgres://app:hunter2@db:notaport/cim".into();
    let msg = postgres::connect(&s).await.unwrap_err().to_string();
    assert!(msg.contains("has an unreadable URL") && msg.contains("postgres://app:***@db:notaport/cim"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn a_bad_schema_name_is_refused_before_any_sql() {
    let err = postgres::connect(&settings("graph; drop table x")).await.unwrap_err();
    assert!(matches!(err, RuntimeError::SchemaName(_)), "{err}");
}

#[tokio::test]
async fn nats_connects_with_jetstream_and_an_absent_server_is_a_clear_error() {
    let url = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = nats::connect(&nats::NatsSettings {
        url,
        client_name: "cim-runtime-test".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    .unwrap();
    (nats::readiness(client.clone()))().await.unwrap();
    let reply = client.request("$JS.API.INFO", "".into()).await.unwrap();
    assert!(String::from_utf8_lossy(&reply.payload).contains("account_info_response"));

    let err = nats::connect(&nats::NatsSettings {
        url: "nats://127.0.0.1:1".into(),
        client_name: "cim-runtime-test".into(),
        connect_timeout: Duration::from_millis(500),
        security: Default::default(),
    })
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("NATS at nats://127.0.0.1:1 (CIM_NATS_URL)"), "{err}");
}

#[tokio::test]
async fn redis_answers_and_an_absent_server_is_a_clear_error() {
    let url = std::env::var("CIM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pool = redis::connect(&redis::RedisSettings {
        url,
        max_size: 2,
        timeout: Duration::from_secs(2),
        tls: Default::default(),
    })
    .await
    .unwrap();
    (redis::readiness(pool, Duration::from_secs(1)))().await.unwrap();

    let err = redis::connect(&redis::RedisSettings {
        url: "redis://:secret@127.0.0.1:1".into(),
        max_size: 1,
        timeout: Duration::from_millis(500),
        tls: Default::default(),
    })
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("Redis at redis://:***@127.0.0.1:1 (CIM_REDIS_URL)"), "{msg}");
    assert!(!msg.contains("secret"));
}

#[tokio::test]
async fn a_terminated_connection_is_transient_and_a_bad_query_is_not() {
    use sqlx::{Connection, PgConnection};
    let mut victim = PgConnection::connect(&database_url()).await.unwrap();
    let mut admin = PgConnection::connect(&database_url()).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut victim).await.unwrap();
    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut admin).await.unwrap();
    assert!(killed);
    // The server sends FATAL 57P01 (admin_shutdown) and closes: either way, "try again".
    let err = sqlx::query("SELECT 1").execute(&mut victim).await.unwrap_err();
    assert!(postgres::is_transient(&err), "{err:?}");

    let err = sqlx::query("SELEC 1").execute(&mut admin).await.unwrap_err();
    assert!(!postgres::is_transient(&err), "a syntax error is the request's fault: {err:?}");
    assert!(postgres::is_transient(&sqlx::Error::PoolTimedOut));
    assert!(!postgres::is_transient(&sqlx::Error::RowNotFound));
}
