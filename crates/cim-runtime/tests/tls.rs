//! TLS on the runtime's own listeners, with a CA made in the test: a gRPC server with mTLS takes
//! a call from a client with the right certificate and refuses one with none, from a wrong CA,
//! expired, or dialling a name its certificate does not carry; an HTTPS listener likewise; a
//! certificate rotated on disk is served by the next handshake without a restart, and a client's
//! certificate and the CA files of both sides likewise.

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
use tonic::transport::Channel;

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

/// Client files are checked for changes at every handshake here.
const RELOAD: Duration = Duration::ZERO;

/// A channel as the services make them (connected at the first call).
fn channel(addr: std::net::SocketAddr, tls: Option<&ClientTls>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    cim_runtime::tls::grpc_channel(&format!("{scheme}://{addr}"), tls, |e| {
        e.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(2))
    })
}

/// One call on `channel`: the answer, or why there was none.
async fn call_on(channel: &Channel) -> Result<u32, String> {
    let reply =
        ProbeClient::new(channel.clone()).sleep(SleepRequest { millis: 5 }).await.map_err(|e| format!("{e:?}"))?;
    Ok(reply.into_inner().slept_millis)
}

/// One call over a fresh channel: the answer, or why there was none.
async fn call(addr: std::net::SocketAddr, tls: Option<&ClientTls>) -> Result<u32, String> {
    call_on(&channel(addr, tls)?).await
}

fn client(ca: &Ca, identity: Option<CertFiles>, name: &str) -> ClientTls {
    ClientTls { ca: ca.file(), identity, server_name: Some(name.to_owned()), reload: RELOAD }
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

#[tokio::test]
async fn client_certificates_and_ca_files_rotated_on_disk_reach_the_same_channel() {
    let dir = TempDir::new();
    let services = Ca::new(dir.path(), "services");
    let renewed_ca = Ca::new(dir.path(), "renewed");
    let stranger = Ca::new(dir.path(), "stranger");
    let copy = |from: std::path::PathBuf, name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(from, &to).unwrap();
        to
    };

    // The client's certificate expired: refused; renewed on disk, the same channel gets through.
    let tls = TlsSettings {
        identity: Some(services.issue("graph", &["graph.cim.internal"], Validity::Now)),
        client_ca: Some(services.file()),
        ca: None,
        reload: Duration::ZERO,
    };
    let (addr, stop) = serve(&tls).await;
    let presented = services.issue("gateway", &["gateway.cim.internal"], Validity::Expired);
    let gateway = channel(addr, Some(&client(&services, Some(presented.clone()), "graph.cim.internal"))).unwrap();
    let before = call_on(&gateway).await;
    assert!(before.is_err(), "an expired client certificate: {before:?}");
    rotate(&services.issue("gateway-renewed", &["gateway.cim.internal"], Validity::Now), &presented);
    assert_eq!(call_on(&gateway).await, Ok(5), "the renewed client certificate, without a new channel");
    stop.trigger();

    // The server's client CA file names another CA: the client is refused; the bundle replaced
    // on disk, the same channel gets through.
    let client_ca = copy(stranger.file(), "client-ca.pem");
    let tls = TlsSettings { client_ca: Some(client_ca.clone()), ..tls.clone() };
    let (addr, stop) = serve(&tls).await;
    let gateway = channel(
        addr,
        Some(&client(
            &services,
            Some(services.issue("gw", &["gateway.cim.internal"], Validity::Now)),
            "graph.cim.internal",
        )),
    )
    .unwrap();
    let before = call_on(&gateway).await;
    assert!(before.is_err(), "a client certificate from a CA the server does not take: {before:?}");
    std::fs::copy(services.file(), &client_ca).unwrap();
    assert_eq!(call_on(&gateway).await, Ok(5), "the server's new client CA, without a restart");
    stop.trigger();

    // The servers moved to a new CA: the client's CA file does not have it yet, then does.
    let tls = TlsSettings {
        identity: Some(renewed_ca.issue("graph", &["graph.cim.internal"], Validity::Now)),
        client_ca: None,
        ca: None,
        reload: Duration::ZERO,
    };
    let (addr, stop) = serve(&tls).await;
    let trusted = copy(services.file(), "ca.pem");
    let caller = ClientTls {
        ca: trusted.clone(),
        identity: None,
        server_name: Some("graph.cim.internal".into()),
        reload: RELOAD,
    };
    let graph = channel(addr, Some(&caller)).unwrap();
    let before = call_on(&graph).await;
    assert!(before.is_err(), "a server certificate from a CA the client does not have yet: {before:?}");
    std::fs::copy(renewed_ca.file(), &trusted).unwrap();
    assert_eq!(call_on(&graph).await, Ok(5), "the client's new CA file, without a new channel");
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

    let browser =
        ClientTls { ca: public.file(), identity: None, server_name: Some("cim.example.com".into()), reload: RELOAD };
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
