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

/// Every domain's table of the role each authenticated route needs (`None`: any authenticated
/// caller). A route missing from all of them is refused: together they must name every route
/// (tested against the router's OpenAPI paths). A domain's table lives in its module.
pub const TABLES: &[&[(Method, &str, Option<Role>)]] =
    &[crate::graph::ROUTE_ROLES, crate::document::ROUTE_ROLES, crate::accounts::ROUTE_ROLES];

fn route_roles() -> impl Iterator<Item = &'static (Method, &'static str, Option<Role>)> {
    TABLES.iter().flat_map(|table| table.iter())
}

/// What the table says about `method` on `path`: `Some(rule)` for a listed route, `None` when
/// the path is listed for other methods only (axum answers 405), an error when it is not listed.
pub fn rule(method: &Method, path: &str) -> Result<Option<Option<Role>>, ApiError> {
    let mut path_known = false;
    for (m, p, role) in route_roles() {
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

/// Checks the caller (set by `auth::middleware`) against the [`TABLES`].
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
        let public = [("post", "/api/v1/auth/logout"), ("get", "/api/v1/shared/{token}")];
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                if !public.contains(&(method.as_str(), path.as_str())) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut table: Vec<(String, String)> =
            route_roles().map(|(m, p, _)| (m.as_str().to_owned(), (*p).to_owned())).collect();
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
