//! The errors every domain service's edge shares, mapped once to the shared error-code table.
//! A domain's `ServiceError` holds [`Common`] next to its own (its executors' refusals, its
//! content or spec errors) and gets the constructors and conversions from [`service_error!`]:
//!
//! ```ignore
//! #[derive(Debug, thiserror::Error)]
//! pub enum ServiceError {
//!     #[error(transparent)]
//!     Common(#[from] cim_aggregate::service_error::Common),
//!     #[error(transparent)]
//!     Command(#[from] cim_aggregate::ExecutorError<GraphError>),
//! }
//! cim_aggregate::service_error!(ServiceError);
//! ```

use cim_core::{ErrorCode, FieldViolation};
pub use cim_eventstore::StoreError;
pub use cim_runtime::edge::EdgeError;
use cim_runtime::status::HasErrorCode;
#[doc(hidden)]
pub use cim_runtime::status::into_status;

#[derive(Debug, thiserror::Error)]
pub enum Common {
    /// A request field the service refuses (the rules' own refusals come from the executor).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The request's metadata or ids (`cim_runtime::edge`).
    #[error(transparent)]
    Edge(#[from] EdgeError),
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the state it needs is not there.
    #[error("{0}")]
    Precondition(String),
    /// Something the service needs did not answer; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// Transient failures (connections, serialization) are `UNAVAILABLE`, the rest `INTERNAL`.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// A stored row or event the rules would never have written.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// A fault of this process (the system's random source failed, say).
    #[error("{0}")]
    Internal(String),
}

impl HasErrorCode for Common {
    fn code(&self) -> ErrorCode {
        match self {
            Common::Invalid { .. } => ErrorCode::InvalidArgument,
            Common::Edge(e) => e.code(),
            Common::NotFound(_) => ErrorCode::NotFound,
            Common::Precondition(_) => ErrorCode::FailedPrecondition,
            Common::Unavailable(_) => ErrorCode::Unavailable,
            Common::Database(e) => database_code(e),
            Common::Store(e) => e.code(),
            Common::Corrupt(_) | Common::Internal(_) => ErrorCode::Internal,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            Common::Invalid { field, reason } => vec![FieldViolation::new(field.clone(), reason.clone())],
            Common::Edge(e) => e.violations(),
            _ => vec![],
        }
    }
}

/// A database error's code: `UNAVAILABLE` when retrying may help, else `INTERNAL`. For a
/// domain's own errors that wrap one.
pub fn database_code(e: &sqlx::Error) -> ErrorCode {
    if cim_runtime::postgres::is_transient(e) { ErrorCode::Unavailable } else { ErrorCode::Internal }
}

/// For a domain's `ServiceError` with a `Common(Common)` variant: the constructors of the common
/// errors, `?` on database, store and edge errors, and the gRPC status (the standard rich error
/// model, through `HasErrorCode`, which the domain implements with `Common(e) => e.code()`).
#[macro_export]
macro_rules! service_error {
    ($error:ident) => {
        #[allow(dead_code)]
        impl $error {
            pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
                $error::Common($crate::service_error::Common::Invalid { field: field.into(), reason: reason.into() })
            }
            pub fn not_found(what: impl Into<String>) -> Self {
                $error::Common($crate::service_error::Common::NotFound(what.into()))
            }
            pub fn precondition(why: impl Into<String>) -> Self {
                $error::Common($crate::service_error::Common::Precondition(why.into()))
            }
            pub fn unavailable(why: impl Into<String>) -> Self {
                $error::Common($crate::service_error::Common::Unavailable(why.into()))
            }
            pub fn corrupt(what: impl Into<String>) -> Self {
                $error::Common($crate::service_error::Common::Corrupt(what.into()))
            }
            pub fn internal(what: impl Into<String>) -> Self {
                $error::Common($crate::service_error::Common::Internal(what.into()))
            }
        }
        impl From<::sqlx::Error> for $error {
            fn from(e: ::sqlx::Error) -> Self {
                $error::Common(e.into())
            }
        }
        impl From<$crate::service_error::StoreError> for $error {
            fn from(e: $crate::service_error::StoreError) -> Self {
                $error::Common(e.into())
            }
        }
        impl From<$crate::service_error::EdgeError> for $error {
            fn from(e: $crate::service_error::EdgeError) -> Self {
                $error::Common(e.into())
            }
        }
        impl From<$error> for ::tonic::Status {
            fn from(e: $error) -> Self {
                $crate::service_error::into_status(&e)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_database_errors_may_be_retried_and_others_are_internal() {
        assert_eq!(Common::Database(sqlx::Error::PoolTimedOut).code(), ErrorCode::Unavailable);
        assert_eq!(Common::Database(sqlx::Error::RowNotFound).code(), ErrorCode::Internal);
        assert_eq!(Common::Store(StoreError::NotFound(cim_core::AggregateId::new())).code(), ErrorCode::NotFound);
    }

    #[test]
    fn an_invalid_field_is_a_field_violation() {
        let e = Common::Invalid { field: "graph_id".into(), reason: "not a UUID".into() };
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert_eq!(e.violations(), vec![FieldViolation::new("graph_id", "not a UUID")]);
    }
}
