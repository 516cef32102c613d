//! Errors as RFC 9457 problem+json, from one table: every failure carries an [`ErrorCode`],
//! whose HTTP status is defined once in `cim-core` (the same table gives gRPC codes).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cim_core::ErrorCode;
use serde::Serialize;
use utoipa::ToSchema;

/// One offending field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldProblem {
    /// Dotted path of the field, e.g. `node.properties`.
    pub field: String,
    pub reason: String,
}

/// The body of every error response (`application/problem+json`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:cim:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `not_found`.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub errors: Vec<FieldProblem>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// An HTTP status that only HTTP has (405), standing in for the code's own.
    pub http_status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into(), errors: vec![], retry_after: None, http_status: None }
    }

    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let (field, reason) = (field.into(), reason.into());
        Self {
            code: ErrorCode::InvalidArgument,
            detail: format!("{field}: {reason}"),
            errors: vec![FieldProblem { field, reason }],
            retry_after: None,
            http_status: None,
        }
    }

    /// A method the route does not offer: 405, code `unimplemented`.
    pub fn method_not_allowed() -> Self {
        Self {
            http_status: Some(StatusCode::METHOD_NOT_ALLOWED),
            ..Self::new(ErrorCode::Unimplemented, "this route does not offer that method (see the Allow header)")
        }
    }

    pub fn status(&self) -> StatusCode {
        self.http_status.unwrap_or_else(|| self.code.http())
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:cim:problem:{}", self.code.as_str()),
            title: match self.http_status {
                Some(StatusCode::METHOD_NOT_ALLOWED) => "Method not allowed".to_owned(),
                _ => self.code.title().to_owned(),
            },
            status: self.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_owned(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut res = (self.status(), body).into_response();
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.code == ErrorCode::Unauthenticated {
            // RFC 6750 §3: a 401 names the scheme it wants.
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="cim""#));
        }
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// A domain service's error: its code and message, and the field violations it attached.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let (code, violations) = cim_proto::status::read_status(&status);
        if code == ErrorCode::Unauthenticated {
            // The gateway verified the caller and signed what it sends: a service refusing that
            // holds another service key, a deployment fault and not the caller's.
            tracing::error!(detail = status.message(), "a domain service refused the gateway's caller metadata");
            return ApiError::new(
                ErrorCode::Internal,
                "a domain service refused the gateway's signed caller metadata: CIM_SERVICE_TOKEN_SECRET differs between them",
            );
        }
        if status.code() == tonic::Code::Cancelled && std::error::Error::source(&status).is_some() {
            // The connection failed under the call (a TLS handshake the service refused, a
            // reset): tonic says CANCELLED though nobody cancelled. The service is unreachable.
            tracing::warn!(error = ?status, "a call to a domain service failed at the connection");
            return ApiError::new(ErrorCode::Unavailable, "the service is unavailable; retry later");
        }
        let errors = violations.into_iter().map(|v| FieldProblem { field: v.field, reason: v.description }).collect();
        let message = match status.code() {
            // Transport failures carry internals (addresses, h2 errors): say what the caller can act on.
            tonic::Code::Unavailable | tonic::Code::Unknown if code == ErrorCode::Unavailable => {
                "the service is unavailable; retry later".to_owned()
            }
            _ => status.message().to_owned(),
        };
        Self { code, detail: message, errors, retry_after: None, http_status: None }
    }
}

impl From<cim_auth::AuthError> for ApiError {
    fn from(e: cim_auth::AuthError) -> Self {
        if let cim_auth::AuthError::Config(detail) = &e {
            tracing::error!(%detail, "authentication misconfigured");
        }
        ApiError::new(e.code(), e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
