//! Documents through the gateway over real TCP: REST in front of a real document service
//! (local object directory), Postgres, NATS and Redis. Content goes up as a streamed body and
//! comes down with `ETag`, `Range` and `If-None-Match`.

#[path = "support/document.rs"]
mod document;
#[path = "support/http.rs"]
mod http;

use cim_core::TenantId;
use cim_runtime::{ServiceKind, Shutdown};
use cim_testkit::domain::{config, unique};
use http::{SECRET, call, exchange};
use tokio::io::AsyncWriteExt;

fn token(tenant: TenantId, roles: &[&str]) -> http::Auth {
    http::token(tenant, "dora", roles)
}

fn request(method: &str, path: &str, auth: &[(&str, String)], extra: &[&str]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: cim\r\nConnection: close\r\n");
    for (k, v) in auth {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head + "\r\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_over_rest_stream_both_ways() {
    let prefix = unique("p");
    let service = document::DocumentService::start(&prefix).await;
    let gateway_vars = [
        ("CIM_GATEWAY_DOCUMENT_URLS", service.url()),
        ("CIM_JWT_HS256_SECRET", SECRET.to_owned()),
        ("CIM_GATEWAY_MAX_BODY_BYTES", "4096".to_owned()),
    ];
    let gw_config = config(ServiceKind::Gateway, &prefix, &gateway_vars);
    let gw_stop = Shutdown::new();
    let gw = cim_gateway::app::prepare(&gw_config, &gw_stop).await.unwrap();
    let a = gw.addr;
    let gw_task = tokio::spawn(async move { gw.run().await.unwrap() });

    let tenant = TenantId::new();
    let (writer, reader, admin) = (token(tenant, &["writer"]), token(tenant, &["reader"]), token(tenant, &["admin"]));
    let created =
        call(a, "POST", "/api/v1/documents", &writer, Some(r#"{"title":"Site plan","tags":["plans"]}"#)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["document_id"].as_str().unwrap().to_owned();
    let content = format!("/api/v1/documents/{id}/content");

    // 300 KiB of binary, far above the gateway's 4 KiB JSON body limit, streamed through.
    let body: Vec<u8> = (0..300 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let put = |auth: &[(&str, String)], len: usize| {
        request(
            "PUT",
            &format!("{content}?filename=plan%20v1.bin"),
            auth,
            &["Content-Type: application/x-plan", &format!("Content-Length: {len}")],
        )
    };
    let (status, _, reply) = exchange(a, put(&reader, body.len()), &body).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&reply));
    let (status, _, reply) = exchange(a, put(&writer, body.len()), &body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let result: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    let cid = result["content_cid"].as_str().unwrap().to_owned();
    assert_eq!(cid, cim_document::content::cid_of(&blake3::hash(&body)));
    assert_eq!(result["content_version"], 1);

    // A body that breaks off (the client promised 1 MiB and went away after 64 KiB) must not
    // reach the service as a complete one: checked below, after the other calls.
    {
        let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
        s.write_all(put(&writer, 1 << 20).as_bytes()).await.unwrap();
        s.write_all(&vec![9; 64 * 1024]).await.unwrap();
    }

    // Download: whole, conditional, ranged, out of range.
    let (status, headers, bytes) = exchange(a, request("GET", &content, &reader, &[]), b"").await;
    assert_eq!(status, 200);
    assert!(bytes == body, "downloaded {} bytes", bytes.len());
    assert_eq!(headers["etag"], format!("\"{cid}\""));
    assert_eq!(headers["content-type"], "application/x-plan");
    assert_eq!(headers["content-disposition"], "attachment; filename=\"plan v1.bin\"; filename*=UTF-8''plan%20v1.bin");
    let etag = headers["etag"].clone();
    let (status, _, bytes) =
        exchange(a, request("GET", &content, &reader, &[&format!("If-None-Match: {etag}")]), b"").await;
    assert_eq!((status, bytes.len()), (304, 0));
    let (status, headers, bytes) = exchange(a, request("GET", &content, &reader, &["Range: bytes=10-19"]), b"").await;
    assert_eq!(status, 206);
    assert_eq!(bytes, body[10..20]);
    assert_eq!(headers["content-range"], format!("bytes 10-19/{}", body.len()));
    let (status, headers, _) = exchange(a, request("GET", &content, &reader, &["Range: bytes=-5"]), b"").await;
    assert_eq!((status, headers["content-length"].as_str()), (206, "5"));
    let (status, headers, reply) =
        exchange(a, request("GET", &content, &reader, &["Range: bytes=999999999-"]), b"").await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["content-range"], format!("bytes */{}", body.len()));
    assert!(String::from_utf8_lossy(&reply).contains("outside the content"));

    // A signed link downloads with no credentials; altered, it is not found; expired, refused.
    let link = call(a, "POST", &format!("/api/v1/documents/{id}/download-links?expires_in=60"), &reader, None).await;
    assert_eq!(link.status, 201, "{link:?}");
    let url = link.json()["url"].as_str().unwrap().to_owned();
    let (status, headers, bytes) = exchange(a, request("GET", &url, &[], &[]), b"").await;
    assert_eq!(status, 200);
    assert!(bytes == body);
    assert_eq!(headers["etag"], format!("\"{cid}\""));
    let (status, _, bytes) = exchange(a, request("GET", &url, &[], &["Range: bytes=0-3"]), b"").await;
    assert_eq!((status, bytes.as_slice()), (206, &body[..4]));
    let altered = url.replacen(".1.", ".2.", 1);
    assert_eq!(exchange(a, request("GET", &altered, &[], &[]), b"").await.0, 404);
    let short = call(a, "POST", &format!("/api/v1/documents/{id}/download-links?expires_in=1"), &reader, None).await;
    let short_url = short.json()["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, _, reply) = exchange(a, request("GET", &short_url, &[], &[]), b"").await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&reply));
    let too_long =
        call(a, "POST", &format!("/api/v1/documents/{id}/download-links?expires_in=99999999"), &reader, None).await;
    assert_eq!(too_long.status, 400);

    // Only the first upload became a version: the broken one left nothing.
    let versions = call(a, "GET", &format!("/api/v1/documents/{id}/versions"), &reader, None).await;
    assert_eq!(versions.json()["items"].as_array().unwrap().len(), 1, "{versions:?}");

    // Lifecycle and compliance over REST, with the error model's codes.
    let state = |s: &str| format!(r#"{{"state":"{s}"}}"#);
    let path = format!("/api/v1/documents/{id}/state");
    assert_eq!(call(a, "POST", &path, &writer, Some(&state("approved"))).await.json()["code"], "failed_precondition");
    assert_eq!(call(a, "POST", &path, &writer, Some(&state("in_review"))).await.status, 200);
    let locked = call(a, "PUT", &content, &writer, Some("{}")).await;
    assert_eq!((locked.status, locked.json()["code"].as_str()), (422, Some("failed_precondition")), "{locked:?}");
    let quarantine = format!("/api/v1/documents/{id}/versions/1/quarantine");
    assert_eq!(call(a, "POST", &quarantine, &writer, Some(r#"{"reason":"scan"}"#)).await.status, 403);
    assert_eq!(call(a, "POST", &quarantine, &admin, Some(r#"{"reason":"scan"}"#)).await.status, 200);
    let (status, _, reply) = exchange(a, request("GET", &content, &reader, &[]), b"").await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&reply));
    let hold = format!("/api/v1/documents/{id}/legal-hold");
    assert_eq!(call(a, "PUT", &hold, &admin, Some(r#"{"reason":"audit"}"#)).await.status, 200);
    let hard = call(a, "DELETE", &format!("/api/v1/documents/{id}?hard=true"), &writer, None).await;
    assert_eq!(hard.status, 422);
    assert!(hard.json()["detail"].as_str().unwrap().contains("legal hold (audit)"), "{hard:?}");

    // Search and the document itself; another tenant sees nothing.
    let found = call(a, "GET", "/api/v1/documents?q=site&tag=plans", &reader, None).await;
    assert_eq!(found.json()["items"][0]["document_id"], id.as_str(), "{found:?}");
    let doc = call(a, "GET", &format!("/api/v1/documents/{id}"), &reader, None).await.json();
    assert_eq!((doc["state"].as_str(), doc["legal_hold"].as_bool()), (Some("in_review"), Some(true)));
    assert_eq!(doc["current"]["cid"], cid.as_str());
    let stranger = token(TenantId::new(), &["admin"]);
    assert_eq!(call(a, "GET", &format!("/api/v1/documents/{id}"), &stranger, None).await.status, 404);
    let bad = call(a, "GET", "/api/v1/documents?created_after=yesterday", &reader, None).await;
    assert_eq!((bad.status, bad.json()["code"].as_str()), (400, Some("invalid_argument")));

    // The OpenAPI document names the document routes.
    let openapi = call(a, "GET", "/api/openapi.json", &[], None).await.json();
    assert!(openapi["paths"]["/api/v1/documents/{document_id}/content"]["put"].is_object());

    gw_stop.trigger();
    let _ = gw_task.await;
    service.stop().await;
}
