//! What CIM's tests and benchmarks repeat; a dev-dependency only.
//!
//! - [`bench`]: a throughput point measured with the latency of every operation in it, so each
//!   rate a benchmark reports comes with its p50 and p99.

pub mod bench;
