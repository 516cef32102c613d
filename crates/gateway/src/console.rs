//! The web console: static pages served at `/` and `/console/<file>`, compiled into the binary
//! (`include_str!`), so the console works offline and its version is the gateway's.
//!
//! No bundler and no framework: plain HTML, CSS and a few ES modules that call the gateway's own
//! REST API on the same origin with the console session cookie (`crate::accounts`). There is
//! no build step, so there is no bundle to reproduce; `docs/console.md` says why. These routes
//! are not API operations, so like `/health/*` they stay out of the OpenAPI document and the
//! role table: the pages hold no data, every datum comes through the authenticated API.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cim_core::ErrorCode;

use crate::problem::ApiError;

/// One embedded file: its name under `/console/`, its media type and its text.
struct Asset {
    name: &'static str,
    media_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $media_type:expr) => {
        Asset { name: $name, media_type: $media_type, body: include_str!(concat!("../console/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("signin.js", JS),
    asset!("graphs.js", JS),
    asset!("graph.js", JS),
    asset!("drawing.js", JS),
    asset!("graph-find.js", JS),
    asset!("graph-manage.js", JS),
    asset!("live.js", JS),
    asset!("events.js", JS),
    asset!("operations.js", JS),
    asset!("workflows.js", JS),
    asset!("workflow-control.js", JS),
    asset!("workflow-steps.js", JS),
    asset!("agents.js", JS),
    asset!("agent-actions.js", JS),
    asset!("agent-config.js", JS),
    asset!("documents.js", JS),
    asset!("document-actions.js", JS),
    asset!("document-compliance.js", JS),
];

/// Only this origin's scripts, styles and API: no inline script, nothing from elsewhere (the
/// "works offline, no CDN" promise, enforced by the browser), and no framing. `connect-src
/// 'self'` covers `ws(s)://` to this origin (CSP 3), where nginx and the ingress route `/ws`;
/// a websocket server configured elsewhere (`CIM_GATEWAY_CONSOLE_WEBSOCKET_URL`) is added.
fn policy(websocket_url: Option<&str>) -> HeaderValue {
    let extra = websocket_url.map(|u| format!(" {u}")).unwrap_or_default();
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{extra}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    // The configuration refuses a URL with whitespace, `;`, `,` or quotes.
    HeaderValue::from_str(&policy).expect("the websocket URL is a valid header value")
}

fn serve(asset: &Asset, policy: &HeaderValue) -> Response {
    let mut response = ([(header::CONTENT_TYPE, asset.media_type)], asset.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, policy.clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Revalidated on every load: a new gateway version never runs against old scripts.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn file(name: &str, policy: &HeaderValue) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| serve(a, policy))
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such console file"))
}

/// The console's routes, mounted beside the public API routes.
pub fn routes<S: Clone + Send + Sync + 'static>(websocket_url: Option<&str>) -> Router<S> {
    let policy = policy(websocket_url);
    let index = policy.clone();
    Router::new()
        .route("/", get(move || async move { serve(&ASSETS[0], &index) }))
        .route("/console/{name}", get(move |Path(name): Path<String>| async move { file(&name, &policy) }))
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    /// Every module a page imports is embedded, so a missing file fails here rather than in a
    /// browser.
    #[test]
    fn every_imported_module_is_embedded() {
        for asset in ASSETS {
            for (i, _) in asset.body.match_indices("from \"./") {
                let rest = &asset.body[i + 8..];
                let name = &rest[..rest.find('"').unwrap()];
                assert!(ASSETS.iter().any(|a| a.name == name), "{} imports {name}, which is not embedded", asset.name);
            }
            for (i, _) in
                asset.body.match_indices("src=\"/console/").chain(asset.body.match_indices("href=\"/console/"))
            {
                let rest = &asset.body[i..];
                let start = rest.find("/console/").unwrap() + 9;
                let name = &rest[start..start + rest[start..].find('"').unwrap()];
                assert!(ASSETS.iter().any(|a| a.name == name), "{} links {name}, which is not embedded", asset.name);
            }
        }
    }
}
