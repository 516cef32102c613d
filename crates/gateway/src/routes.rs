//! The REST table: one line per route, `.writer(routes!(add_node))`. A handler's
//! `#[utoipa::path]` states its method and path once; from that one line come the axum route, its
//! OpenAPI operation (with the schemas it names) and the role [`crate::authz`] checks. A domain
//! module's `routes(purpose)` is its whole table; the app merges the tables (`app::domains`),
//! once to serve and, when the document is first asked for, once to describe ([`Purpose`]).

use std::collections::btree_map::Entry;

use axum::Router;
use cim_auth::Role;
use http::Method;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::PathItem;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::authz::{RouteRole, Rules};

pub use utoipa_axum::routes;

/// What a table is read for. Each `routes!` line brings its OpenAPI operation and schemas along;
/// merged for all routes they were the gateway's largest allocation at start (about 2 MiB,
/// freed at once but kept resident by the allocator), so the routers to serve are built without
/// them and the document is built from the same tables when it is first asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The routers and the roles; each line's OpenAPI parts are dropped as it is read.
    Serve,
    /// The OpenAPI document and the roles; no routers.
    Describe,
}

/// Routes with their OpenAPI operations and roles: those behind authentication, and the public
/// ones (a signed link, logging out of an expired session), which have no role.
pub struct DomainRoutes<S> {
    purpose: Purpose,
    authenticated: Router<S>,
    public: Router<S>,
    openapi: OpenApi,
    rules: Vec<RouteRole>,
}

impl<S> std::fmt::Debug for DomainRoutes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainRoutes")
            .field("purpose", &self.purpose)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// What the app serves or describes: the two routers (empty when describing), their one OpenAPI
/// description (empty when serving), and the rules (both).
#[allow(missing_debug_implementations)] // routers and a document: nothing to show
pub struct Parts<S> {
    pub authenticated: Router<S>,
    pub public: Router<S>,
    pub openapi: OpenApi,
    pub rules: Rules,
}

impl<S: Clone + Send + Sync + 'static> DomainRoutes<S> {
    pub fn new(purpose: Purpose) -> Self {
        Self {
            purpose,
            authenticated: Router::new(),
            public: Router::new(),
            openapi: OpenApi::default(),
            rules: Vec::new(),
        }
    }

    /// Any authenticated caller.
    pub fn signed_in(self, route: UtoipaMethodRouter<S>) -> Self {
        self.route(None, route)
    }

    pub fn reader(self, route: UtoipaMethodRouter<S>) -> Self {
        self.route(Some(Role::Reader), route)
    }

    pub fn writer(self, route: UtoipaMethodRouter<S>) -> Self {
        self.route(Some(Role::Writer), route)
    }

    pub fn admin(self, route: UtoipaMethodRouter<S>) -> Self {
        self.route(Some(Role::Admin), route)
    }

    /// No credentials: mounted outside authentication, so it has no rule.
    pub fn public(mut self, route: UtoipaMethodRouter<S>) -> Self {
        let router = std::mem::take(&mut self.public);
        self.public = self.add(router, route);
        self
    }

    fn route(mut self, role: Option<Role>, route: UtoipaMethodRouter<S>) -> Self {
        for (path, item) in route.1.paths.iter() {
            self.rules.extend(methods(item).map(|method| (method, path.clone(), role)));
        }
        let router = std::mem::take(&mut self.authenticated);
        self.authenticated = self.add(router, route);
        self
    }

    /// One `routes!` line into `router` (serving) or into the document (describing), as
    /// `utoipa_axum`'s `OpenApiRouter::routes` does with both.
    fn add(&mut self, router: Router<S>, (schemas, paths, method_router): UtoipaMethodRouter<S>) -> Router<S> {
        match self.purpose {
            Purpose::Serve => paths.paths.keys().fold(router, |router, path| {
                router.route(if path.is_empty() { "/" } else { path }, method_router.clone())
            }),
            Purpose::Describe => {
                for (path, item) in paths.paths {
                    match self.openapi.paths.paths.entry(path) {
                        Entry::Occupied(mut listed) => listed.get_mut().merge_operations(item),
                        Entry::Vacant(free) => {
                            free.insert(item);
                        }
                    }
                }
                self.openapi.components.get_or_insert_with(Default::default).schemas.extend(schemas);
                router
            }
        }
    }

    pub fn merge(mut self, other: Self) -> Self {
        self.authenticated = self.authenticated.merge(other.authenticated);
        self.public = self.public.merge(other.public);
        self.openapi.merge(other.openapi);
        self.rules.extend(other.rules);
        self
    }

    pub fn into_parts(self) -> Parts<S> {
        Parts {
            authenticated: self.authenticated,
            public: self.public,
            openapi: self.openapi,
            rules: Rules::new(self.rules),
        }
    }
}

/// The methods a path item has operations for.
fn methods(item: &PathItem) -> impl Iterator<Item = Method> + use<> {
    [
        (Method::GET, item.get.is_some()),
        (Method::PUT, item.put.is_some()),
        (Method::POST, item.post.is_some()),
        (Method::DELETE, item.delete.is_some()),
        (Method::PATCH, item.patch.is_some()),
        (Method::HEAD, item.head.is_some()),
        (Method::OPTIONS, item.options.is_some()),
    ]
    .into_iter()
    .filter_map(|(method, present)| present.then_some(method))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::{DomainRoutes, Purpose, routes};

    #[utoipa::path(get, path = "/things/{id}", params(("id" = String, Path)), responses((status = 200)))]
    async fn read_thing() -> &'static str {
        "read"
    }

    #[utoipa::path(delete, path = "/things/{id}", params(("id" = String, Path)), responses((status = 200)))]
    async fn remove_thing() -> &'static str {
        "removed"
    }

    #[utoipa::path(get, path = "/shared", responses((status = 200)))]
    async fn shared() -> &'static str {
        "shared"
    }

    fn table(purpose: Purpose) -> DomainRoutes<()> {
        DomainRoutes::new(purpose).reader(routes!(read_thing)).admin(routes!(remove_thing)).public(routes!(shared))
    }

    async fn answer(router: &axum::Router, method: &str, path: &str) -> (StatusCode, String) {
        let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Served and described from the same lines: every documented operation is routed, the
    /// roles are the same either way, and serving keeps no document.
    #[tokio::test]
    async fn serving_routes_what_describing_documents() {
        let served = table(Purpose::Serve).into_parts();
        let described = table(Purpose::Describe).into_parts();
        let rules = |parts: &super::Parts<()>| parts.rules.iter().cloned().collect::<Vec<_>>();
        assert_eq!(rules(&served), rules(&described));
        assert!(served.openapi.paths.paths.is_empty());
        let documented: Vec<&String> = described.openapi.paths.paths.keys().collect();
        assert_eq!(documented, ["/shared", "/things/{id}"]);

        let authenticated = served.authenticated.with_state(());
        assert_eq!(answer(&authenticated, "GET", "/things/7").await, (StatusCode::OK, "read".into()));
        assert_eq!(answer(&authenticated, "DELETE", "/things/7").await, (StatusCode::OK, "removed".into()));
        assert_eq!(answer(&authenticated, "PUT", "/things/7").await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer(&authenticated, "GET", "/shared").await.0, StatusCode::NOT_FOUND);
        let public = served.public.with_state(());
        assert_eq!(answer(&public, "GET", "/shared").await, (StatusCode::OK, "shared".into()));
    }
}
