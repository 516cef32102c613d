//! Service identity over real TCP: a gRPC server holding the services' key takes a call only
//! when its caller metadata is signed with that key, answers `UNAUTHENTICATED` in the standard
//! rich error model otherwise (before any handler runs), and leaves health open; without a key
//! nothing is checked.

#[path = "support/echo.rs"]
mod echo;

use std::time::Duration;

use cim_proto::cim::testing::v1::SleepRequest;
use cim_proto::cim::testing::v1::probe_client::ProbeClient;
use cim_proto::cim::testing::v1::probe_server::ProbeServer;
use cim_runtime::edge::{ACTOR_HEADER, TENANT_HEADER};
use cim_runtime::identity::{CallerKey, SIGNATURE_HEADER};
use cim_runtime::{GrpcServer, ServiceHost, Shutdown, bind};
use echo::Echo;
use tonic::{Code, Request};

/// A probe server on port 0 holding `key`; its address and what stops it.
async fn serve(key: Option<CallerKey>) -> (String, Shutdown) {
    let stop = Shutdown::new();
    let host = ServiceHost::new("probe", &stop, Duration::from_millis(100));
    let grpc = bind("grpc", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin = bind("admin", "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let server = GrpcServer::new("probe").add_service(ProbeServer::new(Echo)).caller_identity(key);
    tokio::spawn(async move { host.run(admin, Some((grpc, server))).await });
    (url, stop)
}

fn call(tenant: &str, sign: Option<&CallerKey>) -> Request<SleepRequest> {
    let mut req = Request::new(SleepRequest { millis: 7 });
    req.metadata_mut().insert(TENANT_HEADER, tenant.parse().unwrap());
    req.metadata_mut().insert(ACTOR_HEADER, "service:test".parse().unwrap());
    if let Some(key) = sign {
        key.sign_metadata(req.metadata_mut());
    }
    req
}

#[tokio::test]
async fn only_signed_caller_metadata_is_taken() {
    let key = CallerKey::new("a test key of at least thirty-two bytes");
    let (url, stop) = serve(Some(key.clone())).await;
    let mut client = ProbeClient::connect(url.clone()).await.unwrap();
    let tenant = cim_core::TenantId::new().to_string();

    // Signed with the key: taken.
    let answer = client.sleep(call(&tenant, Some(&key))).await.unwrap();
    assert_eq!(answer.into_inner().slept_millis, 7);

    // Unsigned, signed with another key, or signed for another tenant: refused, with the reason
    // and the stable code in the rich error model.
    let other = CallerKey::new("another key, also thirty-two bytes long");
    let mut forged = call(&tenant, Some(&key));
    forged.metadata_mut().insert(TENANT_HEADER, cim_core::TenantId::new().to_string().parse().unwrap());
    let refusals = [
        (call(&tenant, None), "no x-cim-caller-signature"),
        (call(&tenant, Some(&other)), "does not match"),
        (forged, "does not match"),
    ];
    for (request, why) in refusals {
        let status = client.sleep(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
        let (code, _) = cim_proto::status::read_status(&status);
        assert_eq!(code, cim_core::ErrorCode::Unauthenticated);
    }
    let mut garbled = call(&tenant, None);
    garbled.metadata_mut().insert(SIGNATURE_HEADER, "v1.tomorrow.xyz".parse().unwrap());
    assert_eq!(client.sleep(garbled).await.unwrap_err().code(), Code::Unauthenticated);

    // Health carries no caller and stays open.
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(serving.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    stop.trigger();
}

#[tokio::test]
async fn without_a_key_nothing_is_checked() {
    let (url, stop) = serve(None).await;
    let mut client = ProbeClient::connect(url).await.unwrap();
    let answer = client.sleep(call(&cim_core::TenantId::new().to_string(), None)).await.unwrap();
    assert_eq!(answer.into_inner().slept_millis, 7);
    stop.trigger();
}
