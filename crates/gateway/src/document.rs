//! `/api/v1/documents/...`: every document RPC as a REST route, with content streamed both ways
//! (a `PUT` body is relayed to the gRPC upload as it arrives; a download with `Range`, `ETag`
//! and `If-None-Match`). [`dto`]: the JSON; [`records`]: the document record's routes;
//! [`content`]: transfers and signed links. This file: the routes' state, the tables and the router.

mod content;
mod dto;
mod records;

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cim_auth::{Principal, Role};
use cim_core::ErrorCode;
use cim_proto::document as pb;
use cim_proto::document::document_service_client::DocumentServiceClient;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, ToSchema};

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::links::LinkSigner;
use crate::problem::{ApiError, ApiResult};
use crate::rest::{CommandQuery, Options, Page, Props, command, exact_properties, page, props, query, structure, ts};
use crate::routes::{DomainRoutes, Purpose, routes};
use crate::upstream::Upstream;
use content::*;
pub use dto::*;
use records::*;

/// What the document routes use: the document service, and the download links' signer.
#[derive(Debug)]
pub struct DocumentState {
    pub upstream: Upstream<DocumentServiceClient<Channel>>,
    /// Content uploads and downloads: no deadline, they take as long as their bytes take.
    pub transfer: Upstream<DocumentServiceClient<Channel>>,
    /// `None` without a key: links are refused.
    pub links: Option<LinkSigner>,
}

/// Routes whose bodies are streams of any size and length of time: no request deadline, no
/// body limit, no idempotency replay (which would hold the body in memory).
pub const TRANSFER_ROUTES: [&str; 2] = ["/api/v1/documents/{document_id}/content", "/api/v1/shared/{token}"];

/// The document routes: the role each needs, its handler (whose annotation gives method and
/// path). A signed link opens its content without credentials.
pub fn routes<S>(purpose: Purpose) -> DomainRoutes<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<DocumentState>: FromRef<S>,
{
    DomainRoutes::new(purpose)
        .writer(routes!(create_document))
        .reader(routes!(search_documents))
        .reader(routes!(get_document))
        .writer(routes!(update_metadata))
        .writer(routes!(delete_document))
        .writer(routes!(upload_content))
        .reader(routes!(download_content))
        .reader(routes!(list_versions))
        .reader(routes!(create_download_link))
        .writer(routes!(tag_version))
        .writer(routes!(restore_version))
        .admin(routes!(quarantine_content))
        .writer(routes!(change_state))
        .writer(routes!(link_documents))
        .writer(routes!(archive_document))
        .writer(routes!(restore_document))
        .admin(routes!(set_retention))
        .admin(routes!(place_legal_hold))
        .admin(routes!(release_legal_hold))
        .reader(routes!(document_at_version))
        .public(routes!(shared_content))
}
