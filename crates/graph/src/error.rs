//! The graph service's one error enum, mapped to a gRPC status (with a stable code and field
//! details) through the shared error-code table.

use cim_aggregate::ExecutorError;
use cim_core::{ErrorCode, FieldViolation};
use cim_eventstore::StoreError;
use cim_runtime::status::{HasErrorCode, into_status};

use crate::domain::GraphError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Edge(#[from] cim_runtime::edge::EdgeError),
    #[error("graph not found")]
    GraphNotFound,
    #[error("{0} not found")]
    ElementNotFound(String),
    #[error(transparent)]
    Domain(#[from] GraphError),
    /// A command the kit's executor refused (the graph's own rules included).
    #[error(transparent)]
    Command(#[from] ExecutorError<GraphError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Invalid { .. } => ErrorCode::InvalidArgument,
            ServiceError::Edge(e) => e.code(),
            ServiceError::GraphNotFound | ServiceError::ElementNotFound(_) => ErrorCode::NotFound,
            ServiceError::Domain(e) => e.code(),
            ServiceError::Command(e) => e.code(),
            ServiceError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            ServiceError::Store(e) => e.code(),
            ServiceError::Database(e) if cim_runtime::postgres::is_transient(e) => ErrorCode::Unavailable,
            ServiceError::Database(_) => ErrorCode::Internal,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            ServiceError::Domain(e) => e.field_violation().into_iter().collect(),
            ServiceError::Command(e) => e.violations(),
            ServiceError::Edge(e) => e.violations(),
            _ => vec![],
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        into_status(&e)
    }
}
