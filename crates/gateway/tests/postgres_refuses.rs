//! Postgres refusing new connections (the service's role at its `CONNECTION LIMIT`, SQLSTATE
//! 53300, every connection it held terminated): every gRPC call is UNAVAILABLE and every REST
//! call 503 `unavailable` — never INTERNAL, which clients do not retry — and the service
//! answers again once Postgres takes connections.

#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;

use cim_auth::now_secs;
use cim_core::TenantId;
use cim_proto::graph as pb;
use http::call;
use support::*;

/// `database_url()` with another user (the servers here trust local connections).
fn url_as(role: &str) -> String {
    let url = harness::database_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}:unused@{host}")
}

async fn admin() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&harness::database_url()).await.unwrap()
}

async fn exec(pool: &sqlx::PgPool, sql: String) {
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_refusing_connections_is_unavailable_never_internal() {
    let admin = admin().await;
    let role = harness::unique("limited");
    exec(&admin, format!("CREATE ROLE {role} LOGIN")).await;
    exec(&admin, format!("GRANT CREATE ON DATABASE {} TO {role}", database_name(&admin).await)).await;
    let graph = harness::Service::start_with(
        harness::unique("g"),
        harness::unique("p"),
        &[("CIM_DATABASE_URL", url_as(&role))],
    )
    .await;
    // Default settings: the service's pool tries for 5 s to get a connection
    // (CIM_CONNECT_TIMEOUT_MS); the gateway's deadline is 10 s, so a query retried after such an
    // UNAVAILABLE ended in the deadline's 504.
    let gw = gateway(&graph, &[]).await;
    let tenant = TenantId::new();
    let writer = bearer(&token(tenant, &["writer"], now_secs() + 600));
    let r = call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"before"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let graph_id = r.json()["graph_id"].as_str().unwrap().to_owned();

    // No slot left for the role, and what it held cut: every connection must be made anew.
    exec(&admin, format!("ALTER ROLE {role} CONNECTION LIMIT 0")).await;
    exec(&admin, format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")).await;

    let mut client = graph.client().await;
    let create = client
        .create_graph(harness::req(tenant, pb::CreateGraphRequest { name: "during".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(create.code(), tonic::Code::Unavailable, "{create:?}");
    let get =
        client.get_graph(harness::req(tenant, pb::GetGraphRequest { graph_id: graph_id.clone() })).await.unwrap_err();
    assert_eq!(get.code(), tonic::Code::Unavailable, "{get:?}");
    let add = client
        .add_node(harness::req(
            tenant,
            pb::AddNodeRequest { graph_id: graph_id.clone(), node: Some(harness::node("n", "t")), options: None },
        ))
        .await
        .unwrap_err();
    assert_eq!(add.code(), tonic::Code::Unavailable, "{add:?}");

    let r = call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"during"}"#)).await;
    problem(&r, 503, "unavailable");
    let r =
        call(gw.addr, "POST", &format!("/api/v1/graphs/{graph_id}/nodes"), &writer, Some(r#"{"id":"m","type":"t"}"#))
            .await;
    problem(&r, 503, "unavailable");
    // A query the gateway retries, and that its cache must not answer (nothing cached yet).
    let r = call(gw.addr, "GET", &format!("/api/v1/graphs/{graph_id}/nodes"), &writer, None).await;
    problem(&r, 503, "unavailable");

    // Slots again: the service takes connections and answers.
    exec(&admin, format!("ALTER ROLE {role} CONNECTION LIMIT -1")).await;
    assert!(
        eventually(|| async {
            call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"after"}"#)).await.status == 201
        })
        .await,
        "the service never answered again once Postgres took connections"
    );
    gw.stop().await;
    graph.stop().await;
    exec(&admin, format!("DROP OWNED BY {role}")).await;
    exec(&admin, format!("DROP ROLE {role}")).await;
}

async fn database_name(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT current_database()").fetch_one(pool).await.unwrap()
}
