//! gRPC clients of the domain services, one per domain (`CIM_GATEWAY_<DOMAIN>_URLS`): balanced
//! over every configured address, with the request deadline, the caller's identity and trace
//! context in metadata, and retries only for queries (a command is retried by the caller, with
//! an Idempotency-Key).

use std::time::Duration;

use cim_auth::{Principal, Role};
use cim_runtime::identity::CallerKey;
use cim_runtime::tls::ClientTls;
use tonic::transport::Channel;

use crate::problem::ApiError;

/// One domain's client (`C`: its generated gRPC client over a balanced channel).
#[derive(Debug, Clone)]
pub struct Upstream<C> {
    client: C,
    /// The same balanced channel, for the operations page's health checks.
    channel: Channel,
    /// Unary calls' deadline; `None` for transfers, which take as long as their bytes take.
    timeout: Option<Duration>,
    /// Signs the caller metadata when the services check it (`CIM_SERVICE_TOKEN_SECRET`).
    identity: Option<CallerKey>,
}

impl<C: Clone> Upstream<C> {
    /// Connects lazily: the gateway starts (and serves health and docs) before the services do.
    /// `var` names the setting in errors; `https://` URLs are called over `tls`.
    pub fn connect(
        var: &str,
        urls: &[String],
        timeout: Option<Duration>,
        connect_timeout: Duration,
        tls: Option<&ClientTls>,
        client: impl FnOnce(Channel) -> C,
    ) -> Result<Self, String> {
        let endpoints = urls
            .iter()
            .map(|u| {
                cim_runtime::tls::grpc_endpoint(u, tls)
                    .map(|e| {
                        let e = e.connect_timeout(connect_timeout).tcp_nodelay(true);
                        match timeout {
                            Some(t) => e.timeout(t),
                            None => e,
                        }
                    })
                    .map_err(|e| format!("{var}: {u}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        Ok(Self { client: client(channel.clone()), channel, timeout, identity: None })
    }

    /// Signs every request's caller metadata with `key`.
    pub fn signed_with(mut self, key: Option<CallerKey>) -> Self {
        self.identity = key;
        self
    }

    /// The balanced channel to the domain's replicas.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A request carrying the caller's tenant and actor, the deadline and the trace context.
    pub fn request<T>(&self, p: &Principal, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = self.timeout {
            req.set_timeout(t);
        }
        cim_runtime::telemetry::inject_grpc(req.metadata_mut());
        let md = req.metadata_mut();
        if let Ok(v) = p.tenant.to_string().parse() {
            md.insert(cim_runtime::edge::TENANT_HEADER, v);
        }
        if let Ok(v) = p.actor().parse() {
            md.insert(cim_runtime::edge::ACTOR_HEADER, v);
        }
        // Every role the caller holds, implied ones included (an admin is also a writer): a
        // domain rule may ask for one (who may approve a workflow step).
        // Roles are ranked, so the highest names the whole list: a static value, no allocation
        // on every call.
        let roles = match p.roles.iter().max() {
            Some(Role::Admin) => "reader,writer,admin",
            Some(Role::Writer) => "reader,writer",
            Some(Role::Reader) => "reader",
            None => "",
        };
        md.insert(cim_runtime::edge::ROLES_HEADER, tonic::metadata::MetadataValue::from_static(roles));
        if let Some(key) = &self.identity {
            key.sign_metadata(md);
        }
        req
    }

    pub fn client(&self) -> C {
        self.client.clone()
    }

    /// One attempt: commands are not retried here.
    pub async fn command<T, R, F, Fut>(&self, p: &Principal, call: F, msg: T) -> Result<R, ApiError>
    where
        F: FnOnce(C, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        call(self.client.clone(), self.request(p, msg)).await.map(tonic::Response::into_inner).map_err(ApiError::from)
    }

    /// Up to three attempts when the service is unavailable (another instance may answer).
    pub async fn query<T: Clone, R, F, Fut>(&self, p: &Principal, call: F, msg: T) -> Result<R, ApiError>
    where
        F: Fn(C, tonic::Request<T>) -> Fut,
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
