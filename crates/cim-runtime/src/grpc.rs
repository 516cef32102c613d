//! gRPC server assembly: health, reflection (v1 and v1alpha, so grpcurl and older clients both
//! work), RED metrics and trace-context extraction on every call, and a drain with a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::error::RuntimeError;
use crate::health::Health;
use crate::metrics::{GRPC_REQUEST_DURATION_SECONDS, GRPC_REQUESTS_IN_FLIGHT, GRPC_REQUESTS_TOTAL};
use crate::shutdown::Shutdown;

/// Collects a service's gRPC services, then serves them with the standard extras.
pub struct GrpcServer {
    service: &'static str,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    streaming: Vec<&'static str>,
    identity: Option<crate::identity::CallerKey>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer").field("service", &self.service).field("names", &self.names).finish()
    }
}

impl GrpcServer {
    /// `service` labels metrics and logs (`graph`, `document`, ...).
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            descriptor_sets: Vec::new(),
            streaming: Vec::new(),
            identity: None,
            tls: None,
        }
    }

    /// Serves over TLS with `config` ([`crate::tls::TlsSettings::grpc_server`]: the certificate
    /// re-read when it changes, client certificates required when a client CA is set); `None`:
    /// plain TCP.
    pub fn tls(mut self, config: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = config;
        self
    }

    /// With a key, every call but health and reflection must carry caller metadata signed with
    /// it ([`crate::identity`]); without, none is checked.
    pub fn caller_identity(mut self, key: Option<crate::identity::CallerKey>) -> Self {
        self.identity = key;
        self
    }

    /// A client-streaming method (full path, `/package.Service/Method`): its request is many
    /// messages, so the one-message frame check leaves it alone.
    pub fn streaming_method(mut self, path: &'static str) -> Self {
        self.streaming.push(path);
        self
    }

    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: Service<Request<tonic::body::Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Registers an encoded `FileDescriptorSet` for reflection.
    pub fn file_descriptor_set(mut self, fds: &'static [u8]) -> Self {
        self.descriptor_sets.push(fds);
        self
    }

    /// Serves until `stop` fires: health turns NOT_SERVING, the listener closes, in-flight calls
    /// get up to `grace` to finish, then the rest are dropped.
    pub async fn serve(
        self,
        listener: TcpListener,
        health: Health,
        stop: Shutdown,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let health_service = tonic_health::pb::health_server::HealthServer::new(tonic_health_service(&health));
        for name in &self.names {
            health.add_grpc_service(name);
            health.reporter().set_service_status(*name, tonic_health::ServingStatus::Serving).await;
        }
        health.reporter().set_service_status("", tonic_health::ServingStatus::Serving).await;

        // google.rpc's error details too, so a reflecting client (grpcurl) can print them.
        let mut v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        let mut v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        for fds in &self.descriptor_sets {
            v1 = v1.register_encoded_file_descriptor_set(fds);
            v1alpha = v1alpha.register_encoded_file_descriptor_set(fds);
        }
        let v1 = v1.build_v1().map_err(|e| RuntimeError::Telemetry(format!("reflection v1: {e}")))?;
        let v1alpha =
            v1alpha.build_v1alpha().map_err(|e| RuntimeError::Telemetry(format!("reflection v1alpha: {e}")))?;

        let mut routes = self.routes;
        routes.add_service(health_service).add_service(v1).add_service(v1alpha);

        let signal = {
            let health = health.clone();
            let stop = stop.clone();
            async move {
                stop.wait().await;
                health.mark_shutting_down().await;
            }
        };
        let router = tonic::transport::Server::builder()
            .layer(RedLayer { service: Arc::from(self.service) })
            // Inside the RED layer, so refused calls are counted with their code.
            .layer(crate::identity::CallerIdentityLayer { key: self.identity.clone() })
            .layer(crate::unary_frames::UnaryFramesLayer { streaming: self.streaming.into() })
            .add_routes(routes.routes());
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match self.tls {
            // Handshakes through the reloading resolver, so a rotated certificate is served.
            Some(config) => {
                Box::pin(router.serve_with_incoming_shutdown(crate::tls::TlsIncoming::new(listener, config)?, signal))
            }
            None => {
                // `serve_with_incoming*` ignores the builder's TCP settings: without TCP_NODELAY
                // small responses wait on Nagle + delayed ACK (~40 ms per call).
                let incoming =
                    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |conn| {
                        conn.and_then(|stream| stream.set_nodelay(true).map(|()| stream))
                    });
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
        };
        tokio::pin!(server);
        let deadline = async {
            stop.wait().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = &mut server => {
                tracing::info!(service = self.service, "gRPC server drained");
                result.map_err(RuntimeError::from)
            }
            () = deadline => {
                tracing::warn!(service = self.service, ?grace, "drain deadline passed; dropping in-flight calls");
                Ok(())
            }
        }
    }
}

/// tonic-health's service over the reporter that [`Health`] drives.
fn tonic_health_service(health: &Health) -> tonic_health::server::HealthService {
    tonic_health::server::HealthService::from_health_reporter(health.reporter().clone())
}

/// Records rate, errors and duration of every call, and continues the caller's trace.
#[derive(Debug, Clone)]
pub struct RedLayer {
    service: Arc<str>,
}

impl<S> Layer<S> for RedLayer {
    type Service = Red<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Red { inner, service: self.service.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Red<S> {
    inner: S,
    service: Arc<str>,
}

impl<S, B, RB> Service<Request<B>> for Red<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: HttpBody,
{
    type Response = Response<RedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method: Arc<str> = Arc::from(req.uri().path());
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            service = %self.service,
            trace_id = tracing::field::Empty,
        );
        crate::telemetry::continue_http(&span, req.headers());
        if let Some(id) = span.in_scope(crate::telemetry::current_trace_id) {
            span.record("trace_id", id);
        }
        let recorder = Recorder::start(self.service.clone(), method);
        let fut = self.inner.call(req).instrument(span);
        Box::pin(async move {
            match fut.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    // A trailers-only response (every error tonic returns from a handler)
                    // carries the status in the headers; otherwise it comes in the trailers.
                    let recorder = match parts.headers.get("grpc-status") {
                        Some(code) => {
                            recorder.finish(code.as_bytes());
                            None
                        }
                        None => Some(recorder),
                    };
                    Ok(Response::from_parts(parts, RedBody { inner: body, recorder }))
                }
                Err(e) => {
                    recorder.finish(b"13");
                    Err(e)
                }
            }
        })
    }
}

struct Recorder {
    service: Arc<str>,
    method: Arc<str>,
    start: Instant,
    done: bool,
}

impl Recorder {
    fn start(service: Arc<str>, method: Arc<str>) -> Self {
        metrics::gauge!(GRPC_REQUESTS_IN_FLIGHT, "service" => service.to_string()).increment(1.0);
        Self { service, method, start: Instant::now(), done: false }
    }

    fn finish(mut self, grpc_status: &[u8]) {
        self.record(tonic::Code::from_bytes(grpc_status));
    }

    fn record(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let labels =
            [("service", self.service.to_string()), ("method", self.method.to_string()), ("code", format!("{code:?}"))];
        metrics::counter!(GRPC_REQUESTS_TOTAL, &labels).increment(1);
        metrics::histogram!(GRPC_REQUEST_DURATION_SECONDS, &labels).record(self.start.elapsed().as_secs_f64());
        metrics::gauge!(GRPC_REQUESTS_IN_FLIGHT, "service" => self.service.to_string()).decrement(1.0);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the client went away.
        self.record(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// Watches a response body for its trailers, where gRPC puts the final status.
    pub struct RedBody<B> {
        #[pin]
        inner: B,
        recorder: Option<Recorder>,
    }
}

impl<B: HttpBody> HttpBody for RedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(r) = this.recorder.take()
                {
                    let code = trailers.get("grpc-status").map_or(b"0".as_slice(), |v| v.as_bytes());
                    r.finish(code);
                }
            }
            Some(Err(_)) => {
                if let Some(r) = this.recorder.take() {
                    r.finish(b"13");
                }
            }
            None => {
                if let Some(r) = this.recorder.take() {
                    // Ended without trailers: not valid gRPC, count it as unknown.
                    r.finish(b"2");
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
