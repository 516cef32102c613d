//! The graph domain service. Today: the domain model (pure Rust, no I/O, no proto types).
//! The projections, the gRPC service and the `cim-graph` binary build on it.

pub mod domain;
