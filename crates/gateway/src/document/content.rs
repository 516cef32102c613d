//! Content in and out: the streamed upload, ranged and conditional downloads, signed links.

use super::*;

/// Upload chunks relayed to the service are gathered to about this size.
const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

/// Upload content
///
/// The request body becomes the document's next content version, streamed to the object store as it arrives (any size up to the service's limit, 413 above). `Content-Type` is kept and served back. Only drafts take content (422 otherwise).
#[utoipa::path(put, path = "/api/v1/documents/{document_id}/content", tag = "content",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(("document_id" = String, Path), UploadQuery, CommandQuery), responses((status = 200, body = CommandResult)))]
pub async fn upload_content(
    State(state): State<Arc<DocumentState>>,
    Extension(p): Extension<Principal>,
    ApiPath(document_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    Options(options): Options,
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
        options,
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
    let upstream = &state.transfer;
    let mut client = upstream.client();
    let call = client.upload_content(upstream.request(&p, messages));
    tokio::select! {
        reply = call => Ok(done(reply.map_err(ApiError::from)?.into_inner())),
        Ok(why) = broken_rx => Err(ApiError::new(ErrorCode::Cancelled, format!("the request body broke off: {why}; nothing was stored"))),
    }
}

/// The body's chunks gathered to at least `size` bytes (the last may be shorter).
pub(super) fn gather(
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
    params(("document_id" = String, Path), ContentQuery, ("Range" = Option<String>, Header, description = "bytes=first-last, bytes=first- or bytes=-suffix"), ("If-None-Match" = Option<String>, Header, description = "an ETag from an earlier download")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 206, content_type = "application/octet-stream", body = Vec<u8>), (status = 304, description = "Not modified")))]
pub async fn download_content(
    State(state): State<Arc<DocumentState>>,
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
pub(super) async fn resolve(
    state: &DocumentState,
    p: &Principal,
    document_id: &str,
    q: ContentQuery,
) -> ApiResult<pb::Version> {
    let document_id = document_id.to_owned();
    Ok(match (q.version, q.tag) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("tag", "give a version or a tag, not both")),
        (None, None) => {
            let doc =
                query!(state.upstream, p, get_document, pb::GetDocumentRequest { document_id: document_id.clone() });
            doc.current.ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the document has no content yet"))?
        }
        (number, tag) => {
            let all =
                query!(state.upstream, p, list_versions, pb::ListVersionsRequest { document_id: document_id.clone() });
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
pub(super) async fn serve(
    state: &DocumentState,
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
    let upstream = &state.transfer;
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

pub(super) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `attachment` with an ASCII fallback name and the exact UTF-8 one (RFC 6266).
pub(super) fn disposition(filename: &str) -> String {
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

pub(super) fn unsatisfiable(size: u64) -> Response {
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
    params(("document_id" = String, Path), LinkQuery), responses((status = 201, body = DownloadLink)))]
pub async fn create_download_link(
    State(state): State<Arc<DocumentState>>,
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
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 206, content_type = "application/octet-stream", body = Vec<u8>), (status = 304, description = "Not modified")))]
pub async fn shared_content(
    State(state): State<Arc<DocumentState>>,
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
