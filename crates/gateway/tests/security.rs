//! Issue 21 (sessions and secrets): console sessions bounded by the credential they came from,
//! never started from a session, ended with their API key; API keys that expire; failed
//! authentications locked out per client address across replicas (Redis); the headers every
//! answer carries.

#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;

use std::time::Duration;

use cim_auth::now_secs;
use cim_core::TenantId;
use http::{Reply, call};
use support::*;

fn session_of(r: &Reply) -> Vec<(&'static str, String)> {
    let set = r.header("set-cookie").unwrap_or_else(|| panic!("no cookie: {r:?}"));
    vec![("Cookie", set.split(';').next().unwrap().to_owned())]
}

fn max_age(r: &Reply) -> u64 {
    let set = r.header("set-cookie").unwrap();
    set.split(';').find_map(|a| a.trim().strip_prefix("Max-Age=")).unwrap().parse().unwrap()
}

/// A client address of this test's own (behind one trusted proxy), so no other test shares it.
fn address() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("10.{}.{}.{}", b[0], b[1], b[2])
}

fn from(address: &str, mut headers: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    headers.push(("X-Forwarded-For", address.to_owned()));
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_end_with_their_credential_and_never_renew_themselves() {
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[("CIM_GATEWAY_COOKIE_SECURE", "true")]).await;
    let a = gw.addr;
    let t = TenantId::new();

    // Secure by default; HttpOnly and SameSite as before.
    let r = call(a, "POST", "/api/v1/auth/login", &bearer(&token(t, &["reader"], now_secs() + 600)), None).await;
    assert_eq!(r.status, 204, "{r:?}");
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("; Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    // The 8 h session ends with the token, 10 minutes from now.
    assert!((590..=600).contains(&max_age(&r)), "{set}");
    let session = session_of(&r);
    assert_eq!(call(a, "GET", "/api/v1/auth/me", &session, None).await.json()["method"], "session");

    // A session cannot make a new session (it would be renewable forever).
    problem(&call(a, "POST", "/api/v1/auth/login", &session, None).await, 403, "permission_denied");
    // Logging out clears a Secure cookie.
    let out = call(a, "POST", "/api/v1/auth/logout", &session, None).await;
    assert!(out.header("set-cookie").unwrap().contains("; Secure"), "{out:?}");

    // A token about to expire gives a session that ends with it.
    let short = call(a, "POST", "/api/v1/auth/login", &bearer(&token(t, &["reader"], now_secs() + 2)), None).await;
    assert_eq!(short.status, 204, "{short:?}");
    assert!(max_age(&short) <= 2, "{short:?}");
    let session = session_of(&short);
    assert_eq!(call(a, "GET", "/api/v1/auth/me", &session, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    problem(&call(a, "GET", "/api/v1/auth/me", &session, None).await, 401, "unauthenticated");
    gw.stop().await;

    // Turned off for plain local HTTP.
    let plain = gateway(&graph, &[("CIM_GATEWAY_COOKIE_SECURE", "false")]).await;
    let r =
        call(plain.addr, "POST", "/api/v1/auth/login", &bearer(&token(t, &["reader"], now_secs() + 600)), None).await;
    assert!(!r.header("set-cookie").unwrap().contains("Secure"), "{r:?}");
    plain.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_expire_and_revoking_one_ends_its_sessions() {
    let graph = harness::Service::start().await;
    let gw = gateway(&graph, &[]).await;
    let a = gw.addr;
    let admin = bearer(&token(TenantId::new(), &["admin"], now_secs() + 600));
    let create = |body: &'static str| call(a, "POST", "/api/v1/admin/api-keys", &admin, Some(body));

    // Revocation ends the sessions started with the key.
    let r = create(r#"{"subject":"bot","roles":["reader"]}"#).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(r.json().get("expires_at").is_none(), "{r:?}");
    let (id, key) = (r.json()["id"].as_str().unwrap().to_owned(), r.json()["key"].as_str().unwrap().to_owned());
    let with_key = vec![("X-Api-Key", key)];
    let login = call(a, "POST", "/api/v1/auth/login", &with_key, None).await;
    assert_eq!(login.status, 204, "{login:?}");
    let session = session_of(&login);
    let me = call(a, "GET", "/api/v1/auth/me", &session, None).await;
    assert_eq!((me.json()["method"].as_str(), me.json()["subject"].as_str()), (Some("session"), Some("bot")));
    assert_eq!(call(a, "DELETE", &format!("/api/v1/admin/api-keys/{id}"), &admin, None).await.status, 204);
    problem(&call(a, "GET", "/api/v1/auth/me", &with_key, None).await, 401, "unauthenticated");
    problem(&call(a, "GET", "/api/v1/auth/me", &session, None).await, 401, "unauthenticated");

    // An expiring key, and the session it starts, end when it says.
    let r = create(r#"{"subject":"temp","roles":["reader"],"expires_in_secs":2}"#).await;
    assert_eq!(r.status, 201, "{r:?}");
    let expires_at = r.json()["expires_at"].as_u64().unwrap();
    assert!((now_secs() + 1..=now_secs() + 2).contains(&expires_at), "{r:?}");
    let with_key = vec![("X-Api-Key", r.json()["key"].as_str().unwrap().to_owned())];
    assert_eq!(call(a, "GET", "/api/v1/auth/me", &with_key, None).await.status, 200);
    let login = call(a, "POST", "/api/v1/auth/login", &with_key, None).await;
    assert!(max_age(&login) <= 2, "{login:?}");
    let session = session_of(&login);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    problem(&call(a, "GET", "/api/v1/auth/me", &with_key, None).await, 401, "unauthenticated");
    problem(&call(a, "GET", "/api/v1/auth/me", &session, None).await, 401, "unauthenticated");

    for bad in [
        r#"{"subject":"x","roles":[],"expires_in_secs":0}"#,
        r#"{"subject":"x","roles":[],"expires_in_secs":999999999999}"#,
    ] {
        let r = create(bad).await;
        problem(&r, 400, "invalid_argument");
        assert_eq!(r.json()["errors"][0]["field"], "expires_in_secs", "{r:?}");
    }
    gw.stop().await;
    graph.stop().await;
}

/// Past the limit of failed authentications in a minute an address gets 429 with Retry-After,
/// even with good credentials, on every replica (the count is in Redis); other addresses and
/// requests without credentials are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentications_lock_an_address_out_on_every_replica() {
    let graph = harness::Service::start().await;
    let settings = [("CIM_GATEWAY_AUTH_FAILURES_PER_MINUTE", "3"), ("CIM_GATEWAY_PROXY_HOPS", "1")];
    let one = gateway(&graph, &settings).await;
    let two = gateway(&graph, &settings).await;
    // The count is per minute: start where the whole test fits in one.
    while now_secs() % 60 > 45 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let good = bearer(&token(TenantId::new(), &["reader"], now_secs() + 600));
    let bad = bearer("not-a-token");
    let (attacker, bystander, anonymous) = (address(), address(), address());

    // Requests without credentials are no attempt.
    for _ in 0..5 {
        problem(
            &call(one.addr, "GET", "/api/v1/auth/me", &from(&anonymous, vec![]), None).await,
            401,
            "unauthenticated",
        );
    }
    assert_eq!(call(one.addr, "GET", "/api/v1/auth/me", &from(&anonymous, good.clone()), None).await.status, 200);

    for _ in 0..3 {
        problem(
            &call(one.addr, "GET", "/api/v1/auth/me", &from(&attacker, bad.clone()), None).await,
            401,
            "unauthenticated",
        );
    }
    let locked = call(one.addr, "GET", "/api/v1/auth/me", &from(&attacker, bad.clone()), None).await;
    problem(&locked, 429, "rate_limited");
    let after: u64 = locked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{locked:?}");
    // Good credentials from that address wait too; another address does not.
    problem(&call(one.addr, "GET", "/api/v1/auth/me", &from(&attacker, good.clone()), None).await, 429, "rate_limited");
    assert_eq!(call(one.addr, "GET", "/api/v1/auth/me", &from(&bystander, good.clone()), None).await.status, 200);
    // The other replica refuses the address at its first failure there, and from then on.
    problem(&call(two.addr, "GET", "/api/v1/auth/me", &from(&attacker, bad.clone()), None).await, 429, "rate_limited");
    problem(&call(two.addr, "GET", "/api/v1/auth/me", &from(&attacker, good.clone()), None).await, 429, "rate_limited");
    // Behind one trusted proxy, what the client wrote before the proxy's entry is not believed.
    let spoofed = vec![("X-Forwarded-For", format!("{bystander}, {attacker}"))];
    let r = call(one.addr, "GET", "/api/v1/auth/me", &[good.clone(), spoofed].concat(), None).await;
    problem(&r, 429, "rate_limited");
    one.stop().await;
    two.stop().await;
    graph.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_carries_the_security_headers() {
    let graph = harness::Service::start().await;
    let direct = gateway(&graph, &[]).await;
    let proxied = gateway(&graph, &[("CIM_GATEWAY_PROXY_HOPS", "1")]).await;
    let reader = bearer(&token(TenantId::new(), &["reader"], now_secs() + 600));
    let https = vec![("X-Forwarded-Proto", "https".to_owned()), ("X-Forwarded-For", address())];
    for (path, headers) in [
        ("/api/v1/auth/me", reader.clone()),
        ("/api/v1/graphs/nope", reader.clone()),
        ("/api/v1/auth/me", vec![]),
        ("/api/openapi.json", vec![]),
        ("/health/live", vec![]),
    ] {
        let r = call(direct.addr, "GET", path, &headers, None).await;
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}: {r:?}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}: {r:?}");
        assert!(r.header("content-security-policy").unwrap().contains("frame-ancestors 'none'"), "{path}: {r:?}");
        // Plain HTTP, or a client claiming HTTPS with no trusted proxy to vouch for it: no HSTS.
        assert_eq!(r.header("strict-transport-security"), None, "{path}: {r:?}");
        let claimed = call(direct.addr, "GET", path, &[headers.clone(), https.clone()].concat(), None).await;
        assert_eq!(claimed.header("strict-transport-security"), None, "{path}");
        let behind_tls = call(proxied.addr, "GET", path, &[headers, https.clone()].concat(), None).await;
        assert_eq!(behind_tls.header("strict-transport-security"), Some("max-age=31536000"), "{path}");
    }
    // The console keeps its own, stricter policy.
    let page = call(direct.addr, "GET", "/", &[], None).await;
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    direct.stop().await;
    proxied.stop().await;
    graph.stop().await;
}

/// Service identity: a graph service holding the services' key takes the gateway's calls (it
/// signs its caller metadata with the same key), refuses a direct call that names a tenant
/// without a signature, and a gateway holding another key gets a problem naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn domain_services_take_tenant_metadata_only_signed_with_the_service_key() {
    const KEY: &str = "the services' shared key, 32+ bytes";
    let vars = [("CIM_SERVICE_TOKEN_SECRET", KEY.to_owned())];
    let graph = harness::Service::start_with(harness::unique("g"), harness::unique("p"), &vars).await;
    let gw = gateway(&graph, &[("CIM_SERVICE_TOKEN_SECRET", KEY)]).await;
    let tenant = TenantId::new();
    let writer = bearer(&token(tenant, &["writer"], now_secs() + 600));
    let r = call(gw.addr, "POST", "/api/v1/graphs", &writer, Some(r#"{"name":"signed"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    let graph_id = r.json()["graph_id"].as_str().unwrap().to_owned();
    let r = call(gw.addr, "GET", &format!("/api/v1/graphs/{graph_id}"), &writer, None).await;
    assert_eq!(r.status, 200, "{r:?}");

    // A process on the network naming the tenant, unsigned: refused before any handler runs.
    let mut direct = graph.client().await;
    let get = cim_proto::graph::GetGraphRequest { graph_id: graph_id.clone() };
    let refused = direct.get_graph(harness::req(tenant, get.clone())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("x-cim-caller-signature"), "{refused:?}");
    // Signed with the key (what `cim service-token` prints for a worker program): taken.
    let mut signed = harness::req(tenant, get);
    cim_runtime::identity::CallerKey::new(KEY).sign_metadata(signed.metadata_mut());
    assert_eq!(direct.get_graph(signed).await.unwrap().into_inner().graph_id, graph_id);

    // A gateway with another key: the deployment fault is named, not blamed on the caller.
    let wrong = gateway(&graph, &[("CIM_SERVICE_TOKEN_SECRET", "not the services' key, but 32+ bytes")]).await;
    let r = call(wrong.addr, "GET", &format!("/api/v1/graphs/{graph_id}"), &writer, None).await;
    problem(&r, 500, "internal");
    assert!(r.json()["detail"].as_str().unwrap().contains("CIM_SERVICE_TOKEN_SECRET"), "{r:?}");

    wrong.stop().await;
    gw.stop().await;
    graph.stop().await;
}
