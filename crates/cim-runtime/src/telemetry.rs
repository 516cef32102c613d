//! Logs, traces and W3C trace-context propagation.
//!
//! A tracer provider is always installed so every request has a trace id (a JSON log line
//! written inside any span of a trace carries it as `trace_id`); spans are exported only when
//! `CIM_OTLP_ENDPOINT` is set.
//!
//! One trace follows a write from the gateway to the websocket client: the gateway's HTTP span
//! injects `traceparent` into its gRPC call; the service's gRPC span (`grpc::RedLayer`)
//! continues it; the event store's append span stores its `traceparent` with the outbox row; the
//! relay's publish span continues that stored context and puts its own into the NATS headers;
//! the websocket server's dispatch span continues those and sends the same `traceparent` in the
//! event frame. The hops after the commit run later, in other tasks or processes: they are
//! children through the propagated context, as OpenTelemetry's messaging conventions have it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};
use crate::error::RuntimeError;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans (`CIM_OTLP_ENDPOINT` set). The spans made per message
/// (the relay's publish, the websocket feed's dispatch) are made only then: without an exporter
/// no one sees them, and the context they would pass on is passed on as received, so a relay
/// publishing its batches pays nothing for traces no one collects.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes spans on shutdown. Keep it alive for the life of the process.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered; bounded so a dead collector cannot hold up exit.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                tracing::warn!(error = %e, "flushing traces failed");
            }
            let _ = p.shutdown_with_timeout(Duration::from_secs(3));
        }
    }
}

/// Installs the global subscriber once per process (the monolith runs many services in one
/// process; later calls return a guard that flushes nothing).
pub fn init(process_name: &str, config: &Config) -> Result<TelemetryGuard, RuntimeError> {
    if PROVIDER.get().is_some() {
        return Ok(TelemetryGuard { provider: None });
    }
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(format!("cim-{process_name}")).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| RuntimeError::Telemetry(format!("OTLP exporter for {endpoint}: {e}")))?;
        builder = builder.with_batch_exporter(exporter);
        EXPORTING.store(true, Ordering::Relaxed);
    }
    let provider = builder.build();
    let tracer = provider.tracer("cim");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter =
        EnvFilter::try_new(&config.log_filter).map_err(|e| RuntimeError::Telemetry(format!("CIM_LOG: {e}")))?;
    let fmt = match config.log_format {
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format().json().with_current_span(true).with_span_list(false);
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .event_format(WithTraceId(json.flatten_event(true)))
                .boxed()
        }
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().with_ansi(colours(&std::io::stdout())).boxed(),
    };
    // CIM_LOG chooses log lines only: spans at info and above are always traced, so quieter
    // logs (`CIM_LOG=warn`) do not break traces (a disabled span has no context to propagate).
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(LevelFilter::INFO))
        .try_init()
        .is_ok();
    if !installed || PROVIDER.set(provider.clone()).is_err() {
        // Someone (a test harness) already owns the global subscriber.
        return Ok(TelemetryGuard { provider: None });
    }
    Ok(TelemetryGuard { provider: Some(provider) })
}

/// Whether log lines written to `out` may carry ANSI colours: only on a terminal, and not when
/// NO_COLOR (https://no-color.org) is set. Logs sent to a file or a pipe (`scripts/up.sh >
/// up.log`, a container runtime, a test) stay plain text.
fn colours(out: &impl std::io::IsTerminal) -> bool {
    out.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The current span's trace id as 32 hex digits, for log fields and error bodies.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A JSON event format that adds the trace id of the span the line is written in as a top-level
/// `trace_id`, whichever span of the trace that is (the JSON format itself shows only the
/// innermost span's own fields), so one search finds every line of a request in every service.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The registry's current span, not the one this layer sees: CIM_LOG filters spans out of
        // the log layer (`CIM_LOG=warn` hides info spans) but not out of the trace. Looked up
        // after the inner format released the span's extensions: reading the OTel context may
        // lock them for writing (a span's OTel data is built on first use).
        let trace_id = tracing::dispatcher::get_default(|d| {
            let current = d.current_span();
            tracing_opentelemetry::get_otel_context(current.id()?, d)
        });
        let sc = trace_id.as_ref().map(|cx| cx.span().span_context().clone());
        match (sc.filter(|sc| sc.is_valid()), line.strip_prefix('{')) {
            (Some(sc), Some(rest)) => write!(out, "{{\"trace_id\":\"{}\",{rest}", sc.trace_id()),
            _ => out.write_str(&line),
        }
    }
}

/// Makes `span` a child of the remote context carried by `extractor`.
fn adopt(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

fn propagator() -> TraceContextPropagator {
    // The W3C propagator is stateless; using it directly keeps helpers working even in tests
    // that never called `init`.
    TraceContextPropagator::new()
}

struct HeaderMapCarrier<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderMapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderMapReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderMapReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the current span's context into outgoing HTTP headers (also gRPC metadata: tonic's
/// metadata is HTTP/2 headers).
pub fn inject_http(headers: &mut http::HeaderMap) {
    propagator().inject_context(&tracing::Span::current().context(), &mut HeaderMapCarrier(headers));
}

/// The current span's W3C `traceparent`, to store with work that continues later (the outbox).
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject_http(&mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Reads a remote parent from incoming HTTP headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HeaderMapReader(headers))
}

/// Parents `span` on the context in `headers`, if any.
pub fn continue_http(span: &tracing::Span, headers: &http::HeaderMap) {
    adopt(span, extract_http(headers));
}

/// The W3C `traceparent` of `span` (not necessarily the current one): what a producer span puts
/// on the message it sends.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let mut headers = http::HeaderMap::new();
    propagator().inject_context(&span.context(), &mut HeaderMapCarrier(&mut headers));
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Parents `span` on a stored W3C `traceparent` (the outbox's), if it parses.
pub fn continue_traceparent(span: &tracing::Span, traceparent: &str) {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == "traceparent").then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent"]
        }
    }
    adopt(span, propagator().extract(&One(traceparent)));
}

/// For outgoing tonic requests.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    let mut headers = std::mem::take(metadata).into_headers();
    inject_http(&mut headers);
    *metadata = tonic::metadata::MetadataMap::from_headers(headers);
}

/// For incoming tonic requests (when not going through the server layer).
pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
    let headers = metadata.clone().into_headers();
    extract_http(&headers)
}

struct NatsCarrier<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsReader<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's context into NATS message headers.
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    propagator().inject_context(&tracing::Span::current().context(), &mut NatsCarrier(headers));
}

/// Reads a remote parent from NATS message headers.
pub fn extract_nats(headers: &async_nats::HeaderMap) -> Context {
    propagator().extract(&NatsReader(headers))
}

/// Parents `span` on the context in a NATS message's headers, if any.
pub fn continue_nats(span: &tracing::Span, headers: &async_nats::HeaderMap) {
    adopt(span, extract_nats(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn http_headers_round_trip_the_trace_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        let cx = extract_http(&headers);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = http::HeaderMap::new();
        propagator().inject_context(&cx, &mut HeaderMapCarrier(&mut out));
        assert_eq!(out.get("traceparent").unwrap(), PARENT);
    }

    #[test]
    fn nats_headers_round_trip_the_trace_context() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", PARENT);
        let cx = extract_nats(&headers);
        assert!(cx.span().span_context().is_remote());
        let mut out = async_nats::HeaderMap::new();
        propagator().inject_context(&cx, &mut NatsCarrier(&mut out));
        assert_eq!(out.get("traceparent").unwrap().as_str(), PARENT);
    }

    #[test]
    fn grpc_metadata_round_trips_the_trace_context() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("traceparent", PARENT.parse().unwrap());
        let cx = extract_grpc(&md);
        assert!(cx.span().span_context().is_valid());
        assert!(
            extract_grpc(&tonic::metadata::MetadataMap::new()).span().span_context().trace_id()
                == opentelemetry::trace::TraceId::INVALID
        );
    }

    #[test]
    fn garbage_trace_headers_are_ignored() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "zz-nope".parse().unwrap());
        assert!(!extract_http(&headers).span().span_context().is_valid());
    }
}
