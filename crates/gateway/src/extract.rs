//! Extractors whose refusals are problem+json (axum's own answer plain text): a JSON body that is
//! one value with field paths in its errors, query parameters, path parameters.

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use cim_core::ErrorCode;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON body: 413 past the size limit, 400 naming the offending field's path.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !is_json {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "expected Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
            } else {
                ApiError::new(ErrorCode::InvalidArgument, format!("unreadable body: {e}"))
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            ApiError::invalid(field, e.inner().to_string())
        })?;
        // One JSON value and nothing after it (whitespace aside): `{...} xyz` is not a request.
        de.end().map_err(|e| ApiError::invalid("body", format!("unexpected data after the JSON value: {e}")))?;
        Ok(ApiJson(value))
    }
}

/// A JSON body that may be left out: no body at all means `T::default()` (a state change with no
/// reason: `POST .../pause` without `-d`). A body that is there is held to [`ApiJson`]'s rules.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers();
        let declared = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).map(str::to_owned);
        let empty = declared(http::header::CONTENT_LENGTH).is_none_or(|n| n.trim() == "0")
            && declared(http::header::TRANSFER_ENCODING).is_none()
            && declared(http::header::CONTENT_TYPE).is_none();
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        ApiJson::from_request(req, state).await.map(|ApiJson(value)| OptionalJson(value))
    }
}

/// Query parameters whose parse errors are problem+json (axum's own answer is plain text).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("query: {}", e.body_text())))
    }
}

/// Path parameters whose parse errors are problem+json.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, format!("path: {}", e.body_text())))
    }
}
