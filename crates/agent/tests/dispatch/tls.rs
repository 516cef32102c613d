//! The agent service requiring client certificates (`CIM_TLS_CLIENT_CA_FILE`: mTLS, as in the
//! production overlay): the example worker presents one (`--tls-ca`, `--tls-cert`, `--tls-key`)
//! and runs a task over the stream; without one, with one from another CA, or over plain TCP its
//! stream never opens and it exits.

use std::time::Duration;

use cim_core::TenantId;
use cim_proto::agent::agent_service_client::AgentServiceClient;
use cim_runtime::tls::{CertFiles, ClientTls};
use serde_json::json;

use crate::ca::{Ca, TempDir, Validity};
use crate::support::*;
use crate::worker::Worker;
use crate::{result_of, submit_with, until_state};

/// The worker's TLS options: the CA to check the service with, and a certificate to present.
fn tls_args(ca: &Ca, identity: Option<&CertFiles>) -> Vec<String> {
    let mut args = vec!["--tls-ca".to_owned(), ca.file().display().to_string()];
    if let Some(files) = identity {
        args.extend(["--tls-cert".to_owned(), files.cert.display().to_string()]);
        args.extend(["--tls-key".to_owned(), files.key.display().to_string()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_worker_presents_a_client_certificate_to_an_mtls_agent_service() {
    let dir = TempDir::new();
    let services = Ca::new(dir.path(), "services");
    let stranger = Ca::new(dir.path(), "stranger");
    let served = services.issue("agent", &["localhost"], Validity::Now);
    let path = |p: &std::path::Path| p.display().to_string();
    let vars = [
        ("CIM_TLS_CERT_FILE", path(&served.cert)),
        ("CIM_TLS_KEY_FILE", path(&served.key)),
        ("CIM_TLS_CLIENT_CA_FILE", path(&services.file())),
    ];
    let svc = Service::start_configured(fast(), &vars).await;
    let port = svc.running.grpc.port();
    // The test's own calls present a certificate too.
    let tls = ClientTls {
        ca: services.file(),
        identity: Some(services.issue("tester", &["tester"], Validity::Now)),
        server_name: None,
        reload: Duration::from_secs(10),
    };
    let channel = cim_runtime::tls::grpc_channel(&format!("https://localhost:{port}"), Some(&tls), |e| e).unwrap();
    let mut c: Client = AgentServiceClient::new(channel);
    let tenant = TenantId::new();
    let agent = active(&mut c, tenant, &["text.reverse"], 1).await;
    let target = format!("localhost:{port}");

    let intruder = stranger.issue("intruder", &["worker"], Validity::Now);
    let refused = [
        ("no client certificate", tls_args(&services, None)),
        ("a certificate from another CA", tls_args(&services, Some(&intruder))),
        ("plain TCP", Vec::new()),
    ];
    for (case, args) in refused {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut worker = Worker::spawn(&target, tenant, &agent, &args);
        let ended = worker.expect("ended").await;
        assert_eq!(worker.exit_code().await, Some(1), "{case}: {ended}");
        assert_eq!(worker.count("welcome"), 0, "{case}: {:?}", worker.seen);
        assert!(ended.starts_with("ended UNAVAILABLE"), "{case}: {ended}");
    }

    let args = tls_args(&services, Some(&services.issue("worker", &["worker"], Validity::Now)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut worker = Worker::spawn(&target, tenant, &agent, &args);
    worker.expect("welcome").await;
    let task = submit_with(&mut c, tenant, &["text.reverse"], json!({"text": "mutual"}), 0).await;
    let done = until_state(&mut c, tenant, &task, "completed").await;
    assert_eq!((done.holder.as_str(), result_of(&done)), (agent.as_str(), json!({"text": "lautum"})));
    worker.expect(&format!("accepted {task}")).await;
    svc.stop().await;
}
