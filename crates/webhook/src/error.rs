//! The webhook service's error enum, mapped to a gRPC status through the shared error-code table.

use cim_aggregate::ExecutorError;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::{HasErrorCode, into_status};

use crate::subscription::SubscriptionError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Edge(#[from] cim_runtime::edge::EdgeError),
    #[error(transparent)]
    Subscription(#[from] ExecutorError<SubscriptionError>),
    #[error("{0}")]
    NotFound(String),
    /// The receiver did not pass the validation handshake.
    #[error("{0}")]
    Precondition(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Internal(String),
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
            ServiceError::Subscription(e) => e.code(),
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Precondition(_) => ErrorCode::FailedPrecondition,
            ServiceError::Internal(_) => ErrorCode::Internal,
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
            ServiceError::Subscription(e) => e.violations(),
            _ => vec![],
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        into_status(&e)
    }
}
