//! The event store's one error enum, mapped onto the shared error-code table.

use cim_core::{AggregateId, ChainBreak, ErrorCode, UpcastError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency: another writer appended first. Reload and retry.
    #[error("aggregate {aggregate}: expected version {expected}, but it has moved on")]
    Conflict { aggregate: AggregateId, expected: String },
    #[error("aggregate {0} not found")]
    NotFound(AggregateId),
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    #[error(transparent)]
    Chain(#[from] ChainBreak),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The error of a statement written for a group of commands, reported to each of them.
    #[error("{message}")]
    Group { code: ErrorCode, message: String },
}

impl From<cim_streams::StreamError> for StoreError {
    fn from(e: cim_streams::StreamError) -> Self {
        match e {
            cim_streams::StreamError::JetStream(m) => StoreError::JetStream(m),
            cim_streams::StreamError::Invalid(m) => StoreError::Invalid(m),
        }
    }
}

impl StoreError {
    /// The same error for every command of a group (most errors are not `Clone`).
    pub fn for_group(&self) -> StoreError {
        StoreError::Group { code: self.code(), message: self.to_string() }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Conflict { .. } => ErrorCode::Conflict,
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Invalid(_) => ErrorCode::InvalidArgument,
            StoreError::Database(e) if cim_runtime::postgres::is_transient(e) => ErrorCode::Unavailable,
            StoreError::JetStream(_) => ErrorCode::Unavailable,
            StoreError::Group { code, .. } => *code,
            StoreError::Corrupt(_) | StoreError::Upcast(_) | StoreError::Chain(_) | StoreError::Database(_) => {
                ErrorCode::Internal
            }
        }
    }
}
