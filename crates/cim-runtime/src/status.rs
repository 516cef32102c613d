//! One way from a service's error to a gRPC status: every service's error enum says its
//! [`ErrorCode`] (and the fields at fault), and [`into_status`] builds the standard rich status.

use cim_core::{ErrorCode, FieldViolation};

/// An error that knows what it means to a client.
pub trait HasErrorCode: std::fmt::Display {
    fn code(&self) -> ErrorCode;

    /// The request fields at fault, for `INVALID_ARGUMENT`.
    fn violations(&self) -> Vec<FieldViolation> {
        Vec::new()
    }
}

/// The status a client sees. An internal error's text stays in the log: the reply says only
/// that it happened.
pub fn into_status(e: &impl HasErrorCode) -> tonic::Status {
    let code = e.code();
    let message = if code == ErrorCode::Internal {
        tracing::error!(error = %e, "internal error");
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    cim_proto::status::error_status(code, message, &e.violations())
}
