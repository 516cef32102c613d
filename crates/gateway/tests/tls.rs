//! TLS end to end, with a CA made in the test: a browser reaches the gateway over HTTPS (HSTS
//! sent by the gateway itself), and the gateway reaches the graph service over mTLS; a gateway
//! whose certificate comes from another CA is refused by the graph service, and a plain HTTP
//! client gets nothing from the HTTPS listener.

#[path = "../../cim-runtime/tests/support/ca.rs"]
mod ca;
#[path = "../../graph/tests/support/harness.rs"]
mod harness;
#[path = "support/http.rs"]
mod http;
#[path = "support/gateway.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use ca::{Ca, TempDir, Validity};
use cim_auth::now_secs;
use cim_core::TenantId;
use cim_runtime::tls::{CertFiles, ClientTls};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 request over TLS: the status and the whole answer's head.
async fn https(addr: SocketAddr, ca: &Ca, method: &str, path: &str, bearer: &str, body: &str) -> (u16, String) {
    let tls = ClientTls {
        ca: ca.file(),
        identity: None,
        server_name: Some("localhost".into()),
        reload: std::time::Duration::from_secs(1),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.rustls().unwrap()));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

fn tls_vars<'a>(files: &'a CertFiles, ca: &'a Ca) -> Vec<(&'static str, String)> {
    vec![
        ("CIM_TLS_CERT_FILE", files.cert.display().to_string()),
        ("CIM_TLS_KEY_FILE", files.key.display().to_string()),
        ("CIM_TLS_CA_FILE", ca.file().display().to_string()),
        ("CIM_TLS_CLIENT_CA_FILE", ca.file().display().to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_to_the_gateway_and_mtls_to_the_graph_service() {
    let dir = TempDir::new();
    let services = Ca::new(dir.path(), "services");
    let stranger = Ca::new(dir.path(), "stranger");
    let graph_files = services.issue("graph", &["localhost"], Validity::Now);
    let graph = harness::Service::start_with(
        cim_testkit::domain::unique("g"),
        cim_testkit::domain::unique("p"),
        &tls_vars(&graph_files, &services),
    )
    .await;
    let graph_url = format!("https://localhost:{}", graph.grpc.port());
    let with = |files: &CertFiles, ca: &Ca| {
        let mut vars: Vec<(&str, String)> = tls_vars(files, ca);
        vars.push(("CIM_GATEWAY_GRAPH_URLS", graph_url.clone()));
        vars
    };
    let owned = with(&services.issue("gateway", &["localhost"], Validity::Now), &services);
    let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = gateway(&graph, &vars).await;
    let writer = token(TenantId::new(), &["writer"], now_secs() + 600);

    let (status, answer) = https(gw.addr, &services, "POST", "/api/v1/graphs", &writer, r#"{"name":"over tls"}"#).await;
    assert_eq!(status, 201, "{answer}");
    // The gateway terminates TLS itself: HSTS without a proxy vouching for HTTPS.
    assert!(answer.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000"), "{answer}");
    // Plain HTTP to the HTTPS listener gets no HTTP answer: the handshake fails and it hangs up.
    let mut plain = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    plain.write_all(b"GET /health/live HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read_to_end(&mut raw)).await;
    assert!(!raw.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&raw));

    // A gateway holding a certificate from a CA the graph service does not trust is refused.
    let intruder_files = stranger.issue("intruder", &["localhost"], Validity::Now);
    let owned = with(&intruder_files, &services);
    let vars: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let intruder = gateway(&graph, &vars).await;
    let (status, answer) =
        https(intruder.addr, &stranger, "POST", "/api/v1/graphs", &writer, r#"{"name":"refused"}"#).await;
    assert_eq!(status, 503, "{answer}");

    gw.stop().await;
    intruder.stop().await;
    graph.stop().await;
}
