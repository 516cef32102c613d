//! Who may call which route: one table, checked by one layer that runs right after
//! authentication, before anything else can answer (the idempotency replay, the cache). A
//! handler never checks roles itself, so no route can answer from a cache before its check.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use cim_auth::{Principal, Role};
use cim_core::ErrorCode;

use crate::problem::ApiError;

/// The role each authenticated route needs (`None`: any authenticated caller). A route missing
/// here is refused: the table must name every route (tested against the router's OpenAPI paths).
pub const ROUTE_ROLES: &[(Method, &str, Option<Role>)] = &[
    (Method::POST, "/api/v1/graphs", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/graphs/{graph_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/graphs/{graph_id}", Some(Role::Writer)),
    (Method::POST, "/api/v1/graphs/{graph_id}/nodes", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs/{graph_id}/nodes", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}/nodes/{node_id}", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/graphs/{graph_id}/nodes/{node_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/graphs/{graph_id}/nodes/{node_id}", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs/{graph_id}/nodes/{node_id}/neighbors", Some(Role::Reader)),
    (Method::POST, "/api/v1/graphs/{graph_id}/edges", Some(Role::Writer)),
    (Method::GET, "/api/v1/graphs/{graph_id}/edges", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/graphs/{graph_id}/edges/{edge_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/graphs/{graph_id}/edges/{edge_id}", Some(Role::Writer)),
    (Method::POST, "/api/v1/graphs/{graph_id}/batch", Some(Role::Writer)),
    // A query with a body: reading needs no more than the reader role.
    (Method::POST, "/api/v1/graphs/{graph_id}/traverse", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}/shortest-path", Some(Role::Reader)),
    (Method::GET, "/api/v1/graphs/{graph_id}/versions/{version}", Some(Role::Reader)),
    (Method::GET, "/api/v1/auth/me", None),
    (Method::POST, "/api/v1/auth/login", None),
    (Method::POST, "/api/v1/admin/api-keys", Some(Role::Admin)),
    (Method::DELETE, "/api/v1/admin/api-keys/{id}", Some(Role::Admin)),
];

/// What the table says about `method` on `path`: `Some(rule)` for a listed route, `None` when
/// the path is listed for other methods only (axum answers 405), an error when it is not listed.
pub fn rule(method: &Method, path: &str) -> Result<Option<Option<Role>>, ApiError> {
    let mut path_known = false;
    for (m, p, role) in ROUTE_ROLES {
        if *p == path {
            if m == method {
                return Ok(Some(*role));
            }
            path_known = true;
        }
    }
    if path_known {
        Ok(None)
    } else {
        tracing::error!(%method, path, "route missing from authz::ROUTE_ROLES; refused");
        Err(ApiError::new(ErrorCode::PermissionDenied, "this route has no access rule"))
    }
}

/// Fails unless the caller holds `role` (or a higher one).
pub fn require(p: &Principal, role: Role) -> Result<(), ApiError> {
    if p.can(role) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::PermissionDenied, format!("this route needs the {role} role")))
    }
}

/// Checks the caller (set by `auth::middleware`) against [`ROUTE_ROLES`].
pub async fn middleware(req: Request, next: Next) -> Result<Response, ApiError> {
    // Without a matched path the router's fallback answers 404; it needs no rule.
    if let Some(path) = req.extensions().get::<MatchedPath>()
        && let Some(Some(role)) = rule(req.method(), path.as_str())?
    {
        let principal = req
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "credentials required"))?;
        require(principal, role)?;
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the OpenAPI document (the router's routes) has exactly one rule, and
    /// every rule names a documented operation.
    #[test]
    fn the_table_names_every_authenticated_route() {
        let doc: serde_json::Value = serde_json::from_str(crate::openapi::document()).unwrap();
        let public = [("post", "/api/v1/auth/logout")];
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                if !public.contains(&(method.as_str(), path.as_str())) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut table: Vec<(String, String)> =
            ROUTE_ROLES.iter().map(|(m, p, _)| (m.as_str().to_owned(), (*p).to_owned())).collect();
        documented.sort();
        table.sort();
        assert_eq!(documented, table);
    }

    #[test]
    fn unknown_paths_are_refused_and_other_methods_pass_to_405() {
        assert!(rule(&Method::GET, "/api/v1/secret").is_err());
        assert_eq!(rule(&Method::PUT, "/api/v1/graphs").unwrap(), None);
        assert_eq!(rule(&Method::GET, "/api/v1/graphs").unwrap(), Some(Some(Role::Reader)));
    }
}
