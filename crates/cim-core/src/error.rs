//! The one table that says what every failure means to a gRPC client and to an HTTP client.
//! Every crate's error enum maps onto an [`ErrorCode`]; the edges (tonic status, problem+json)
//! read this table and nothing else.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: bad ids, missing fields, values out of range.
    InvalidArgument,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials, insufficient role.
    PermissionDenied,
    /// Unknown, or owned by another tenant (we never say which, so ids don't leak).
    NotFound,
    /// Creating something whose id is taken.
    AlreadyExists,
    /// A business rule forbids the change in the current state (archived graph, bad transition).
    FailedPrecondition,
    /// Optimistic concurrency: `expected_version` is stale. Reload and retry.
    Conflict,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// Rate limit or quota exceeded.
    RateLimited,
    /// The caller gave up.
    Cancelled,
    /// A deadline passed before the work was done.
    DeadlineExceeded,
    /// A dependency (Postgres, NATS, a domain service) is not answering; retry later.
    Unavailable,
    /// The operation is not offered.
    Unimplemented,
    /// A bug or an unexpected state on our side.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::FailedPrecondition,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Cancelled,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Unimplemented,
        ErrorCode::Internal,
    ];

    /// Stable machine-readable name, used in problem+json `code` and gRPC error details.
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    pub fn grpc(self) -> Code {
        self.row().1
    }

    pub fn http(self) -> StatusCode {
        StatusCode::from_u16(self.row().2).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Short human title for problem+json.
    pub fn title(self) -> &'static str {
        self.row().3
    }

    /// Whether a client may retry the same request unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Conflict | ErrorCode::Unavailable | ErrorCode::DeadlineExceeded | ErrorCode::RateLimited
        )
    }

    fn row(self) -> (&'static str, Code, u16, &'static str) {
        use ErrorCode::*;
        match self {
            InvalidArgument => ("invalid_argument", Code::InvalidArgument, 400, "Invalid argument"),
            Unauthenticated => ("unauthenticated", Code::Unauthenticated, 401, "Unauthenticated"),
            PermissionDenied => ("permission_denied", Code::PermissionDenied, 403, "Permission denied"),
            NotFound => ("not_found", Code::NotFound, 404, "Not found"),
            AlreadyExists => ("already_exists", Code::AlreadyExists, 409, "Already exists"),
            FailedPrecondition => ("failed_precondition", Code::FailedPrecondition, 422, "Rule violated"),
            Conflict => ("conflict", Code::Aborted, 409, "Version conflict"),
            PayloadTooLarge => ("payload_too_large", Code::OutOfRange, 413, "Payload too large"),
            RateLimited => ("rate_limited", Code::ResourceExhausted, 429, "Too many requests"),
            // 499 is nginx's "client closed request": there is no standard code.
            Cancelled => ("cancelled", Code::Cancelled, 499, "Cancelled"),
            DeadlineExceeded => ("deadline_exceeded", Code::DeadlineExceeded, 504, "Deadline exceeded"),
            Unavailable => ("unavailable", Code::Unavailable, 503, "Unavailable"),
            Unimplemented => ("unimplemented", Code::Unimplemented, 501, "Not implemented"),
            Internal => ("internal", Code::Internal, 500, "Internal error"),
        }
    }

    /// What a gRPC status from another service means here (the gateway's direction).
    pub fn from_grpc(code: Code) -> ErrorCode {
        use ErrorCode::*;
        match code {
            Code::InvalidArgument => InvalidArgument,
            Code::Unauthenticated => Unauthenticated,
            Code::PermissionDenied => PermissionDenied,
            Code::NotFound => NotFound,
            Code::AlreadyExists => AlreadyExists,
            Code::FailedPrecondition => FailedPrecondition,
            Code::Aborted => Conflict,
            Code::OutOfRange => PayloadTooLarge,
            Code::ResourceExhausted => RateLimited,
            Code::Cancelled => Cancelled,
            Code::DeadlineExceeded => DeadlineExceeded,
            Code::Unavailable => Unavailable,
            Code::Unimplemented => Unimplemented,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => Internal,
        }
    }

    pub fn from_str_code(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bad field of a request, reported with `INVALID_ARGUMENT` / HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldViolation {
    /// Path to the field, dotted: `node.properties.color`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_variant_has_a_complete_distinct_mapping() {
        let mut names = HashSet::new();
        let mut grpc = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(names.insert(code.as_str()), "duplicate name {code}");
            assert!(grpc.insert(code.grpc() as i32), "duplicate gRPC code for {code}");
            assert_ne!(code.grpc(), Code::Ok);
            assert!(code.http().as_u16() >= 400, "{code}");
            assert!(!code.title().is_empty());
            assert_eq!(ErrorCode::from_str_code(code.as_str()), Some(code));
            assert_eq!(ErrorCode::from_grpc(code.grpc()), code, "round trip of {code}");
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn the_table_says_what_the_design_says() {
        use ErrorCode::*;
        let expect = [
            (InvalidArgument, Code::InvalidArgument, 400),
            (Unauthenticated, Code::Unauthenticated, 401),
            (PermissionDenied, Code::PermissionDenied, 403),
            (NotFound, Code::NotFound, 404),
            (AlreadyExists, Code::AlreadyExists, 409),
            (FailedPrecondition, Code::FailedPrecondition, 422),
            (Conflict, Code::Aborted, 409),
            (PayloadTooLarge, Code::OutOfRange, 413),
            (RateLimited, Code::ResourceExhausted, 429),
            (Cancelled, Code::Cancelled, 499),
            (DeadlineExceeded, Code::DeadlineExceeded, 504),
            (Unavailable, Code::Unavailable, 503),
            (Unimplemented, Code::Unimplemented, 501),
            (Internal, Code::Internal, 500),
        ];
        assert_eq!(expect.len(), ErrorCode::ALL.len());
        for (code, g, h) in expect {
            assert_eq!(code.grpc(), g, "{code}");
            assert_eq!(code.http().as_u16(), h, "{code}");
        }
    }

    #[test]
    fn unexpected_grpc_codes_are_internal() {
        for c in [Code::Unknown, Code::DataLoss, Code::Internal, Code::Ok] {
            assert_eq!(ErrorCode::from_grpc(c), ErrorCode::Internal);
        }
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        assert!(ErrorCode::Conflict.is_retryable());
        assert!(ErrorCode::Unavailable.is_retryable());
        assert!(!ErrorCode::InvalidArgument.is_retryable());
        assert!(!ErrorCode::NotFound.is_retryable());
    }
}
