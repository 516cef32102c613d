//! Who may call which route: one table, checked by one layer that runs right after
//! authentication, before anything else can answer (the idempotency replay, the cache). A
//! handler never checks roles itself, so no route can answer from a cache before its check.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use cim_auth::{Principal, Role};
use cim_core::ErrorCode;

use crate::problem::ApiError;

/// A route (method, path template) and the role it needs (`None`: any authenticated caller).
pub type RouteRole = (Method, String, Option<Role>);

/// The role each authenticated route needs, gathered from every domain's route table
/// (`crate::routes`). A route missing from it is refused, so no route is served without a rule.
#[derive(Debug, Clone)]
pub struct Rules(Arc<[RouteRole]>);

impl Rules {
    pub fn new(rules: Vec<RouteRole>) -> Self {
        Self(rules.into())
    }

    pub fn iter(&self) -> impl Iterator<Item = &RouteRole> {
        self.0.iter()
    }

    /// What the tables say about `method` on `path`: `Some(rule)` for a listed route, `None`
    /// when the path is listed for other methods only (axum answers 405), an error when it is
    /// not listed.
    pub(crate) fn rule(&self, method: &Method, path: &str) -> Result<Option<Option<Role>>, ApiError> {
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
            tracing::error!(%method, path, "route missing from every route table; refused");
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
