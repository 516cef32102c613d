//! The graph domain service: graphs of typed nodes and edges carrying JSON properties.
//!
//! - [`domain`]: the aggregate and its rules, pure Rust.
//! - [`service`]: the gRPC edge (tonic), one transaction per command with the event append and
//!   the projections.
//! - [`group_commit`]: the one-round-trip write for additions, checked under the graph's row lock.
//! - [`projection`], [`queries`]: the tables in schema `graph` and the reads over them.
//! - [`app`]: wiring for the `cim-graph` binary and the monolith.

pub mod app;
pub mod convert;
pub mod domain;
pub mod error;
pub mod group_commit;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod service;

/// The schema this service owns.
pub const SCHEMA: &str = "graph";

/// The projections' migrations (versions 1001+), applied after the event store's.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}
