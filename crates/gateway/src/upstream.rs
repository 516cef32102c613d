//! gRPC clients of the domain services, one per domain (`CIM_GATEWAY_<DOMAIN>_URLS`): the
//! configured replicas taken in turn, a replica that refuses connections ejected for a while
//! (`replicas`), with the request deadline, the caller's identity and trace context in metadata.
//! A call whose connection could not be made goes to the next replica, commands too (nothing
//! reached the service); queries are also retried on UNAVAILABLE (a command is retried by the
//! caller, with an Idempotency-Key).

mod replicas;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_auth::{Principal, Role};
use cim_runtime::identity::CallerKey;
use cim_runtime::tls::ClientTls;
use tonic::transport::Channel;

use crate::problem::ApiError;

/// One domain's client (`C`: its generated gRPC client, one per replica).
#[derive(Clone)]
pub struct Upstream<C> {
    replicas: Arc<replicas::Replicas<C>>,
    /// Unary calls' deadline; `None` for transfers, which take as long as their bytes take.
    timeout: Option<Duration>,
    /// Signs the caller metadata when the services check it (`CIM_SERVICE_TOKEN_SECRET`).
    identity: Option<CallerKey>,
}

/// A domain's replicas whatever its client type: the operations page's health checks take the
/// channel a call would take at the time of the check.
pub trait Replicated: Send + Sync + std::fmt::Debug {
    fn channel(&self) -> Channel;
}

impl<C: Clone + Send + Sync> Replicated for Upstream<C> {
    fn channel(&self) -> Channel {
        Upstream::channel(self)
    }
}

impl<C> std::fmt::Debug for Upstream<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("replicas", &self.replicas.urls()).field("timeout", &self.timeout).finish()
    }
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
        client: impl Fn(Channel) -> C,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err(format!("{var}: no address"));
        }
        let endpoints = urls
            .iter()
            .map(|u| {
                cim_runtime::tls::grpc_channel(u, tls, |e| {
                    let e = e.connect_timeout(connect_timeout).tcp_nodelay(true);
                    match timeout {
                        Some(t) => e.timeout(t),
                        None => e,
                    }
                })
                .map(|channel| (u.clone(), channel.clone(), client(channel)))
                .map_err(|e| format!("{var}: {u}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { replicas: Arc::new(replicas::Replicas::new(endpoints)), timeout, identity: None })
    }

    /// Signs every request's caller metadata with `key`.
    pub fn signed_with(mut self, key: Option<CallerKey>) -> Self {
        self.identity = key;
        self
    }

    /// The channel to the replica a call would take now (the operations page's health check).
    pub fn channel(&self) -> Channel {
        self.replicas.pick().channel.clone()
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

    /// The client of the replica a call would take now, for streams (which are never retried:
    /// their messages are consumed as they are sent).
    pub fn client(&self) -> C {
        self.replicas.pick().client.clone()
    }

    /// One call, on the next replica that takes the connection: a replica that refuses it is
    /// ejected and the call goes to the next (nothing reached the service, so commands too).
    /// Any answer, or a failure after the request left, is final here.
    async fn on_replicas<T: Clone, R, F, Fut>(&self, p: &Principal, call: &F, msg: &T) -> Result<R, tonic::Status>
    where
        F: Fn(C, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut refused = None;
        for replica in self.replicas.order(Instant::now()) {
            match call(replica.client.clone(), self.request(p, msg.clone())).await {
                Err(s) if replicas::never_sent(&s) => {
                    replica.refused(Instant::now());
                    refused = Some(s);
                }
                answer => {
                    replica.answered();
                    return answer.map(tonic::Response::into_inner);
                }
            }
        }
        Err(refused.unwrap_or_else(|| tonic::Status::unavailable("no replica configured")))
    }

    /// Commands are not retried once they reached a replica.
    pub async fn command<T: Clone, R, F, Fut>(&self, p: &Principal, call: F, msg: T) -> Result<R, ApiError>
    where
        F: Fn(C, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.on_replicas(p, &call, &msg).await.map_err(ApiError::from)
    }

    /// Up to three attempts when the service is unavailable (another instance may answer), as
    /// long as the answer came quickly: an UNAVAILABLE that took a quarter of the deadline or
    /// more (the service waited that long for Postgres to take a connection) is answered as it
    /// is, since another attempt would only turn the 503 into the deadline's 504.
    pub async fn query<T: Clone, R, F, Fut>(&self, p: &Principal, call: F, msg: T) -> Result<R, ApiError>
    where
        F: Fn(C, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut attempt = 0;
        let quick = |took: Duration| self.timeout.is_none_or(|deadline| took < deadline / 4);
        loop {
            attempt += 1;
            let started = Instant::now();
            match self.on_replicas(p, &call, &msg).await {
                Ok(r) => return Ok(r),
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < 3 && quick(started.elapsed()) => {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(s) => return Err(ApiError::from(s)),
            }
        }
    }
}
