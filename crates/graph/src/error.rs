//! The graph service's errors: the kit's common ones, its rules' and its executor's refusals,
//! and what its queries do not find.

use cim_aggregate::ExecutorError;
use cim_aggregate::service_error::Common;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::HasErrorCode;

use crate::domain::GraphError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Common(#[from] Common),
    #[error("graph not found")]
    GraphNotFound,
    #[error("{0} not found")]
    ElementNotFound(String),
    #[error(transparent)]
    Domain(#[from] GraphError),
    /// A command the kit's executor refused (the graph's own rules included).
    #[error(transparent)]
    Command(#[from] ExecutorError<GraphError>),
}

cim_aggregate::service_error!(ServiceError);

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Common(e) => e.code(),
            ServiceError::GraphNotFound | ServiceError::ElementNotFound(_) => ErrorCode::NotFound,
            ServiceError::Domain(e) => e.code(),
            ServiceError::Command(e) => e.code(),
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Common(e) => e.violations(),
            ServiceError::Domain(e) => e.field_violation().into_iter().collect(),
            ServiceError::Command(e) => e.violations(),
            ServiceError::GraphNotFound | ServiceError::ElementNotFound(_) => vec![],
        }
    }
}
