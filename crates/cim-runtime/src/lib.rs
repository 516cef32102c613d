//! What every CIM service repeats: configuration from `CIM_*` variables, telemetry, the admin
//! listener, gRPC server assembly, ordered graceful shutdown, and connections to Postgres, NATS
//! and Redis. Services compose these; none of them knows about a domain.

pub mod admin;
pub mod config;
pub mod edge;
pub mod error;
pub mod grpc;
pub mod health;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod nats;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod unary_frames;

pub use config::{Config, ServiceKind};
pub use error::RuntimeError;
pub use grpc::GrpcServer;
pub use health::Health;
pub use host::{ServiceHost, bind};
pub use shutdown::Shutdown;
