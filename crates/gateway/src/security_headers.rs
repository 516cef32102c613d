//! The headers every gateway answer carries so a browser treats it safely: no MIME sniffing,
//! no framing (`frame-ancestors`), no referrer leaking paths to other sites, and HSTS when the
//! client reached us over HTTPS. A response that sets its own policy (the console's stricter
//! CSP) keeps it.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::client::Proxies;

/// For API answers (JSON, problem+json, streams): nothing in them may load or run anything.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// A year, the value HSTS preload lists expect.
const HSTS: &str = "max-age=31536000";

pub async fn middleware(State(proxies): State<Proxies>, req: Request, next: Next) -> Response {
    let https = proxies.https(req.headers());
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, API_POLICY),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if https {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    res
}
