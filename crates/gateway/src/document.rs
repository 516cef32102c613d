//! `/api/v1/documents/...`: every document RPC as a REST route, with content streamed both ways
//! (a `PUT` body is relayed to the gRPC upload as it arrives; a download with `Range`, `ETag`
//! and `If-None-Match`). [`dto`]: the JSON; [`records`]: the document record's routes;
//! [`content`]: transfers and signed links. This file: the routes' state, the tables and the router.

mod content;
mod dto;
mod records;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cim_auth::{Principal, Role};
use cim_core::ErrorCode;
use cim_proto::document as pb;
use cim_proto::document::document_service_client::DocumentServiceClient;
use futures::StreamExt;
use http::Method;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::links::LinkSigner;
use crate::problem::{ApiError, ApiResult};
use crate::rest::{
    CommandQuery, Props, command, exact_properties, idempotency_key, next_token, page, props, query, structure, ts,
};
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

/// The role each route needs (one of `app::ROUTE_ROLES`, which `crate::authz` checks).
pub const ROUTE_ROLES: &[(Method, &str, Option<Role>)] = &[
    (Method::POST, "/api/v1/documents", Some(Role::Writer)),
    (Method::GET, "/api/v1/documents", Some(Role::Reader)),
    (Method::GET, "/api/v1/documents/{document_id}", Some(Role::Reader)),
    (Method::PATCH, "/api/v1/documents/{document_id}", Some(Role::Writer)),
    (Method::DELETE, "/api/v1/documents/{document_id}", Some(Role::Writer)),
    (Method::PUT, "/api/v1/documents/{document_id}/content", Some(Role::Writer)),
    (Method::GET, "/api/v1/documents/{document_id}/content", Some(Role::Reader)),
    (Method::GET, "/api/v1/documents/{document_id}/versions", Some(Role::Reader)),
    (Method::POST, "/api/v1/documents/{document_id}/download-links", Some(Role::Reader)),
    (Method::POST, "/api/v1/documents/{document_id}/versions/{version}/tags", Some(Role::Writer)),
    (Method::POST, "/api/v1/documents/{document_id}/versions/{version}/restore", Some(Role::Writer)),
    (Method::POST, "/api/v1/documents/{document_id}/versions/{version}/quarantine", Some(Role::Admin)),
    (Method::POST, "/api/v1/documents/{document_id}/state", Some(Role::Writer)),
    (Method::POST, "/api/v1/documents/{document_id}/links", Some(Role::Writer)),
    (Method::POST, "/api/v1/documents/{document_id}/archive", Some(Role::Writer)),
    (Method::POST, "/api/v1/documents/{document_id}/restore", Some(Role::Writer)),
    (Method::PUT, "/api/v1/documents/{document_id}/retention", Some(Role::Admin)),
    (Method::PUT, "/api/v1/documents/{document_id}/legal-hold", Some(Role::Admin)),
    (Method::DELETE, "/api/v1/documents/{document_id}/legal-hold", Some(Role::Admin)),
    (Method::GET, "/api/v1/documents/{document_id}/as-of/{version}", Some(Role::Reader)),
];

/// This domain's paths in the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(
    create_document,
    search_documents,
    get_document,
    update_metadata,
    delete_document,
    upload_content,
    create_download_link,
    shared_content,
    download_content,
    list_versions,
    tag_version,
    restore_version,
    quarantine_content,
    change_state,
    link_documents,
    archive_document,
    restore_document,
    set_retention,
    place_legal_hold,
    release_legal_hold,
    document_at_version,
))]
#[derive(Debug)]
pub struct Api;

/// Routes a signed link opens without credentials (mounted with the public routes).
pub fn public_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<DocumentState>: FromRef<S>,
{
    Router::new().route("/api/v1/shared/{token}", get(shared_content))
}

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<DocumentState>: FromRef<S>,
{
    let d = "/api/v1/documents/{document_id}";
    Router::new()
        .route("/api/v1/documents", post(create_document).get(search_documents))
        .route(d, get(get_document).patch(update_metadata).delete(delete_document))
        .route(&format!("{d}/content"), put(upload_content).get(download_content))
        .route(&format!("{d}/versions"), get(list_versions))
        .route(&format!("{d}/download-links"), post(create_download_link))
        .route(&format!("{d}/versions/{{version}}/tags"), post(tag_version))
        .route(&format!("{d}/versions/{{version}}/restore"), post(restore_version))
        .route(&format!("{d}/versions/{{version}}/quarantine"), post(quarantine_content))
        .route(&format!("{d}/state"), post(change_state))
        .route(&format!("{d}/links"), post(link_documents))
        .route(&format!("{d}/archive"), post(archive_document))
        .route(&format!("{d}/restore"), post(restore_document))
        .route(&format!("{d}/retention"), put(set_retention))
        .route(&format!("{d}/legal-hold"), put(place_legal_hold).delete(release_legal_hold))
        .route(&format!("{d}/as-of/{{version}}"), get(document_at_version))
}
