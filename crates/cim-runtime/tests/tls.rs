//! TLS on the runtime's own listeners, with a CA made in the test: a gRPC server with mTLS takes
//! a call from a client with the right certificate and refuses one with none, from a wrong CA,
//! expired, or dialling a name its certificate does not carry; an HTTPS listener likewise; a
//! certificate rotated on disk is served by the next handshake without a restart.

#[path = "support/ca.rs"]
mod ca;
#[path = "support/echo.rs"]
mod echo;

use std::sync::Arc;
use std::time::Duration;

use ca::{Ca, TempDir, Validity, rotate};
use cim_proto::cim::testing::v1::SleepRequest;
use cim_proto::cim::testing::v1::probe_client::ProbeClient;
use cim_proto::cim::testing::v1::probe_server::ProbeServer;
use cim_runtime::tls::{CertFiles, ClientTls, HttpListener, TlsSettings};
use cim_runtime::{GrpcServer, ServiceHost, Shutdown, bind};
use echo::Echo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A probe server on port 0 with `tls`; its address and what stops it.
async fn serve(tls: &TlsSettings) -> (std::net::SocketAddr, Shutdown) {
    let stop = Shutdown::new();
    let host = ServiceHost::new("probe", &stop, Duration::from_millis(100));
    let grpc = bind("grpc", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin = bind("admin", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let server = GrpcServer::new("probe").add_service(ProbeServer::new(Echo)).tls(tls.grpc_server().unwrap());
    tokio::spawn(async move { host.run(admin, Some((grpc, server))).await });
    (addr, stop)
}

/// One call over a fresh channel: the answer, or why there was none.
async fn call(addr: std::net::SocketAddr, tls: Option<&ClientTls>) -> Result<u32, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = cim_runtime::tls::grpc_endpoint(&format!("{scheme}://{addr}"), tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let reply = ProbeClient::new(channel).sleep(SleepRequest { millis: 5 }).await.map_err(|e| format!("{e:?}"))?;
    Ok(reply.into_inner().slept_millis)
}

fn client(ca: &Ca, identity: Option<CertFiles>, name: &str) -> ClientTls {
    ClientTls { ca: ca.file(), identity, server_name: Some(name.to_owned()) }
}

#[tokio::test]
async fn grpc_mtls_takes_the_right_certificate_and_refuses_every_wrong_one() {
    let dir = TempDir::new();
    let services = Ca::new(dir.path(), "services");
    let stranger = Ca::new(dir.path(), "stranger");
    let server = services.issue("graph", &["graph.cim.internal"], Validity::Now);
    let tls = TlsSettings {
        identity: Some(server),
        client_ca: Some(services.file()),
        ca: None,
        reload: Duration::from_secs(10),
    };
    let (addr, stop) = serve(&tls).await;
    let gateway = services.issue("gateway", &["gateway.cim.internal"], Validity::Now);

    assert_eq!(call(addr, Some(&client(&services, Some(gateway.clone()), "graph.cim.internal"))).await, Ok(5));

    let refused = [
        ("no client certificate", client(&services, None, "graph.cim.internal")),
        (
            "a client certificate from another CA",
            client(
                &services,
                Some(stranger.issue("intruder", &["gateway.cim.internal"], Validity::Now)),
                "graph.cim.internal",
            ),
        ),
        (
            "an expired client certificate",
            client(
                &services,
                Some(services.issue("old", &["gateway.cim.internal"], Validity::Expired)),
                "graph.cim.internal",
            ),
        ),
        (
            "a server certificate from a CA the client does not trust",
            client(&stranger, Some(gateway.clone()), "graph.cim.internal"),
        ),
        ("a server certificate for another name", client(&services, Some(gateway.clone()), "document.cim.internal")),
    ];
    for (case, tls) in refused {
        let outcome = call(addr, Some(&tls)).await;
        assert!(outcome.is_err(), "{case}: {outcome:?}");
    }
    // Plain HTTP/2 to a TLS listener gets nothing either.
    assert!(call(addr, None).await.is_err());
    stop.trigger();
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() {
    let dir = TempDir::new();
    let services = Ca::new(dir.path(), "services");
    // The server starts with a certificate that has expired; clients refuse it.
    let served = services.issue("graph", &["graph.cim.internal"], Validity::Expired);
    let tls = TlsSettings { identity: Some(served.clone()), client_ca: None, ca: None, reload: Duration::ZERO };
    let (addr, stop) = serve(&tls).await;
    let caller = client(&services, None, "graph.cim.internal");
    let before = call(addr, Some(&caller)).await;
    assert!(before.is_err(), "{before:?}");

    // A renewed certificate lands on disk; the next handshake serves it.
    rotate(&services.issue("renewed", &["graph.cim.internal"], Validity::Now), &served);
    assert_eq!(call(addr, Some(&caller)).await, Ok(5));

    // A half-written rotation (a certificate beside a key of another) keeps the last good pair.
    let other = services.issue("other", &["graph.cim.internal"], Validity::Now);
    std::fs::copy(&other.cert, &served.cert).unwrap();
    assert_eq!(call(addr, Some(&caller)).await, Ok(5));
    stop.trigger();
}

/// `GET /` over TLS with rustls directly: the status line, or why there was none.
async fn https_get(addr: std::net::SocketAddr, tls: &ClientTls) -> Result<String, String> {
    let config = Arc::new(tls.rustls().map_err(|e| e.to_string())?);
    let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone().unwrap()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream =
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn https_listener_serves_the_right_name_only_to_clients_that_trust_its_ca() {
    let dir = TempDir::new();
    let public = Ca::new(dir.path(), "public");
    let stranger = Ca::new(dir.path(), "stranger");
    let served = public.issue("gateway", &["cim.example.com"], Validity::Expired);
    let tls = TlsSettings { identity: Some(served.clone()), client_ca: None, ca: None, reload: Duration::ZERO };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = HttpListener::new(tcp, tls.http_server().unwrap()).unwrap();
    assert!(listener.is_tls());
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = ClientTls { ca: public.file(), identity: None, server_name: Some("cim.example.com".into()) };
    assert!(https_get(addr, &browser).await.unwrap_err().contains("expired"));
    rotate(&public.issue("renewed", &["cim.example.com"], Validity::Now), &served);
    assert_eq!(https_get(addr, &browser).await.unwrap(), "HTTP/1.1 200 OK");
    // No client certificate is asked of browsers.
    let wrong_ca = ClientTls { ca: stranger.file(), ..browser.clone() };
    assert!(https_get(addr, &wrong_ca).await.is_err());
    let wrong_name = ClientTls { server_name: Some("other.example.com".into()), ..browser.clone() };
    let error = https_get(addr, &wrong_name).await.unwrap_err();
    assert!(error.contains("not valid for name"), "{error}");
    server.abort();
}
