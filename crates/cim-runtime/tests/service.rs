//! A minimal service built with the runtime, run as a real child process and checked over real
//! TCP: gRPC health and reflection, RED metrics, readiness that follows Postgres, and graceful
//! shutdown. Postgres is reached through a TCP proxy the test can cut, so the shared server is
//! never stopped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cim_proto::cim::testing::v1::probe_client::ProbeClient;
use cim_proto::cim::testing::v1::probe_server::{Probe, ProbeServer};
use cim_proto::cim::testing::v1::{FailReply, FailRequest, SleepReply, SleepRequest};
use cim_runtime::{Config, GrpcServer, ServiceHost, Shutdown, bind, postgres, telemetry};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

fn database_url() -> String {
    std::env::var("CIM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

struct ProbeImpl;

#[tonic::async_trait]
impl Probe for ProbeImpl {
    async fn sleep(&self, req: Request<SleepRequest>) -> Result<Response<SleepReply>, Status> {
        let millis = req.into_inner().millis;
        tokio::time::sleep(Duration::from_millis(millis.into())).await;
        Ok(Response::new(SleepReply { slept_millis: millis }))
    }

    async fn fail(&self, req: Request<FailRequest>) -> Result<Response<FailReply>, Status> {
        let code = cim_core::ErrorCode::from_str_code(&req.into_inner().code)
            .ok_or_else(|| Status::invalid_argument("unknown error code"))?;
        Err(Status::new(code.grpc(), "failing as asked"))
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child process: a service with one Postgres readiness check. Runs only when the parent
/// sets `CIM_FIXTURE`.
#[test]
#[ignore = "the fixture service; started as a child process by the other tests"]
fn fixture_service() {
    if std::env::var("CIM_FIXTURE").is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = Config::from_env().unwrap();
        let telemetry = telemetry::init("probe", &config).unwrap();
        let shutdown = Shutdown::new();
        shutdown.listen_for_signals().unwrap();
        let pool = postgres::connect(&postgres::PgSettings {
            url: config.database_url.expose().to_owned(),
            schema: "public".into(),
            max_connections: 4,
            connect_timeout: config.connect_timeout,
            application_name: "probe".into(),
        })
        .await
        .unwrap();
        let host = ServiceHost::new("probe", &shutdown, config.shutdown_grace);
        host.health().add_check("postgres", postgres::readiness(pool));
        let grpc = bind("grpc", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let admin = bind("admin", "127.0.0.1:0".parse().unwrap()).await.unwrap();
        say(&format!("READY {} {}", grpc.local_addr().unwrap(), admin.local_addr().unwrap()));
        let server = GrpcServer::new("probe")
            .add_service(ProbeServer::new(ProbeImpl))
            .file_descriptor_set(cim_proto::FILE_DESCRIPTOR_SET);
        host.run(admin, Some((grpc, server))).await.unwrap();
        telemetry.flush();
        say("EXITED cleanly");
    });
}

/// Forwards TCP to Postgres until cut; while cut, accepted connections are closed at once.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, up, generation }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

struct Fixture {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Fixture {
    fn spawn(database_url: &str, grace_ms: u32) -> Fixture {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["fixture_service", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("CIM_FIXTURE", "1")
            .env("CIM_DATABASE_URL", database_url)
            .env("CIM_CONNECT_TIMEOUT_MS", "1000")
            .env("CIM_SHUTDOWN_GRACE_MS", grace_ms.to_string())
            .env("CIM_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fixture never became ready");
            };
            // libtest prints "test fixture_service ... " without a newline before our output.
            if let Some((_, rest)) = line.split_once("READY ") {
                let mut parts = rest.split(' ');
                let grpc = parts.next().unwrap().parse().unwrap();
                let admin = parts.next().unwrap().parse().unwrap();
                return Fixture { child, grpc, admin, lines };
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "fixture did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn saw(&self, text: &str) -> bool {
        self.lines.try_iter().any(|l| l.contains(text))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn wait_for_status(addr: SocketAddr, path: &str, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = http_get(addr, path);
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} stayed {status}, wanted {want}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

async fn health_status(addr: SocketAddr, service: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = HealthClient::new(channel(addr).await);
    client.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
}

/// Lists services over one reflection protocol version (the two differ only in module path).
macro_rules! list_services {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel($addr).await);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        match stream.message().await.unwrap().unwrap().message_response.unwrap() {
            MessageResponse::ListServicesResponse(list) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<String>>()
            }
            other => panic!("unexpected {other:?}"),
        }
    }};
}

/// The value of the first sample line of `metric` carrying every label in `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_service_over_real_tcp() {
    let pg: SocketAddr = {
        let url = database_url();
        let hostport = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h).split('/').next().unwrap().to_owned();
        tokio::net::lookup_host(hostport).await.unwrap().next().unwrap()
    };
    let proxy = Proxy::start(pg).await;
    let url = {
        let base = database_url();
        let (head, tail) = base.rsplit_once('@').unwrap();
        let db = tail.split_once('/').map_or("postgres", |(_, d)| d);
        format!("{head}@{}/{db}", proxy.addr)
    };
    let mut fx = tokio::task::spawn_blocking(move || Fixture::spawn(&url, 10_000)).await.unwrap();
    let (grpc, admin) = (fx.grpc, fx.admin);

    // gRPC health: overall and per service.
    assert_eq!(health_status(grpc, "").await, SERVING);
    assert_eq!(health_status(grpc, "cim.testing.v1.Probe").await, SERVING);

    // Reflection, both protocol versions.
    for services in [list_services!(v1, grpc), list_services!(v1alpha, grpc)] {
        for want in ["cim.testing.v1.Probe", "grpc.health.v1.Health"] {
            assert!(services.iter().any(|s| s == want), "{want} missing from {services:?}");
        }
    }

    // RED metrics after calls that succeed and fail.
    let mut probe = ProbeClient::new(channel(grpc).await);
    assert_eq!(probe.sleep(SleepRequest { millis: 5 }).await.unwrap().into_inner().slept_millis, 5);
    let err = probe.fail(FailRequest { code: "not_found".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let metrics = tokio::task::spawn_blocking(move || http_get(admin, "/metrics")).await.unwrap().1;
    let sleep = r#"method="/cim.testing.v1.Probe/Sleep""#;
    let fail = r#"method="/cim.testing.v1.Probe/Fail""#;
    assert_eq!(
        sample(&metrics, "cim_grpc_requests_total", &[sleep, r#"code="Ok""#, r#"service="probe""#]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "cim_grpc_requests_total", &[fail, r#"code="NotFound""#]), Some(1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "cim_grpc_request_duration_seconds_count", &[sleep, r#"code="Ok""#]),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "cim_grpc_request_duration_seconds_bucket", &[sleep, r#"le="0.01""#]).is_some(),
        "{metrics}"
    );

    // Readiness follows Postgres: cut, 503 (and gRPC NOT_SERVING); restore, 200 again.
    tokio::task::spawn_blocking(move || wait_for_status(admin, "/health/ready", 200, Duration::from_secs(10)))
        .await
        .unwrap();
    proxy.cut();
    let body =
        tokio::task::spawn_blocking(move || wait_for_status(admin, "/health/ready", 503, Duration::from_secs(15)))
            .await
            .unwrap();
    assert!(body.contains(r#""name":"postgres","ok":false"#), "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health_status(grpc, "").await != NOT_SERVING {
        assert!(Instant::now() < deadline, "gRPC health never turned NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cause is exported per dependency (what CimPostgresUnreachable and friends alert on).
    let postgres_up = move |want: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = tokio::task::spawn_blocking(move || http_get(admin, "/metrics")).await.unwrap().1;
            let up = sample(&metrics, "cim_dependency_up", &[r#"dependency="postgres""#, r#"service="probe""#]);
            if up == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "cim_dependency_up{{dependency=\"postgres\"}} is {up:?}, not {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    postgres_up(0.0).await;
    proxy.restore();
    tokio::task::spawn_blocking(move || wait_for_status(admin, "/health/ready", 200, Duration::from_secs(15)))
        .await
        .unwrap();
    postgres_up(1.0).await;

    // SIGTERM drains an in-flight call before the process exits.
    let mut slow = probe.clone();
    let in_flight = tokio::spawn(async move { slow.sleep(SleepRequest { millis: 1500 }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    fx.signal("TERM");
    let body =
        tokio::task::spawn_blocking(move || wait_for_status(admin, "/health/ready", 503, Duration::from_secs(2)))
            .await
            .unwrap();
    assert!(body.contains(r#""shutting_down":true"#), "{body}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(grpc).await.is_err(), "still accepting new connections while draining");
    let reply = in_flight.await.unwrap().expect("the in-flight call was dropped");
    assert_eq!(reply.into_inner().slept_millis, 1500);
    let status = tokio::task::spawn_blocking(move || {
        let status = fx.wait_exit(Duration::from_secs(10));
        (status, fx.saw("EXITED cleanly"))
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    assert!(status.1, "the fixture did not finish its shutdown sequence");
    assert!(signalled.elapsed() < Duration::from_secs(8), "drain took {:?}", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let url = database_url();
    let mut fx = tokio::task::spawn_blocking(move || Fixture::spawn(&url, 60_000)).await.unwrap();
    let mut probe = ProbeClient::new(channel(fx.grpc).await);
    let in_flight = tokio::spawn(async move { probe.sleep(SleepRequest { millis: 30_000 }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_signal_exit = fx.child.try_wait().unwrap();
    assert!(first_signal_exit.is_none(), "exited on the first signal despite an in-flight call");
    fx.signal("INT");
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || fx.wait_exit(Duration::from_secs(5))).await.unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(in_flight.await.unwrap().is_err());
}
