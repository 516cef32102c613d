//! The agent service's errors: the kit's common ones and its two executors' refusals.

use cim_aggregate::ExecutorError;
use cim_aggregate::service_error::Common;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::HasErrorCode;

use crate::agent::AgentError;
use crate::task::TaskError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Among them, a precondition: the request is fine but the state it needs is not there (an
    /// agent with no worker connected, a worker for a suspended agent).
    #[error(transparent)]
    Common(#[from] Common),
    #[error(transparent)]
    Agent(#[from] ExecutorError<AgentError>),
    #[error(transparent)]
    Task(#[from] ExecutorError<TaskError>),
}

cim_aggregate::service_error!(ServiceError);

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Common(e) => e.code(),
            ServiceError::Agent(e) => e.code(),
            ServiceError::Task(e) => e.code(),
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Common(e) => e.violations(),
            ServiceError::Agent(e) => e.violations(),
            ServiceError::Task(e) => e.violations(),
        }
    }
}
