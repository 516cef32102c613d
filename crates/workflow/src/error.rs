//! The workflow service's errors: the kit's common ones, a definition's spec errors and its two
//! executors' refusals.

use cim_aggregate::ExecutorError;
use cim_aggregate::service_error::Common;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::HasErrorCode;

use crate::definition::DefinitionError;
use crate::instance::WorkflowError;
use crate::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Common(#[from] Common),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Definition(#[from] ExecutorError<DefinitionError>),
    #[error(transparent)]
    Workflow(#[from] ExecutorError<WorkflowError>),
}

cim_aggregate::service_error!(ServiceError);

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Common(e) => e.code(),
            ServiceError::Spec(_) => ErrorCode::InvalidArgument,
            ServiceError::Definition(e) => e.code(),
            ServiceError::Workflow(e) => e.code(),
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Common(e) => e.violations(),
            ServiceError::Spec(e) => vec![FieldViolation::new(e.field.clone(), e.reason.clone())],
            ServiceError::Definition(e) => e.violations(),
            ServiceError::Workflow(e) => e.violations(),
        }
    }
}
