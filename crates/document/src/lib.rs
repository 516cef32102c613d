//! The document domain service: content-addressed, streamed, versioned documents with a
//! reviewed lifecycle, built on the domain kit (`cim-aggregate`).
//!
//! - [`domain`], [`events`]: the aggregate's rules and events, pure Rust.
//! - [`content`]: the bytes in the object store, named by CIDv1 (raw, BLAKE3).
//! - [`projection`], [`queries`]: the tables in schema `document` and the reads over them.
//! - [`service`]: the gRPC edge; [`sweeper`]: content garbage collection.
//! - [`app`]: wiring for the `cim-document` binary and the monolith.

pub mod app;
pub mod content;
pub mod domain;
pub mod error;
pub mod events;
pub mod metrics;
pub mod projection;
pub mod queries;
pub mod service;
pub mod sweeper;

/// The schema this service owns.
pub const SCHEMA: &str = "document";

/// The projections' migrations (versions 1001+), applied after the event store's.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}
