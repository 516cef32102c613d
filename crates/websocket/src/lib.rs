//! The websocket server: live and resumable event streams for browsers and other clients.
//!
//! - [`protocol`]: the JSON frames, error codes and close codes (`docs/websocket.md`).
//! - [`event`]: a stream event decoded once for routing, the envelope passed through as published.
//! - [`feed`]: one JetStream consumer per domain shared by every client, routing by tenant and
//!   filter, and the gap-free resume from a stream position.
//! - [`responses`]: AI agents' responses followed piece by piece (core NATS, not the streams).
//! - [`queue`]: each client's bounded queue; a client past it is closed, never waited for.
//! - [`connection`]: one socket's session (auth, subscriptions, heartbeats, limits, writer).
//! - [`server`]: the `/ws` route; [`app`]: wiring for the binary and the monolith.

pub mod app;
pub mod connection;
pub mod event;
pub mod feed;
pub mod metrics;
pub mod protocol;
pub mod queue;
pub mod responses;
pub mod server;
