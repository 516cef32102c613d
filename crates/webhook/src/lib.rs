//! The webhook service: subscriptions (a domain and subject filter, an optional condition, a
//! target URL, a signing secret) and the delivery of every matching event to them as a signed
//! CloudEvent over HTTP, built on the domain kit (`cim-aggregate`).
//!
//! - [`subscription`], [`events`]: the aggregate's rules and events, pure Rust.
//! - [`projection`]: `webhook_subscriptions` in schema `webhook`.
//! - [`delivery`]: the intake (one consumer per domain stream), the queue in Postgres, the
//!   sender (retries, Retry-After, 410, dead letters), the handshake; [`signing`]: Standard
//!   Webhooks signatures.
//! - [`service`]: the gRPC edge; [`app`]: wiring for `cim serve` and the service's binary.

pub mod app;
pub mod delivery;
pub mod error;
pub mod events;
pub mod metrics;
pub mod projection;
pub mod service;
pub mod signing;
pub mod subscription;

/// The schema this service owns.
pub const SCHEMA: &str = "webhook";

/// The projection's and queue's migrations (versions 1001+), applied after the event store's.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}
