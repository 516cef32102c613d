//! gRPC clients of the domain services: balanced over every configured address, with the
//! request deadline, the caller's identity and trace context in metadata, and retries only for
//! queries (a command is retried by the caller, with an Idempotency-Key).

use std::time::Duration;

use cim_auth::Principal;
use cim_proto::graph::graph_service_client::GraphServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::problem::ApiError;

#[derive(Debug, Clone)]
pub struct Upstream {
    client: GraphServiceClient<Channel>,
    timeout: Duration,
}

impl Upstream {
    /// Connects lazily: the gateway starts (and serves health and docs) before the services do.
    pub fn graph(urls: &[String], timeout: Duration, connect_timeout: Duration) -> Result<Self, String> {
        let endpoints = urls
            .iter()
            .map(|u| {
                Endpoint::from_shared(u.clone())
                    .map(|e| e.connect_timeout(connect_timeout).timeout(timeout).tcp_nodelay(true))
                    .map_err(|e| format!("CIM_GATEWAY_GRAPH_URLS: {u}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Self { client: GraphServiceClient::new(channel), timeout })
    }

    fn request<T>(&self, p: &Principal, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        cim_runtime::telemetry::inject_grpc(req.metadata_mut());
        let md = req.metadata_mut();
        if let Ok(v) = p.tenant.to_string().parse() {
            md.insert(cim_runtime::edge::TENANT_HEADER, v);
        }
        if let Ok(v) = p.actor().parse() {
            md.insert(cim_runtime::edge::ACTOR_HEADER, v);
        }
        req
    }

    /// One attempt: commands are not retried here.
    pub async fn command<T, R, F, Fut>(&self, p: &Principal, call: F, msg: T) -> Result<R, ApiError>
    where
        F: FnOnce(GraphServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        call(self.client.clone(), self.request(p, msg)).await.map(tonic::Response::into_inner).map_err(ApiError::from)
    }

    /// Up to three attempts when the service is unavailable (another instance may answer).
    pub async fn query<T: Clone, R, F, Fut>(&self, p: &Principal, call: F, msg: T) -> Result<R, ApiError>
    where
        F: Fn(GraphServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match call(self.client.clone(), self.request(p, msg.clone())).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(s) => return Err(ApiError::from(s)),
            }
        }
    }
}
