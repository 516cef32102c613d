//! The document record: create, search, read, metadata, lifecycle, versions, compliance.

use super::*;

/// Create a document
///
/// Creates a draft document (no content yet) in the caller's tenant. Needs the writer role.
#[utoipa::path(post, path = "/api/v1/documents", tag = "documents", request_body = DocumentDetails, params(CommandQuery),
    responses((status = 201, body = CommandResult)))]
pub async fn create_document(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    Options(options): Options,
    ApiJson(body): ApiJson<DocumentDetails>,
) -> ApiResult<impl IntoResponse> {
    let msg = pb::CreateDocumentRequest {
        document_id: body.document_id.unwrap_or_default(),
        title: body.title,
        description: body.description,
        tags: body.tags,
        metadata: structure(&body.metadata),
        options,
    };
    Ok((StatusCode::CREATED, done(command!(state.upstream, p, create_document, msg))))
}

/// Search documents
///
/// Full-text search over title, description, tags, metadata and the text of text-like content, with filters; newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/documents", tag = "documents", params(SearchQuery),
    responses((status = 200, body = Page<Document>)))]
pub async fn search_documents(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Page<Document>>> {
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
    let r = query!(state.upstream, p, search_documents, msg);
    Ok(Page::of(r.documents, document, r.page))
}

/// Get a document
///
/// The document's metadata, state, current content version, links, retention and hold.
#[utoipa::path(get, path = "/api/v1/documents/{document_id}", tag = "documents", params(("document_id" = String, Path)),
    responses((status = 200, body = Document)))]
pub async fn get_document(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
) -> ApiResult<Json<Document>> {
    Ok(Json(document(query!(state.upstream, p, get_document, pb::GetDocumentRequest { document_id }))))
}

/// Replace a document's metadata
///
/// Sets title, description, tags and metadata (all of them: absent ones become empty).
#[utoipa::path(patch, path = "/api/v1/documents/{document_id}", tag = "documents", request_body = DocumentDetails,
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn update_metadata(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
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
        options,
    };
    Ok(done(command!(state.upstream, p, update_metadata, msg)))
}

/// Delete a document
///
/// A soft delete (restorable) by default; `hard=true` removes every version's content for good, which retention and legal holds refuse (422 naming the rule).
#[utoipa::path(delete, path = "/api/v1/documents/{document_id}", tag = "documents",
    params(("document_id" = String, Path), DeleteQuery, CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn delete_document(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
    Options(options): Options,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::DeleteDocumentRequest { document_id, hard_delete: q.hard.unwrap_or(false), options };
    Ok(done(command!(state.upstream, p, delete_document, msg)))
}

/// List content versions
///
/// Every content version of the document, oldest first, with its CID, size, type and tags.
#[utoipa::path(get, path = "/api/v1/documents/{document_id}/versions", tag = "content",
    params(("document_id" = String, Path)), responses((status = 200, body = Versions)))]
pub async fn list_versions(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
) -> ApiResult<Json<Versions>> {
    let r = query!(state.upstream, p, list_versions, pb::ListVersionsRequest { document_id });
    Ok(Json(Versions { items: r.versions.into_iter().map(version).collect() }))
}

/// Tag a content version
///
/// Names a content version (e.g. `v1.0`); tagging another version with the same tag moves it.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/versions/{version}/tags", tag = "content",
    request_body = Tag, params(("document_id" = String, Path), ("version" = u32, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn tag_version(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u32)>,
    Options(options): Options,
    ApiJson(body): ApiJson<Tag>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::TagVersionRequest { document_id, version, tag: body.tag, options };
    Ok(done(command!(state.upstream, p, tag_version, msg)))
}

/// Restore a content version
///
/// Makes an earlier version's content current again, as a new version (drafts only).
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/versions/{version}/restore", tag = "content",
    params(("document_id" = String, Path), ("version" = u32, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn restore_version(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u32)>,
    Options(options): Options,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::RestoreVersionRequest { document_id, version, options };
    Ok(done(command!(state.upstream, p, restore_version, msg)))
}

/// Quarantine a content version
///
/// Blocks downloads of one version's content (e.g. found to be malware). Needs the admin role.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/versions/{version}/quarantine", tag = "content",
    request_body = Reason, params(("document_id" = String, Path), ("version" = u32, Path), CommandQuery),
    responses((status = 200, body = CommandResult)))]
pub async fn quarantine_content(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u32)>,
    Options(options): Options,
    ApiJson(body): ApiJson<Reason>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::QuarantineContentRequest { document_id, version, reason: body.reason, options };
    Ok(done(command!(state.upstream, p, quarantine_content, msg)))
}

/// Change the review state
///
/// draft -> in_review -> approved or rejected; approved or rejected -> draft. Other transitions are refused (422) naming both states.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/state", tag = "lifecycle", request_body = ChangeState,
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn change_state(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<ChangeState>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::ChangeStateRequest { document_id, state: body.state, reason: body.reason, options };
    Ok(done(command!(state.upstream, p, change_state, msg)))
}

/// Link to another document or aggregate
///
/// Records a typed link to another document, or to another domain's aggregate (`graph:<id>`).
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/links", tag = "lifecycle", request_body = LinkRequest,
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn link_documents(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<LinkRequest>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::LinkDocumentsRequest { document_id, link_type: body.link_type, target: body.target, options };
    Ok(done(command!(state.upstream, p, link_documents, msg)))
}

/// Archive a document
///
/// Archives a live document: it stays readable and refuses changes until restored.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/archive", tag = "lifecycle",
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn archive_document(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::DocumentCommand { document_id, options };
    Ok(done(command!(state.upstream, p, archive_document, msg)))
}

/// Restore a document
///
/// Undoes an archive or a soft delete: the document returns to the state it was in.
#[utoipa::path(post, path = "/api/v1/documents/{document_id}/restore", tag = "lifecycle",
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn restore_document(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::DocumentCommand { document_id, options };
    Ok(done(command!(state.upstream, p, restore_document, msg)))
}

/// Set retention
///
/// The document cannot be deleted for good before `retain_until`; retention can only be extended. Needs the admin role.
#[utoipa::path(put, path = "/api/v1/documents/{document_id}/retention", tag = "compliance", request_body = Retention,
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn set_retention(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Retention>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::SetRetentionRequest {
        document_id,
        retain_until: Some(crate::rest::timestamp("retain_until", &body.retain_until)?),
        options,
    };
    Ok(done(command!(state.upstream, p, set_retention, msg)))
}

/// Place a legal hold
///
/// While held, the document cannot be deleted for good. Needs the admin role.
#[utoipa::path(put, path = "/api/v1/documents/{document_id}/legal-hold", tag = "compliance", request_body = Reason,
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn place_legal_hold(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
    ApiJson(body): ApiJson<Reason>,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::LegalHoldRequest { document_id, reason: body.reason, options };
    Ok(done(command!(state.upstream, p, place_legal_hold, msg)))
}

/// Release a legal hold
///
/// Ends the hold. Needs the admin role.
#[utoipa::path(delete, path = "/api/v1/documents/{document_id}/legal-hold", tag = "compliance",
    params(("document_id" = String, Path), CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn release_legal_hold(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    Options(options): Options,
) -> ApiResult<Json<CommandResult>> {
    let msg = pb::LegalHoldRequest { document_id, reason: String::new(), options };
    Ok(done(command!(state.upstream, p, release_legal_hold, msg)))
}

/// The document at a past version
///
/// The document as it was after its first `version` events, folded from the verified history.
#[utoipa::path(get, path = "/api/v1/documents/{document_id}/as-of/{version}", tag = "documents",
    params(("document_id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Document)))]
pub async fn document_at_version(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath((document_id, version)): ApiPath<(String, u64)>,
) -> ApiResult<Json<Document>> {
    let msg = pb::GetDocumentAtVersionRequest { document_id, version };
    Ok(Json(document(query!(state.upstream, p, get_document_at_version, msg))))
}
