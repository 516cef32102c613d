//! The OpenAPI 3.1 document, generated from the handlers' annotations and the DTO types.

use std::sync::LazyLock;

use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::graph as g;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "CIM API", description = "REST/JSON over CIM's domain services. Errors are application/problem+json."),
    paths(
        g::create_graph, g::list_graphs, g::get_graph, g::rename_graph, g::archive_graph,
        g::add_node, g::list_nodes, g::get_node, g::update_node, g::remove_node,
        g::add_edge, g::list_edges, g::update_edge, g::remove_edge, g::apply_batch,
        g::neighbors, g::traverse, g::shortest_path, g::graph_at_version,
        crate::accounts::me, crate::accounts::login, crate::accounts::logout, crate::accounts::create_api_key,
        crate::accounts::revoke_api_key,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
)]
struct Doc;

/// Each domain module owns its paths (`<domain>::Api`); this document adds the shared parts.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = Doc::openapi();
    for domain in domains() {
        doc.merge(domain);
    }
    doc.to_pretty_json().unwrap_or_default()
});

/// Every domain module's paths (`<domain>::Api`), in the order they are merged.
fn domains() -> [utoipa::openapi::OpenApi; 2] {
    [crate::document::Api::openapi(), crate::agent::Api::openapi()]
}

pub fn document() -> &'static str {
    DOCUMENT.as_str()
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    /// Merging keeps one schema per name: two domains naming different shapes alike would
    /// silently document one of them wrongly.
    #[test]
    fn no_two_domains_give_one_schema_name_different_shapes() {
        let schemas = |doc: utoipa::openapi::OpenApi| {
            let value = serde_json::to_value(doc).unwrap();
            value["components"]["schemas"].as_object().cloned().unwrap_or_default()
        };
        // Each domain against the shared document and every domain merged before it.
        let mut seen = schemas(super::Doc::openapi());
        for domain in super::domains() {
            for (name, shape) in schemas(domain) {
                if let Some(other) = seen.get(&name) {
                    assert_eq!(other, &shape, "schema {name} means two things");
                }
                seen.insert(name, shape);
            }
        }
    }

    #[test]
    fn every_operation_has_a_summary_and_a_description() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                for field in ["summary", "description"] {
                    let text = op[field].as_str().unwrap_or_default();
                    assert!(!text.trim().is_empty(), "{method} {path} has no {field}");
                }
            }
        }
    }
}
