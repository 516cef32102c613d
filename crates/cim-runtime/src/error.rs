//! The runtime's one error enum. Messages name the dependency, where it was looked for and the
//! variable that configures it, so an operator knows what to fix.

use cim_core::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind { what: String, addr: std::net::SocketAddr, source: std::io::Error },
    #[error("Postgres at {at} (CIM_DATABASE_URL) {what}: {source}")]
    Postgres { at: String, what: String, source: sqlx::Error },
    #[error("migrating schema {schema}: {source}")]
    Migrate { schema: String, source: sqlx::migrate::MigrateError },
    #[error("invalid schema name {0:?}: expected [a-z_][a-z0-9_]* of at most 63 characters")]
    SchemaName(String),
    #[error("NATS at {at} (CIM_NATS_URL): {what}")]
    Nats { at: String, what: String },
    #[error("Redis at {at} (CIM_REDIS_URL): {what}")]
    Redis { at: String, what: String },
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl RuntimeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RuntimeError::Config(_) | RuntimeError::SchemaName(_) => ErrorCode::InvalidArgument,
            RuntimeError::Postgres { .. } | RuntimeError::Nats { .. } | RuntimeError::Redis { .. } => {
                ErrorCode::Unavailable
            }
            RuntimeError::Telemetry(_)
            | RuntimeError::Bind { .. }
            | RuntimeError::Migrate { .. }
            | RuntimeError::Grpc(_)
            | RuntimeError::Io(_) => ErrorCode::Internal,
        }
    }
}
