//! The workflow domain service: durable workflows built on the domain kit (`cim-aggregate`).
//!
//! - [`spec`]: a definition's JSON (steps, kinds, dependencies, retries) parsed and validated;
//!   [`expr`]: the CEL expressions decisions and automated steps evaluate.
//! - [`definition`], [`instance`], [`events`]: the two aggregates' rules and events, pure Rust;
//!   [`instance`]'s `advance` is the engine's whole decision for one instance at one instant.
//! - [`projection`], [`queries`]: the tables in schema `workflow` (with the due-work table).
//! - [`engine`]: the loop that claims due instances under a lease, advances them and sends what
//!   their steps send ([`calls`]: another service's method by name, JSON in and out);
//!   [`listen`]: the consumers handing other domains' events to waiting steps and triggers;
//!   [`metrics`]: their metric names.
//! - [`service`]: the gRPC edge; [`app`]: wiring for `cim serve` and the service's binary.

pub mod app;
pub mod calls;
pub mod definition;
pub mod engine;
pub mod error;
pub mod events;
/// The CEL expressions (the kit's: webhook conditions use them too).
pub use cim_aggregate::expr;
pub mod instance;
pub mod listen;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod service;
pub mod spec;

/// The schema this service owns.
pub const SCHEMA: &str = "workflow";

/// The projections' migrations (versions 1001+), applied after the event store's.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}
