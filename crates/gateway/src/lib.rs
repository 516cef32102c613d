//! The REST/JSON gateway: `/api/v1/...` over the domain services' gRPC APIs.
//!
//! - [`app`]: state, router and lifecycle; [`graph`], [`document`], [`agent`], [`workflow`], [`webhook`]: each domain's
//!   DTOs, handlers and route table (one module per domain, on [`rest`] and [`routes`]: one line
//!   per route gives the route, its OpenAPI operation and its role); [`accounts`]: the caller's
//!   own routes (me, sessions, API keys).
//! - [`auth`]: bearer tokens, API keys, sessions; [`lockout`]: failed authentications per
//!   client address; [`client`]: the client's address and scheme behind trusted proxies;
//!   [`authz`]: the role check over every domain's route table; [`limits`]: rate limits,
//!   deadline, bodies, metrics; [`security_headers`]: what every answer tells the browser.
//! - [`cache`]: cached GETs invalidated by events; [`idempotency`]: `Idempotency-Key` replay.
//! - [`problem`]: problem+json from the one error-code table; [`extract`]: extractors whose
//!   refusals are problem+json; [`upstream`]: gRPC clients.
//! - [`console`]: the web console's pages, embedded in the binary, served at `/`.
//! - [`openapi`]: the shared parts of the OpenAPI 3.1 document served at `/api/openapi.json`.

pub mod accounts;
pub mod agent;
pub mod app;
pub mod auth;
pub mod authz;
pub mod cache;
pub mod client;
pub mod console;
pub mod document;
pub mod extract;
pub mod graph;
pub mod idempotency;
pub mod limits;
pub mod links;
pub mod lockout;
pub mod openapi;
pub mod operations;
pub mod problem;
pub mod rest;
pub mod routes;
pub mod security_headers;
pub mod upstream;
pub mod webhook;
pub mod workflow;
