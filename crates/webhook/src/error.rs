//! The webhook service's errors: the kit's common ones and its executor's refusals.

use cim_aggregate::ExecutorError;
use cim_aggregate::service_error::Common;
use cim_core::{ErrorCode, FieldViolation};
use cim_runtime::status::HasErrorCode;

use crate::subscription::SubscriptionError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Common(#[from] Common),
    #[error(transparent)]
    Subscription(#[from] ExecutorError<SubscriptionError>),
}

cim_aggregate::service_error!(ServiceError);

impl HasErrorCode for ServiceError {
    fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Common(e) => e.code(),
            ServiceError::Subscription(e) => e.code(),
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ServiceError::Common(e) => e.violations(),
            ServiceError::Subscription(e) => e.violations(),
        }
    }
}
