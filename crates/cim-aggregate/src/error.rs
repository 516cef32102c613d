//! What the executor answers when a command is not carried out, mapped to the shared error
//! codes: the aggregate's own refusals pass through with their codes and field details.

use cim_core::{AggregateId, ErrorCode, FieldViolation};
use cim_eventstore::StoreError;
use cim_runtime::status::HasErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError<E> {
    /// The aggregate's own rules refused the command.
    #[error(transparent)]
    Rule(E),
    #[error("{0} {1} not found")]
    NotFound(&'static str, AggregateId),
    #[error("{0} {1} already exists")]
    Exists(&'static str, AggregateId),
    #[error("{kind} {id} is at version {actual}, not the expected {expected}")]
    Stale { kind: &'static str, id: AggregateId, expected: u64, actual: u64 },
    #[error("{kind} {id} moved on while the command ran (expected version {expected}); reload and retry")]
    Moved { kind: &'static str, id: AggregateId, expected: u64 },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E: HasErrorCode> HasErrorCode for ExecutorError<E> {
    fn code(&self) -> ErrorCode {
        match self {
            ExecutorError::Rule(e) => e.code(),
            ExecutorError::NotFound(..) | ExecutorError::Store(StoreError::NotFound(_)) => ErrorCode::NotFound,
            ExecutorError::Exists(..) => ErrorCode::AlreadyExists,
            ExecutorError::Stale { .. } | ExecutorError::Moved { .. } => ErrorCode::Conflict,
            ExecutorError::Invalid { .. } => ErrorCode::InvalidArgument,
            ExecutorError::Store(e) => e.code(),
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            ExecutorError::Rule(e) => e.violations(),
            ExecutorError::Invalid { field, reason } => vec![FieldViolation::new(*field, reason.clone())],
            _ => vec![],
        }
    }
}

impl<E> ExecutorError<E> {
    /// A write that lost a create race shows up as a conflict of sequence 1 or as a unique
    /// violation in a projection: either way the aggregate exists.
    pub(crate) fn exists_if_create_race(e: StoreError, creates: bool, kind: &'static str, id: AggregateId) -> Self {
        let unique = matches!(&e, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation());
        match e {
            StoreError::Conflict { .. } if creates => ExecutorError::Exists(kind, id),
            _ if creates && unique => ExecutorError::Exists(kind, id),
            e => ExecutorError::Store(e),
        }
    }
}
