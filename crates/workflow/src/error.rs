//! The workflow service's error enum, mapped to a gRPC status through the shared error-code table.

use cim_aggregate::ExecutorError;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::{HasErrorCode, into_status};

use crate::definition::DefinitionError;
use crate::instance::WorkflowError;
use crate::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Edge(#[from] cim_runtime::edge::EdgeError),
    #[error(transparent)]
    Definition(#[from] ExecutorError<DefinitionError>),
    #[error(transparent)]
    Workflow(#[from] ExecutorError<WorkflowError>),
    #[error("{0}")]
    NotFound(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] cim_eventstore::StoreError),
    /// A stored row or event the rules would never have written.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Invalid { .. } | ServiceError::Spec(_) => ErrorCode::InvalidArgument,
            ServiceError::Edge(e) => e.code(),
            ServiceError::Definition(e) => e.code(),
            ServiceError::Workflow(e) => e.code(),
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Store(e) => e.code(),
            ServiceError::Database(e) if cim_runtime::postgres::is_transient(e) => ErrorCode::Unavailable,
            ServiceError::Database(_) | ServiceError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            ServiceError::Spec(e) => vec![FieldViolation::new(e.field.clone(), e.reason.clone())],
            ServiceError::Edge(e) => e.violations(),
            ServiceError::Definition(e) => e.violations(),
            ServiceError::Workflow(e) => e.violations(),
            _ => vec![],
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        into_status(&e)
    }
}
