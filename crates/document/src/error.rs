//! The document service's errors: the kit's common ones, its executor's refusals, its content
//! store's errors and a broken upload stream.

use cim_aggregate::ExecutorError;
use cim_aggregate::service_error::{Common, database_code};
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::HasErrorCode;

use crate::content::ContentError;
use crate::domain::DocumentError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Common(#[from] Common),
    #[error(transparent)]
    Command(#[from] ExecutorError<DocumentError>),
    #[error(transparent)]
    Content(#[from] ContentError),
    /// The client's upload stream broke (cancelled, reset, an undecodable message).
    #[error("upload stream: {}", .0.message())]
    Stream(tonic::Status),
}

cim_aggregate::service_error!(ServiceError);

impl From<DocumentError> for ServiceError {
    fn from(e: DocumentError) -> Self {
        ServiceError::Command(ExecutorError::Rule(e))
    }
}

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Common(e) => e.code(),
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
            ServiceError::Stream(status) => match status.code() {
                tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
                tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
                _ => ErrorCode::Cancelled,
            },
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Common(e) => e.violations(),
            ServiceError::Command(e) => e.violations(),
            ServiceError::Content(e @ (ContentError::BadCid(_) | ContentError::Mismatch { .. })) => {
                vec![FieldViolation::new("start.expected_cid", e.to_string())]
            }
            ServiceError::Content(e @ ContentError::Empty) => vec![FieldViolation::new("chunk", e.to_string())],
            ServiceError::Content(_) | ServiceError::Stream(_) => vec![],
        }
    }
}
