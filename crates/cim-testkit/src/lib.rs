//! What CIM's tests and benchmarks repeat; a dev-dependency only.
//!
//! - [`bench`]: a throughput point measured with the latency of every operation in it, so each
//!   rate a benchmark reports comes with its p50 and p99.
//! - [`domain`]: a domain service on port 0 with its own schema and subject prefix, stopped
//!   with every hash chain verified.
//! - [`s3`]: an S3-compatible server (moto) on a free port.
//! - [`rules`]: an aggregate's rules run the way a replay folds them (each event sealed into an
//!   envelope and read back).

pub mod bench;
pub mod domain;
pub mod rules;
pub mod s3;
