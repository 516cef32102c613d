//! The document service's error enum, mapped to a gRPC status through the shared error-code
//! table.

use cim_aggregate::ExecutorError;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::{HasErrorCode, into_status};

use crate::content::ContentError;
use crate::domain::DocumentError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Edge(#[from] cim_runtime::edge::EdgeError),
    #[error(transparent)]
    Command(#[from] ExecutorError<DocumentError>),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The client's upload stream broke (cancelled, reset, an undecodable message).
    #[error("upload stream: {}", .0.message())]
    Stream(tonic::Status),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl From<DocumentError> for ServiceError {
    fn from(e: DocumentError) -> Self {
        ServiceError::Command(ExecutorError::Rule(e))
    }
}

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Invalid { .. } => ErrorCode::InvalidArgument,
            ServiceError::Edge(e) => e.code(),
            ServiceError::Command(e) => e.code(),
            ServiceError::Content(e) => match e {
                ContentError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
                ContentError::Empty | ContentError::BadCid(_) | ContentError::Mismatch { .. } => {
                    ErrorCode::InvalidArgument
                }
                ContentError::Store { .. } => ErrorCode::Unavailable,
                ContentError::Missing { .. } => ErrorCode::Internal,
                ContentError::Database(e) => database_code(e),
            },
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Precondition(_) => ErrorCode::FailedPrecondition,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Database(e) => database_code(e),
            ServiceError::Stream(status) => match status.code() {
                tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
                tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
                _ => ErrorCode::Cancelled,
            },
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            ServiceError::Edge(e) => e.violations(),
            ServiceError::Command(e) => e.violations(),
            ServiceError::Content(e @ (ContentError::BadCid(_) | ContentError::Mismatch { .. })) => {
                vec![FieldViolation::new("start.expected_cid", e.to_string())]
            }
            ServiceError::Content(e @ ContentError::Empty) => vec![FieldViolation::new("chunk", e.to_string())],
            _ => vec![],
        }
    }
}

fn database_code(e: &sqlx::Error) -> ErrorCode {
    if cim_runtime::postgres::is_transient(e) { ErrorCode::Unavailable } else { ErrorCode::Internal }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        into_status(&e)
    }
}
