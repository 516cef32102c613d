//! `/api/v1/documents/...`: every document RPC as a REST route, with content streamed both ways
//! (a `PUT` body is relayed to the gRPC upload as it arrives; a download with `Range`, `ETag`
//! and `If-None-Match`).

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use cim_auth::{Principal, Role};
use cim_core::ErrorCode;
use cim_proto::document as pb;
use futures::StreamExt;
use http::Method;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::app::AppState;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::problem::{ApiError, ApiResult};
use crate::rest::{
    CommandQuery, Props, command, exact_properties, idempotency_key, next_token, page, props, query, structure, ts,
};

/// Routes whose bodies are streams of any size and length of time: no request deadline, no
/// body limit, no idempotency replay (which would hold the body in memory).
pub const TRANSFER_ROUTES: [&str; 2] = ["/api/v1/documents/{document_id}/content", "/api/v1/shared/{token}"];

/// Upload chunks relayed to the service are gathered to about this size.
const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

/// The role each route needs (`crate::authz` reads every domain's table).
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

// ---- representations ----

#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    pub version: u32,
    /// CIDv1 (raw codec, BLAKE3), base32: any CID tool reads it.
    pub cid: String,
    pub size: u64,
    pub content_type: String,
    pub filename: String,
    pub tags: Vec<String>,
    pub quarantined: bool,
    pub created_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    pub link_type: String,
    pub target: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Document {
    pub document_id: String,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Props,
    /// draft, in_review, approved, rejected, archived or deleted.
    pub state: String,
    /// The document's version (its number of events), for `expected_version`.
    pub version: u64,
    /// The current content version; absent before the first upload.
    pub current: Option<Version>,
    pub links: Vec<Link>,
    pub retain_until: Option<String>,
    pub legal_hold: bool,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

/// What every document command returns.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DocumentCommandResult)]
pub struct CommandResult {
    pub document_id: String,
    /// The document's version after the command.
    pub version: u64,
    pub event_ids: Vec<String>,
    /// True when an earlier command with the same Idempotency-Key already did this.
    pub replayed: bool,
    /// Uploads and restores: the content version now current, and its CID.
    pub content_version: Option<u32>,
    pub content_cid: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentPage {
    pub items: Vec<Document>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Versions {
    pub items: Vec<Version>,
}

// ---- requests ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentDetails {
    /// A UUID (create only); generated when absent.
    #[serde(default)]
    pub document_id: Option<String>,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[serde(deserialize_with = "exact_properties")]
    #[schema(value_type = Object)]
    pub metadata: Props,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeState {
    /// draft, in_review, approved or rejected.
    pub state: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    /// 1-64 of a-z A-Z 0-9 . _ -; tagging another version moves the tag.
    pub tag: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// references, related, supersedes, derived_from or part_of.
    pub link_type: String,
    /// A document id, or another domain's aggregate as `<domain>:<id>` (e.g. `graph:0190…`).
    pub target: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// RFC 3339; retention can only be extended.
    pub retain_until: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find in title, description, tags, metadata and text content (web search syntax).
    pub q: Option<String>,
    pub state: Option<String>,
    pub tag: Option<String>,
    pub content_type: Option<String>,
    /// RFC 3339.
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    /// 1 to 500 (default 50).
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete the content for good (refused under retention or legal hold).
    pub hard: Option<bool>,
    pub expected_version: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The name a download offers.
    pub filename: Option<String>,
    /// The CID the client computed; a mismatch stores nothing (400).
    pub expected_cid: Option<String>,
    pub expected_version: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContentQuery {
    /// A content version number (default: the current one).
    pub version: Option<u32>,
    /// A tag instead of a number.
    pub tag: Option<String>,
}

// ---- conversions ----

fn version(v: pb::Version) -> Version {
    Version {
        version: v.version,
        cid: v.cid,
        size: v.size,
        content_type: v.content_type,
        filename: v.filename,
        tags: v.tags,
        quarantined: v.quarantined,
        created_at: ts(v.created_at),
    }
}

fn document(d: pb::Document) -> Document {
    Document {
        document_id: d.document_id,
        title: d.title,
        description: d.description,
        tags: d.tags,
        metadata: props(d.metadata),
        state: d.state,
        version: d.version,
        current: d.current.map(version),
        links: d.links.into_iter().map(|l| Link { link_type: l.link_type, target: l.target }).collect(),
        retain_until: ts(d.retain_until),
        legal_hold: d.legal_hold,
        created_at: ts(d.created_at),
        updated_at: ts(d.updated_at),
    }
}

fn result(r: pb::CommandResponse) -> CommandResult {
    CommandResult {
        document_id: r.document_id,
        version: r.version,
        event_ids: r.event_ids,
        replayed: r.replayed,
        content_version: (r.content_version > 0).then_some(r.content_version),
        content_cid: (!r.content_cid.is_empty()).then_some(r.content_cid),
    }
}

fn options(expected_version: Option<u64>, headers: &HeaderMap) -> Option<pb::CommandOptions> {
    Some(pb::CommandOptions { expected_version, idempotency_key: idempotency_key(headers) })
}

fn done(r: pb::CommandResponse) -> Json<CommandResult> {
    Json(result(r))
}

const PROBLEM: &str = "application/problem+json";

// ---- handlers ----

/// Create a document
///
/// Creates a draft document (no content yet) in the caller's tenant. Needs the writer role.
#[utoipa::path(post, path = "/api/v1/documents", tag = "documents", request_body = DocumentDetails, params(CommandQuery),
    responses((status = 201, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create_document(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DocumentDetails>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::CreateDocumentRequest {
        document_id: body.document_id.unwrap_or_default(),
        title: body.title,
        description: body.description,
        tags: body.tags,
        metadata: structure(&body.metadata),
        options: options(q.expected_version, &headers),
    };
    Ok((StatusCode::CREATED, done(command!(state.document, p, create_document, msg))))
}

/// Search documents
///
/// Full-text search over title, description, tags, metadata and the text of text-like content, with filters; newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/documents", tag = "documents", params(SearchQuery),
    responses((status = 200, body = DocumentPage), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn search_documents(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<DocumentPage>> {
    let instant = |field: &str, s: Option<String>| s.map(|s| crate::rest::timestamp(field, &s)).transpose();
    let msg = pb::SearchDocumentsRequest {
        query: q.q.unwrap_or_default(),
        state: q.state.unwrap_or_default(),
        tag: q.tag.unwrap_or_default(),
        content_type: q.content_type.unwrap_or_default(),
        created_after: instant("created_after", q.created_after)?,
        created_before: instant("created_before", q.created_before)?,
        page: page(q.page_size, q.page_token),
    };
    let r = query!(state.document, p, search_documents, msg);
    Ok(Json(DocumentPage {
        items: r.documents.into_iter().map(document).collect(),
        next_page_token: next_token(r.page),
    }))
}

/// Get a document
///
/// The document's metadata, state, current content version, links, retention and hold.
#[utoipa::path(get, path = "/api/v1/documents/{document_id}", tag = "documents", params(("document_id" = String, Path)),
    responses((status = 200, body = Document), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn get_document(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
) -> ApiResult<Json<Document>> {
    Ok(Json(document(query!(state.document, p, get_document, pb::GetDocumentRequest { document_id }))))
}

/// Replace a document's metadata
///
/// Sets title, description, tags and metadata (all of them: absent ones become empty).
#[utoipa::path(patch, path = "/api/v1/documents/{document_id}", tag = "documents", request_body = DocumentDetails,
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn update_metadata(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DocumentDetails>,
) -> ApiResult<Json<CommandResult>> {
    if body.document_id.is_some() {
        return Err(ApiError::invalid("document_id", "the id is in the path"));
    }
    let msg = pb::UpdateMetadataRequest {
        document_id,
        title: body.title,
        description: body.description,
        tags: body.tags,
        metadata: structure(&body.metadata),
        options: options(q.expected_version, &headers),
    };
    Ok(done(command!(state.document, p, update_metadata, msg)))
}

/// Delete a document
///
/// A soft delete (restorable) by default; `hard=true` removes every version's content for good, which retention and legal holds refuse (422 naming the rule).
#[utoipa::path(delete, path = "/api/v1/documents/{document_id}", tag = "documents",
    params(("document_id" = String, Path), DeleteQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn delete_document(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::DeleteDocumentRequest {
        document_id,
        hard_delete: q.hard.unwrap_or(false),
        options: options(q.expected_version, &headers),
    };
    Ok(done(command!(state.document, p, delete_document, msg)))
}

/// Upload content
///
/// The request body becomes the document's next content version, streamed to the object store as it arrives (any size up to the service's limit, 413 above). `Content-Type` is kept and served back. Only drafts take content (422 otherwise).
#[utoipa::path(put, path = "/api/v1/documents/{document_id}/content", tag = "content",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(("document_id" = String, Path), UploadQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn upload_content(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<CommandResult>> {
    use pb::upload_content_request::Part;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let start = pb::UploadStart {
        document_id,
        content_type: content_type.to_owned(),
        filename: q.filename.unwrap_or_default(),
        expected_cid: q.expected_cid.unwrap_or_default(),
        options: options(q.expected_version, &headers),
    };
    // A body that breaks off must never look like a complete one to the service: the stream
    // stops without ending, and the call is dropped (the service sees the stream reset).
    let (broken_tx, broken_rx) = tokio::sync::oneshot::channel::<String>();
    let mut broken_tx = Some(broken_tx);
    let chunks = gather(body.into_data_stream(), UPLOAD_CHUNK_BYTES).filter_map(move |chunk| {
        let message = match chunk {
            Ok(bytes) => Some(pb::UploadContentRequest { part: Some(Part::Chunk(bytes)) }),
            Err(e) => {
                if let Some(tx) = broken_tx.take() {
                    let _ = tx.send(e);
                }
                None
            }
        };
        async move { message }
    });
    let messages =
        futures::stream::once(async move { pb::UploadContentRequest { part: Some(Part::Start(start)) } }).chain(chunks);
    let upstream = &state.document_transfer;
    let mut client = upstream.client();
    let call = client.upload_content(upstream.request(&p, messages));
    tokio::select! {
        reply = call => Ok(done(reply.map_err(ApiError::from)?.into_inner())),
        Ok(why) = broken_rx => Err(ApiError::new(ErrorCode::Cancelled, format!("the request body broke off: {why}; nothing was stored"))),
    }
}

/// The body's chunks gathered to at least `size` bytes (the last may be shorter).
fn gather(
    body: axum::body::BodyDataStream,
    size: usize,
) -> impl futures::Stream<Item = Result<Vec<u8>, String>> + Send {
    futures::stream::unfold((body, false), move |(mut body, ended)| async move {
        if ended {
            return None;
        }
        let mut gathered = Vec::new();
        loop {
            match body.next().await {
                Some(Ok(bytes)) => {
                    gathered.extend_from_slice(&bytes);
                    if gathered.len() >= size {
                        return Some((Ok(gathered), (body, false)));
                    }
                }
                Some(Err(e)) => return Some((Err(e.to_string()), (body, true))),
                None if gathered.is_empty() => return None,
                None => return Some((Ok(gathered), (body, true))),
            }
        }
    })
}

/// Download content
///
/// The current content (or `version` / `tag`), streamed. `ETag` is the CID: `If-None-Match` answers 304. One `Range` of bytes answers 206 (416 when it lies outside the content). Quarantined content is refused (422).
#[utoipa::path(get, path = "/api/v1/documents/{document_id}/content", tag = "content",
    params(("document_id" = String, Path), ContentQuery,
        ("Range" = Option<String>, Header, description = "bytes=first-last, bytes=first- or bytes=-suffix"),
        ("If-None-Match" = Option<String>, Header, description = "an ETag from an earlier download")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn download_content(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ContentQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // Resolve the version first: the answer names one version, even if another is uploaded
    // while it streams.
    let wanted = resolve(&state, &p, &document_id, q).await?;
    serve(&state, &p, document_id, wanted, &headers).await
}

/// The content version a download or link names: the current one, a number or a tag.
async fn resolve(state: &AppState, p: &Principal, document_id: &str, q: ContentQuery) -> ApiResult<pb::Version> {
    let document_id = document_id.to_owned();
    Ok(match (q.version, q.tag) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("tag", "give a version or a tag, not both")),
        (None, None) => {
            let doc =
                query!(state.document, p, get_document, pb::GetDocumentRequest { document_id: document_id.clone() });
            doc.current.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the document has no content yet"))?
        }
        (number, tag) => {
            let all =
                query!(state.document, p, list_versions, pb::ListVersionsRequest { document_id: document_id.clone() });
            let found = all.versions.into_iter().find(|v| match (&number, &tag) {
                (Some(n), _) => v.version == *n,
                (_, Some(t)) => v.tags.contains(t),
                _ => false,
            });
            found.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such version"))?
        }
    })
}

/// Streams one content version: 200, 206 for a `Range`, 304 for a matching `If-None-Match`.
async fn serve(
    state: &AppState,
    p: &Principal,
    document_id: String,
    wanted: pb::Version,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let etag = format!("\"{}\"", wanted.cid);
    let matches_etag = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches_etag {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(header::ETAG, header_value(&etag));
        return Ok(response);
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match byte_range(spec, wanted.size) {
            Some(range) => Some(range),
            None => return Ok(unsatisfiable(wanted.size)),
        },
    };
    let (offset, length) = range.map_or((0, wanted.size), |(first, last)| (first, last + 1 - first));
    let msg = pb::DownloadContentRequest {
        document_id,
        version: wanted.version,
        tag: String::new(),
        offset,
        length: if range.is_some() { length } else { 0 },
    };
    let upstream = &state.document_transfer;
    let mut client = upstream.client();
    let stream = client.download_content(upstream.request(p, msg)).await.map_err(ApiError::from)?.into_inner();
    let body = Body::from_stream(stream.map(|m| m.map(|m| bytes::Bytes::from(m.data))));
    let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    let content_type = if wanted.content_type.is_empty() { "application/octet-stream" } else { &wanted.content_type };
    h.insert(header::CONTENT_TYPE, header_value(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::ETAG, header_value(&etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((first, last)) = range {
        h.insert(header::CONTENT_RANGE, header_value(&format!("bytes {first}-{last}/{}", wanted.size)));
    }
    if !wanted.filename.is_empty() {
        h.insert(header::CONTENT_DISPOSITION, header_value(&disposition(&wanted.filename)));
    }
    Ok(response)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `attachment` with an ASCII fallback name and the exact UTF-8 one (RFC 6266).
fn disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// One `bytes=` range within `size` bytes, as `(first, last)` inclusive; `None` when it cannot
/// be satisfied. Several ranges (a multipart answer) are not offered: refused the same way.
pub fn byte_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let spec = spec.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok().filter(|n| *n > 0)?;
            (size.saturating_sub(n), size - 1)
        }
        (first, "") => (first.parse().ok()?, size - 1),
        (first, last) => (first.parse().ok()?, last.parse::<u64>().ok()?.min(size - 1)),
    };
    (first <= last && first < size).then_some((first, last))
}

fn unsatisfiable(size: u64) -> Response {
    let problem = serde_json::json!({
        "type": "about:blank",
        "title": "Range not satisfiable",
        "status": 416,
        "detail": format!("the range lies outside the content's {size} bytes (one range of bytes=first-last, first-, or -suffix)"),
        "code": "invalid_argument",
    });
    let mut response = (StatusCode::RANGE_NOT_SATISFIABLE, problem.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM));
    response.headers_mut().insert(header::CONTENT_RANGE, header_value(&format!("bytes */{size}")));
    response
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// A content version number (default: the current one).
    pub version: Option<u32>,
    /// A tag instead of a number.
    pub tag: Option<String>,
    /// Seconds the link works (default 3600, at most 604800).
    pub expires_in: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadLink {
    /// Relative to the gateway: GET it with no credentials until `expires_at`.
    pub url: String,
    pub expires_at: String,
    /// The content version the link reads, whatever is uploaded later.
    pub version: u32,
    pub cid: String,
}

/// Make a download link
///
/// A signed URL that downloads one content version with no bearer token until it expires (tenant, document, version and expiry are bound into its HMAC). Needs the reader role.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/download-links", tag = "content",
    params(("document_id" = String, Path), LinkQuery),
    responses((status = 201, body = DownloadLink), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn create_download_link(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LinkQuery>,
) -> ApiResult<impl IntoResponse> {
    let signer = state.links.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unimplemented,
            "download links need a signing key: set CIM_GATEWAY_LINK_SECRET (or CIM_JWT_HS256_SECRET)",
        )
    })?;
    let lifetime = q.expires_in.unwrap_or(crate::links::DEFAULT_LIFETIME_SECS);
    if lifetime == 0 || lifetime > crate::links::MAX_LIFETIME_SECS {
        return Err(ApiError::invalid("expires_in", format!("1 to {} seconds", crate::links::MAX_LIFETIME_SECS)));
    }
    let wanted = resolve(&state, &p, &document_id, ContentQuery { version: q.version, tag: q.tag }).await?;
    let expires_at = cim_auth::now_secs() + lifetime;
    let grant = crate::links::Grant { tenant: p.tenant, document_id, version: wanted.version, expires_at };
    let link = DownloadLink {
        url: format!("/api/v1/shared/{}", signer.sign(&grant)),
        expires_at: chrono::DateTime::from_timestamp(expires_at as i64, 0).map(|t| t.to_rfc3339()).unwrap_or_default(),
        version: wanted.version,
        cid: wanted.cid,
    };
    Ok((StatusCode::CREATED, Json(link)))
}

/// Download through a link
///
/// The content version a signed link names, with no credentials (the link is the credential): Range, ETag and If-None-Match as for any download. An altered link is 404, an expired one 403.
#[utoipa::path(get, path = "/api/v1/shared/{token}", tag = "content", security(()),
    params(("token" = String, Path), ("Range" = Option<String>, Header), ("If-None-Match" = Option<String>, Header)),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn shared_content(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let signer = state.links.as_ref().ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such link"))?;
    let grant = signer.verify(&token, cim_auth::now_secs())?;
    let p = Principal {
        subject: "link".into(),
        tenant: grant.tenant,
        roles: [Role::Reader].into(),
        method: cim_auth::Method::Link,
        expires_at: Some(grant.expires_at),
    };
    let wanted =
        resolve(&state, &p, &grant.document_id, ContentQuery { version: Some(grant.version), tag: None }).await?;
    serve(&state, &p, grant.document_id, wanted, &headers).await
}

/// List content versions
///
/// Every content version of the document, oldest first, with its CID, size, type and tags.
#[utoipa::path(get, path = "/api/v1/documents/{document_id}/versions", tag = "content", params(("document_id" = String, Path)),
    responses((status = 200, body = Versions), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn list_versions(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
) -> ApiResult<Json<Versions>> {
    let r = query!(state.document, p, list_versions, pb::ListVersionsRequest { document_id });
    Ok(Json(Versions { items: r.versions.into_iter().map(version).collect() }))
}

/// Tag a content version
///
/// Names a content version (e.g. `v1.0`); tagging another version with the same tag moves it.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/versions/{version}/tags", tag = "content", request_body = Tag,
    params(("document_id" = String, Path), ("version" = u32, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn tag_version(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Tag>,
) -> ApiResult<Json<CommandResult>> {
    let msg =
        pb::TagVersionRequest { document_id, version, tag: body.tag, options: options(q.expected_version, &headers) };
    Ok(done(command!(state.document, p, tag_version, msg)))
}

/// Restore a content version
///
/// Makes an earlier version's content current again, as a new version (drafts only).
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/versions/{version}/restore", tag = "content",
    params(("document_id" = String, Path), ("version" = u32, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn restore_version(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::RestoreVersionRequest { document_id, version, options: options(q.expected_version, &headers) };
    Ok(done(command!(state.document, p, restore_version, msg)))
}

/// Quarantine a content version
///
/// Blocks downloads of one version's content (e.g. found to be malware). Needs the admin role.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/versions/{version}/quarantine", tag = "content", request_body = Reason,
    params(("document_id" = String, Path), ("version" = u32, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn quarantine_content(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Reason>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::QuarantineContentRequest {
        document_id,
        version,
        reason: body.reason,
        options: options(q.expected_version, &headers),
    };
    Ok(done(command!(state.document, p, quarantine_content, msg)))
}

/// Change the review state
///
/// draft -> in_review -> approved or rejected; approved or rejected -> draft. Other transitions are refused (422) naming both states.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/state", tag = "lifecycle", request_body = ChangeState,
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn change_state(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ChangeState>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::ChangeStateRequest {
        document_id,
        state: body.state,
        reason: body.reason,
        options: options(q.expected_version, &headers),
    };
    Ok(done(command!(state.document, p, change_state, msg)))
}

/// Link to another document or aggregate
///
/// Records a typed link to another document, or to another domain's aggregate (`graph:<id>`).
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/links", tag = "lifecycle", request_body = LinkRequest,
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn link_documents(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LinkRequest>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::LinkDocumentsRequest {
        document_id,
        link_type: body.link_type,
        target: body.target,
        options: options(q.expected_version, &headers),
    };
    Ok(done(command!(state.document, p, link_documents, msg)))
}

/// Archive a document
///
/// Archives a live document: it stays readable and refuses changes until restored.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/archive", tag = "lifecycle",
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn archive_document(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::DocumentCommand { document_id, options: options(q.expected_version, &headers) };
    Ok(done(command!(state.document, p, archive_document, msg)))
}

/// Restore a document
///
/// Undoes an archive or a soft delete: the document returns to the state it was in.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/restore", tag = "lifecycle",
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn restore_document(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::DocumentCommand { document_id, options: options(q.expected_version, &headers) };
    Ok(done(command!(state.document, p, restore_document, msg)))
}

/// Set retention
///
/// The document cannot be deleted for good before `retain_until`; retention can only be extended. Needs the admin role.
#[utoipa::path(put, path = "/api/v1/documents/{document_id}/retention", tag = "compliance", request_body = Retention,
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn set_retention(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Retention>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::SetRetentionRequest {
        document_id,
        retain_until: Some(crate::rest::timestamp("retain_until", &body.retain_until)?),
        options: options(q.expected_version, &headers),
    };
    Ok(done(command!(state.document, p, set_retention, msg)))
}

/// Place a legal hold
///
/// While held, the document cannot be deleted for good. Needs the admin role.
#[utoipa::path(put, path = "/api/v1/documents/{document_id}/legal-hold", tag = "compliance", request_body = Reason,
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn place_legal_hold(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Reason>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::LegalHoldRequest { document_id, reason: body.reason, options: options(q.expected_version, &headers) };
    Ok(done(command!(state.document, p, place_legal_hold, msg)))
}

/// Release a legal hold
///
/// Ends the hold. Needs the admin role.
#[utoipa::path(delete, path = "/api/v1/documents/{document_id}/legal-hold", tag = "compliance",
    params(("document_id" = String, Path), CommandQuery),
    responses((status = 200, body = CommandResult), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn release_legal_hold(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommandQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<CommandResult>> {
    let msg =
        pb::LegalHoldRequest { document_id, reason: String::new(), options: options(q.expected_version, &headers) };
    Ok(done(command!(state.document, p, release_legal_hold, msg)))
}

/// The document at a past version
///
/// The document as it was after its first `version` events, folded from the verified history.
#[utoipa::path(get, path = "/api/v1/documents/{document_id}/as-of/{version}", tag = "documents",
    params(("document_id" = String, Path), ("version" = u64, Path)),
    responses((status = 200, body = Document), (status = "4XX", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn document_at_version(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Document>> {
    let msg = pb::GetDocumentAtVersionRequest { document_id, version };
    Ok(Json(document(query!(state.document, p, get_document_at_version, msg))))
}

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
pub fn public_routes() -> Router<AppState> {
    Router::new().route("/api/v1/shared/{token}", get(shared_content))
}

pub fn routes() -> Router<AppState> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-1000", 100), Some((0, 99)));
        assert_eq!(byte_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(byte_range("bytes=100-", 100), None);
        assert_eq!(byte_range("bytes=5-2", 100), None);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), None);
        assert_eq!(byte_range("items=0-1", 100), None);
        assert_eq!(byte_range("bytes=0-0", 0), None);
    }

    #[test]
    fn disposition_keeps_the_name_and_never_breaks_the_header() {
        assert_eq!(disposition("report.pdf"), "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf");
        let d = disposition("Zürich \"Q3\".txt");
        assert!(d.contains("filename=\"Z_rich _Q3_.txt\""), "{d}");
        assert!(d.contains("filename*=UTF-8''Z%C3%BCrich%20%22Q3%22.txt"), "{d}");
        assert!(HeaderValue::from_str(&d).is_ok());
    }
}
