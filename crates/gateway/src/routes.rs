//! The REST table: one line per route, `.writer(routes!(add_node))`. A handler's
//! `#[utoipa::path]` states its method and path once; from that one line come the axum route, its
//! OpenAPI operation (with the schemas it names) and the role [`crate::authz`] checks. A domain
//! module's `routes()` is its whole table; the app merges the tables (`app::domains`).

use axum::Router;
use cim_auth::Role;
use http::Method;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::PathItem;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::authz::{RouteRole, Rules};

pub use utoipa_axum::routes;

/// Routes with their OpenAPI operations and roles: those behind authentication, and the public
/// ones (a signed link, logging out of an expired session), which have no role.
pub struct DomainRoutes<S> {
    authenticated: OpenApiRouter<S>,
    public: OpenApiRouter<S>,
    rules: Vec<RouteRole>,
}

impl<S> std::fmt::Debug for DomainRoutes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainRoutes").field("rules", &self.rules).finish_non_exhaustive()
    }
}

/// What the app serves: the two routers, their one OpenAPI description, and the rules.
#[allow(missing_debug_implementations)] // routers and a document: nothing to show
pub struct Parts<S> {
    pub authenticated: Router<S>,
    pub public: Router<S>,
    pub openapi: OpenApi,
    pub rules: Rules,
}

impl<S: Clone + Send + Sync + 'static> Default for DomainRoutes<S> {
    fn default() -> Self {
        Self { authenticated: OpenApiRouter::new(), public: OpenApiRouter::new(), rules: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> DomainRoutes<S> {
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
        self.public = self.public.routes(route);
        self
    }

    fn route(mut self, role: Option<Role>, route: UtoipaMethodRouter<S>) -> Self {
        for (path, item) in route.1.paths.iter() {
            self.rules.extend(methods(item).map(|method| (method, path.clone(), role)));
        }
        self.authenticated = self.authenticated.routes(route);
        self
    }

    pub fn merge(mut self, other: Self) -> Self {
        self.authenticated = self.authenticated.merge(other.authenticated);
        self.public = self.public.merge(other.public);
        self.rules.extend(other.rules);
        self
    }

    pub fn into_parts(self) -> Parts<S> {
        let (authenticated, mut openapi) = self.authenticated.split_for_parts();
        let (public, public_api) = self.public.split_for_parts();
        openapi.merge(public_api);
        Parts { authenticated, public, openapi, rules: Rules::new(self.rules) }
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
