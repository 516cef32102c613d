//! Why an instance refuses a command, mapped to the shared error codes: bad input is
//! INVALID_ARGUMENT, an unknown step NOT_FOUND, a person without the step's role
//! PERMISSION_DENIED, and every broken rule or illegal transition FAILED_PRECONDITION.

use cim_core::{ErrorCode, FieldViolation};
use serde_json::{Map, Value};

use super::CONTEXT_LIMITS;

const TEXT_MAX: usize = 1_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WorkflowError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the workflow is {0}; {1}")]
    Transition(&'static str, &'static str),
    #[error("a workflow cannot start without steps")]
    NoSteps,
    #[error("no step {0:?} in this workflow")]
    NoStep(String),
    #[error("step {step:?} is a {kind} step; {rule}")]
    WrongKind { step: String, kind: &'static str, rule: &'static str },
    #[error("step {step:?} is {status}; {rule}")]
    StepState { step: String, status: &'static str, rule: &'static str },
    #[error("step {step:?} needs role {role:?} or its assignee")]
    NotAllowed { step: String, role: String },
    #[error("nothing is due")]
    NothingDue,
}

impl cim_runtime::status::HasErrorCode for WorkflowError {
    fn code(&self) -> ErrorCode {
        match self {
            WorkflowError::Invalid { .. } => ErrorCode::InvalidArgument,
            WorkflowError::NoStep(_) => ErrorCode::NotFound,
            WorkflowError::NotAllowed { .. } => ErrorCode::PermissionDenied,
            _ => ErrorCode::FailedPrecondition,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            WorkflowError::Invalid { field, reason } => vec![FieldViolation::new(*field, reason.clone())],
            _ => vec![],
        }
    }
}

pub(super) fn invalid(field: &'static str, reason: impl Into<String>) -> WorkflowError {
    WorkflowError::Invalid { field, reason: reason.into() }
}

pub(super) fn check_json(field: &'static str, document: &Map<String, Value>) -> Result<(), WorkflowError> {
    cim_core::document::check(document, &CONTEXT_LIMITS).map_err(|e| invalid(field, e.to_string()))
}

pub(super) fn check_text(field: &'static str, s: &str, required: bool) -> Result<(), WorkflowError> {
    if required && s.trim().is_empty() {
        return Err(invalid(field, "required"));
    }
    if s.len() > TEXT_MAX || s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(field, format!("at most {TEXT_MAX} bytes of printable text")));
    }
    Ok(())
}
