//! Failed calls in the standard rich error model: `grpc-status-details-bin` carries a
//! `google.rpc.Status` whose details are `Any`s that grpcurl and every gRPC client library
//! decode. Each failure names its stable CIM code twice: as the `ErrorInfo` reason (upper case,
//! as AIP-193 asks) and exactly, in the `ErrorInfo` metadata key `code`.

use std::collections::HashMap;
use std::time::Duration;

use cim_core::{ErrorCode, FieldViolation};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every CIM error.
pub const ERROR_DOMAIN: &str = "cim";

/// How long a client should wait before retrying a retryable failure.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A failed call: code, message, and the details a client reads.
pub fn error_status(code: ErrorCode, message: impl Into<String>, violations: &[FieldViolation]) -> tonic::Status {
    let metadata = HashMap::from([("code".to_owned(), code.as_str().to_owned())]);
    let mut details = ErrorDetails::with_error_info(code.as_str().to_uppercase(), ERROR_DOMAIN, metadata);
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    if code.is_retryable() {
        details.set_retry_info(Some(RETRY_AFTER));
    }
    tonic::Status::with_error_details(code.grpc(), message, details)
}

/// What a status from a CIM service says: its stable code (from the details, or from the gRPC
/// code when a status carries none, e.g. a transport failure) and its field violations.
pub fn read_status(status: &tonic::Status) -> (ErrorCode, Vec<FieldViolation>) {
    let details = status.get_error_details();
    let code = details
        .error_info()
        .filter(|info| info.domain == ERROR_DOMAIN)
        .and_then(|info| info.metadata.get("code"))
        .and_then(|c| ErrorCode::from_str_code(c))
        .unwrap_or_else(|| on_the_way(status).unwrap_or_else(|| ErrorCode::from_grpc(status.code())));
    let violations = details
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| FieldViolation::new(&v.field, &v.description)).collect())
        .unwrap_or_default();
    (code, violations)
}

/// A status this side's client made from a failure on the way (it keeps the error it came from;
/// one decoded from the wire has none), whose gRPC code says only "unknown": the connection
/// reset by a replica that died mid-call, say. The service decided nothing the caller could
/// fix, so it is `UNAVAILABLE`, which the caller may retry (with its idempotency key), not
/// `INTERNAL`.
fn on_the_way(status: &tonic::Status) -> Option<ErrorCode> {
    let local = std::error::Error::source(status).is_some();
    (local && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Internal)).then_some(ErrorCode::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_off_on_the_way_may_be_retried_and_an_unknown_answer_is_internal() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset by peer");
        let cut = tonic::Status::from_error(Box::new(reset));
        assert_eq!(cut.code(), tonic::Code::Unknown);
        assert_eq!(read_status(&cut).0, ErrorCode::Unavailable);
        // Sent by a server as such: nothing says it happened on the way.
        assert_eq!(read_status(&tonic::Status::unknown("odd")).0, ErrorCode::Internal);
    }

    #[test]
    fn the_stable_code_and_fields_survive_the_wire_form() {
        let status = error_status(
            ErrorCode::InvalidArgument,
            "node.id: bad",
            &[FieldViolation::new("node.id", "expected 1 to 128 characters")],
        );
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // What a client receives: the header form, decoded again.
        let response = status.into_http::<()>();
        let back = tonic::Status::from_header_map(response.headers()).unwrap();
        let (code, violations) = read_status(&back);
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert_eq!(violations, vec![FieldViolation::new("node.id", "expected 1 to 128 characters")]);
        let details = back.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "INVALID_ARGUMENT");
        assert!(details.retry_info().is_none());
        let retry = error_status(ErrorCode::Unavailable, "later", &[]).get_error_details();
        assert_eq!(retry.retry_info().unwrap().retry_delay, Some(RETRY_AFTER));
    }

    #[test]
    fn a_status_without_details_reads_by_its_grpc_code() {
        assert_eq!(read_status(&tonic::Status::unavailable("down")).0, ErrorCode::Unavailable);
        assert_eq!(read_status(&tonic::Status::new(tonic::Code::Aborted, "x")).0, ErrorCode::Conflict);
    }
}
