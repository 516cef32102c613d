//! What every domain's REST module shares: JSON documents to and from `Struct`, timestamps,
//! paging, command options, and the two ways to call a domain service (`command!`, `query!`).
//! A domain module states only its routes, DTOs and the calls they make.

use axum::Json;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A JSON object a caller stores (properties, metadata).
pub type Props = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandQuery {
    /// Fail with 409 unless the aggregate (graph, document, ...) is at this version.
    pub expected_version: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to the route's maximum (a larger one is refused, naming the maximum).
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

/// A command's options from its request: `?expected_version=` and the `Idempotency-Key` header.
#[derive(Debug)]
pub struct Options(pub Option<cim_proto::common::CommandOptions>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Options {
    type Rejection = crate::problem::ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let crate::extract::ApiQuery(q) =
            crate::extract::ApiQuery::<CommandQuery>::from_request_parts(parts, state).await?;
        let idempotency_key = idempotency_key(&parts.headers);
        Ok(Options(Some(cim_proto::common::CommandOptions { expected_version: q.expected_version, idempotency_key })))
    }
}

/// The request's `Idempotency-Key`, which also travels to the domain service as the command's
/// idempotency key (empty: none).
pub fn idempotency_key(headers: &HeaderMap) -> String {
    headers.get(crate::idempotency::HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

pub fn props(s: Option<prost_types::Struct>) -> Props {
    cim_proto::json::struct_to_json(s).unwrap_or_default()
}

/// RFC 3339 with microseconds, UTC.
pub fn ts(t: Option<prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// An RFC 3339 instant from a request, as a protobuf timestamp.
pub fn timestamp(field: &str, s: &str) -> Result<prost_types::Timestamp, crate::problem::ApiError> {
    chrono::DateTime::parse_from_rfc3339(s).map(|t| cim_runtime::edge::timestamp(t.to_utc())).map_err(|e| {
        crate::problem::ApiError::invalid(field, format!("an RFC 3339 instant such as 2026-12-31T23:59:59Z: {e}"))
    })
}

/// A state change's body (suspending an agent, pausing a workflow, ...): why, recorded with the
/// event. The body may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    #[serde(default)]
    pub reason: String,
}

/// One page of a list: its items, and the token for the next page.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// A page of a service's answer: its items as JSON, and its page.
    pub fn of<U>(items: Vec<U>, json: impl FnMut(U) -> T, page: Option<cim_proto::common::PageResponse>) -> Json<Self> {
        Json(Page { items: items.into_iter().map(json).collect(), next_page_token: next_token(page) })
    }
}

pub fn next_token(p: Option<cim_proto::common::PageResponse>) -> Option<String> {
    p.map(|p| p.next_page_token).filter(|t| !t.is_empty())
}

pub fn page(size: Option<u32>, token: Option<String>) -> Option<cim_proto::common::PageRequest> {
    Some(cim_proto::common::PageRequest { page_size: size.unwrap_or(0), page_token: token.unwrap_or_default() })
}

/// A property document from a request. A `Struct` number is a double: an integer it cannot hold
/// exactly (beyond ±(2^53 - 1)) is refused with its path instead of being rounded on its way.
pub fn exact_properties<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Props, D::Error> {
    let props = Props::deserialize(d)?;
    for (key, value) in &props {
        inexact(key, value)?;
    }
    Ok(props)
}

/// One JSON value from a request, held to the same rule as [`exact_properties`].
pub fn exact_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    inexact("", &value)?;
    Ok(value)
}

fn inexact<E: serde::de::Error>(key: &str, value: &serde_json::Value) -> Result<(), E> {
    let Some((path, n)) = cim_proto::json::first_inexact_integer(value) else { return Ok(()) };
    let at = if path.is_empty() || path.starts_with('[') || key.is_empty() {
        format!("{key}{path}")
    } else {
        format!("{key}.{path}")
    };
    let at = if at.is_empty() { "the value".to_owned() } else { at };
    Err(E::custom(format!(
        "the integer {n} at {at} is beyond ±9007199254740991 and would not be kept exactly \
         (properties hold numbers as doubles): send it as a string"
    )))
}

pub fn structure(p: &Props) -> Option<prost_types::Struct> {
    Some(cim_proto::json::json_to_struct(p))
}

/// Calls a command RPC once: `command!(state.upstream, principal, create_document, msg)`.
macro_rules! command {
    ($upstream:expr, $p:expr, $call:ident, $msg:expr) => {
        $upstream.command(&$p, |mut c, req| async move { c.$call(req).await }, $msg).await?
    };
}

/// Calls a query RPC, retried on UNAVAILABLE: `query!(state.upstream, principal, get_document, msg)`.
macro_rules! query {
    ($upstream:expr, $p:expr, $call:ident, $msg:expr) => {
        $upstream.query(&$p, |mut c, req| async move { c.$call(req).await }, $msg).await?
    };
}

pub(crate) use {command, query};

#[cfg(test)]
mod tests {
    use crate::routes::Purpose;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    /// Each domain's protos, where every RPC states its REST route (`google.api.http`).
    const PROTOS: [&str; 5] = [
        include_str!("../../../proto/cim/graph/v1/graph.proto"),
        include_str!("../../../proto/cim/document/v1/document.proto"),
        include_str!("../../../proto/cim/agent/v1/agent.proto"),
        include_str!("../../../proto/cim/workflow/v1/workflow.proto"),
        include_str!("../../../proto/cim/webhook/v1/webhook.proto"),
    ];

    /// Domain routes the gateway adds with no RPC of their own behind them.
    const GATEWAY_ONLY: [(&str, &str); 1] = [
        // Signs a link over the document's versions (ListVersions/GetDocument); the link's own
        // route is public and reads through DownloadContent.
        ("POST", "/api/v1/documents/{document_id}/download-links"),
    ];

    /// One RPC of a proto: its name, whether it streams either way, and its `google.api.http`
    /// route as `(VERB, path)`, if it has one.
    struct Rpc {
        name: String,
        streaming: bool,
        route: Option<(String, String)>,
    }

    /// Every RPC of `proto`; an `option (google.api.http) = { verb: "path" ... }` belongs to the
    /// RPC above it.
    fn rpcs(proto: &str) -> Vec<Rpc> {
        let mut rpcs: Vec<Rpc> = Vec::new();
        for line in proto.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("rpc ") {
                let name = rest.split('(').next().unwrap_or_default().trim().to_owned();
                rpcs.push(Rpc { name, streaming: rest.contains("(stream "), route: None });
            } else if line.contains("option (google.api.http)") {
                let rule = line.split_once('{').map(|(_, r)| r.trim()).unwrap_or_default();
                let (verb, rest) = rule.split_once(':').expect("a verb");
                let path = rest.trim().trim_start_matches('"').split('"').next().expect("a path");
                let rpc = rpcs.last_mut().expect("a route follows its rpc");
                rpc.route = Some((verb.trim().to_uppercase(), path.to_owned()));
            }
        }
        rpcs
    }

    /// The REST table and the protos are one mapping: every domain route the gateway serves is
    /// the annotated route of an RPC, and every annotated route is served. Every unary RPC has
    /// a route; a streaming one may (document content both ways) or may not (an agent's worker
    /// stream: a request and one response cannot carry it).
    #[test]
    fn every_domain_route_is_an_rpcs_google_api_http_route() {
        let tables = [
            crate::graph::routes::<Arc<crate::graph::GraphState>>(Purpose::Serve).into_parts().rules,
            crate::document::routes::<Arc<crate::document::DocumentState>>(Purpose::Serve).into_parts().rules,
            crate::agent::routes::<Arc<crate::agent::AgentState>>(Purpose::Serve).into_parts().rules,
            crate::workflow::routes::<Arc<crate::workflow::WorkflowState>>(Purpose::Serve).into_parts().rules,
            crate::webhook::routes::<Arc<crate::webhook::WebhookState>>(Purpose::Serve).into_parts().rules,
        ];
        let served: BTreeSet<(String, String)> = tables
            .iter()
            .flat_map(|rules| rules.iter())
            .map(|(method, path, _)| (method.as_str().to_owned(), path.clone()))
            .filter(|(m, p)| !GATEWAY_ONLY.contains(&(m.as_str(), p.as_str())))
            .collect();
        let mut annotated = BTreeSet::new();
        for rpc in PROTOS.iter().flat_map(|proto| rpcs(proto)) {
            assert!(rpc.streaming || rpc.route.is_some(), "the unary RPC {} has no google.api.http route", rpc.name);
            annotated.extend(rpc.route);
        }
        assert!(annotated.len() > 40, "the protos were read: {annotated:?}");
        assert_eq!(served, annotated);
    }
}
