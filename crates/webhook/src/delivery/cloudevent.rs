//! One event as one HTTP call: a CloudEvent 1.0 in binary mode (the event's payload is the body;
//! its attributes are `ce-*` headers), signed as Standard Webhooks specify, and the answer read
//! as an [`Outcome`]. Also the CloudEvents webhook validation handshake (CloudEvents HTTP Webhook
//! 1.0, section 4) a subscription passes before it is active.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cim_core::EventEnvelope;
use cim_runtime::config::WebhookSettings;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::signing::Secret;

pub const REQUEST_ORIGIN: &str = "webhook-request-origin";
pub const ALLOWED_ORIGIN: &str = "webhook-allowed-origin";
/// What CIM names itself in the handshake.
pub const ORIGIN: &str = "cim";

/// The client every call goes through: no redirects (a receiver's 3xx is an answer, not an
/// instruction to call somewhere else with the signed event), the per-call timeout.
pub fn client(settings: &WebhookSettings) -> Result<reqwest::Client, String> {
    // reqwest's TLS is built without a provider; ring's, as cim-objects installs it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("cim-webhook/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// The headers and body of `event`'s call, signed at `now`.
pub fn request(
    event: &EventEnvelope,
    traceparent: Option<&str>,
    secret: &Secret,
    now: DateTime<Utc>,
) -> (HeaderMap, Vec<u8>) {
    let body = serde_json::to_vec(&event.payload).unwrap_or_default();
    let id = event.event_id.to_string();
    let timestamp = now.timestamp();
    let mut h = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), value);
        }
    };
    put("content-type", "application/json".into());
    put("ce-specversion", "1.0".into());
    put("ce-id", id.clone());
    put("ce-source", format!("/cim/{}/{}", event.domain, event.aggregate_type));
    put("ce-type", format!("cim.{}.{}", event.domain, event.event_type));
    put("ce-subject", event.aggregate_id.to_string());
    put("ce-time", event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    // Extensions (lower-case alphanumerics, as CloudEvents requires).
    put("ce-cimtenant", event.tenant_id.to_string());
    put("ce-cimsequence", event.sequence.to_string());
    put("ce-cimcorrelation", event.correlation_id.to_string());
    // W3C trace context: the sender's span for this call, a child of the event's trace; the
    // event's own traceparent when no tracer runs. Also the CloudEvents distributed-tracing
    // extension's attribute.
    let mut traced = HeaderMap::new();
    cim_runtime::telemetry::inject_http(&mut traced);
    let tp = traced
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| traceparent.map(str::to_owned));
    if let Some(tp) = tp {
        put("traceparent", tp.clone());
        put("ce-traceparent", tp);
    }
    put("webhook-id", id.clone());
    put("webhook-timestamp", timestamp.to_string());
    put("webhook-signature", secret.sign(&id, timestamp, &body));
    (h, body)
}

/// What an answer means for the delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Delivered(u16),
    /// 410 Gone: the receiver wants nothing more; the subscription is disabled.
    Gone,
    /// 429 (or 503) with a Retry-After: the next attempt waits at least that long.
    Throttled { status: u16, retry_after: Duration },
    /// Anything else: no answer (status 0), a timeout, another status.
    Failed { status: u16, reason: String },
}

/// Makes the call.
pub async fn send(client: &reqwest::Client, url: &str, headers: HeaderMap, body: Vec<u8>) -> Outcome {
    match client.post(url).headers(headers).body(body).send().await {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let retry_after =
                answer.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
            match status {
                200..=299 => Outcome::Delivered(status),
                410 => Outcome::Gone,
                429 | 503 if retry_after.is_some() => {
                    Outcome::Throttled { status, retry_after: retry_after.unwrap_or_default() }
                }
                _ => Outcome::Failed { status, reason: format!("answered {}", answer.status()) },
            }
        }
        Err(e) if e.is_timeout() => Outcome::Failed { status: 0, reason: "no answer within the timeout".into() },
        Err(e) => Outcome::Failed { status: 0, reason: format!("no answer: {}", chain(&e)) },
    }
}

/// A Retry-After value: delay-seconds or an HTTP-date.
pub fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or_default())
}

/// The validation handshake: `OPTIONS` with `WebHook-Request-Origin`; the receiver allows CIM
/// by answering 2xx with `WebHook-Allowed-Origin` naming it (or `*`). Answers the allowed origin,
/// or why the receiver did not allow it.
pub async fn handshake(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let answer = client
        .request(reqwest::Method::OPTIONS, url)
        .header(REQUEST_ORIGIN, ORIGIN)
        .send()
        .await
        .map_err(|e| format!("the validation handshake (OPTIONS {url}) got no answer: {}", chain(&e)))?;
    if !answer.status().is_success() {
        return Err(format!("the validation handshake (OPTIONS {url}) was answered {}", answer.status()));
    }
    let allowed = answer.headers().get(ALLOWED_ORIGIN).and_then(|v| v.to_str().ok()).map(str::trim).unwrap_or_default();
    if allowed == ORIGIN || allowed == "*" {
        Ok(allowed.to_owned())
    } else {
        Err(format!(
            "the validation handshake (OPTIONS {url}) did not allow origin {ORIGIN:?}: WebHook-Allowed-Origin was {allowed:?}"
        ))
    }
}

/// An error with its causes, for logs and delivery records.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = (Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let wait = retry_after(&later).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        assert_eq!(retry_after("soon"), None);
    }
}
