//! The agent service's error enum, mapped to a gRPC status through the shared error-code table.

use cim_aggregate::ExecutorError;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::{HasErrorCode, into_status};

use crate::agent::AgentError;
use crate::task::TaskError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Edge(#[from] cim_runtime::edge::EdgeError),
    #[error(transparent)]
    Agent(#[from] ExecutorError<AgentError>),
    #[error(transparent)]
    Task(#[from] ExecutorError<TaskError>),
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the state it needs is not there (an agent with no worker
    /// connected, a worker for a suspended agent).
    #[error("{0}")]
    Precondition(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A projected row that the rules would never have written.
    #[error("corrupt projection: {0}")]
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
            ServiceError::Invalid { .. } => ErrorCode::InvalidArgument,
            ServiceError::Edge(e) => e.code(),
            ServiceError::Agent(e) => e.code(),
            ServiceError::Task(e) => e.code(),
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Precondition(_) => ErrorCode::FailedPrecondition,
            ServiceError::Corrupt(_) => ErrorCode::Internal,
            ServiceError::Database(e) => {
                if cim_runtime::postgres::is_transient(e) {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Internal
                }
            }
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            ServiceError::Edge(e) => e.violations(),
            ServiceError::Agent(e) => e.violations(),
            ServiceError::Task(e) => e.violations(),
            _ => vec![],
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        into_status(&e)
    }
}
