//! Who may call which route: one table, checked by one layer that runs right after
//! authentication, before anything else can answer (the idempotency replay, the cache). A
//! handler never checks roles itself, so no route can answer from a cache before its check.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use cim_auth::{Principal, Role};
use cim_core::ErrorCode;

use crate::problem::ApiError;

/// A route (method, path template) and the role it needs (`None`: any authenticated caller).
pub type RouteRole = (Method, &'static str, Option<Role>);

/// Every domain's table of the role each authenticated route needs. A route missing from all of
/// them is refused: together they must name every route (tested against the router's OpenAPI
/// paths). A domain's table lives in its module; the app, which knows every domain, gathers them.
#[derive(Debug, Clone, Copy)]
pub struct Rules(pub &'static [&'static [RouteRole]]);

impl Rules {
    pub fn iter(self) -> impl Iterator<Item = &'static RouteRole> {
        self.0.iter().flat_map(|table| table.iter())
    }

    /// What the tables say about `method` on `path`: `Some(rule)` for a listed route, `None`
    /// when the path is listed for other methods only (axum answers 405), an error when it is
    /// not listed.
    pub(crate) fn rule(self, method: &Method, path: &str) -> Result<Option<Option<Role>>, ApiError> {
        let mut path_known = false;
        for (m, p, role) in self.iter() {
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
            tracing::error!(%method, path, "route missing from app::ROUTE_ROLES; refused");
            Err(ApiError::new(ErrorCode::PermissionDenied, "this route has no access rule"))
        }
    }
}

/// Fails unless the caller holds `role` (or a higher one).
fn require(p: &Principal, role: Role) -> Result<(), ApiError> {
    if p.can(role) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::PermissionDenied, format!("this route needs the {role} role")))
    }
}

/// Checks the caller (set by `auth::middleware`) against the [`Rules`].
pub async fn middleware(State(rules): State<Rules>, req: Request, next: Next) -> Result<Response, ApiError> {
    // Without a matched path the router's fallback answers 404; it needs no rule.
    if let Some(path) = req.extensions().get::<MatchedPath>()
        && let Some(Some(role)) = rules.rule(req.method(), path.as_str())?
    {
        let principal = req
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "credentials required"))?;
        require(principal, role)?;
    }
    Ok(next.run(req).await)
}
