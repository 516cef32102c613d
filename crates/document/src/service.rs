//! The gRPC edge: requests parsed into commands for the kit's executor, streamed uploads and
//! downloads through the content store, and queries over the projections.

use std::pin::Pin;
use std::str::FromStr;

use chrono::Utc;
use cim_aggregate::{CommandExecutor, CommandOptions, Executed};
use cim_core::AggregateId;
use cim_proto::document as pb;
use cim_proto::document::document_service_server::DocumentService;
use cim_runtime::edge::{Caller, KeysetPage, handle, instant, json};
use cim_runtime::status::HasErrorCode;
use futures::{Stream, StreamExt};
use sqlx::PgPool;
use tonic::{Request, Response, Status, Streaming};

use crate::content::{ContentStore, Staged, is_text, parse_cid, pin};
use crate::domain::{Content, Details, Document, DocumentCommand as C, LinkType, State, check_tag};
use crate::error::ServiceError;
use crate::events::DocumentEvent;
use crate::metrics::{DEDUPLICATED_TOTAL, DOWNLOADED_BYTES_TOTAL, UPLOADED_BYTES_TOTAL, UPLOADS_TOTAL};
use crate::queries::{self, Search, Wanted};

type Reply<T> = Result<Response<T>, Status>;
type Downloading = Pin<Box<dyn Stream<Item = Result<pb::DownloadContentResponse, Status>> + Send>>;

/// How often an upload promotes and commits again after the sweeper took its content.
const COMMIT_ATTEMPTS: u32 = 5;

/// Whether a command failed because its version's content row was swept after the pin.
fn collected_meanwhile(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::Command(cim_aggregate::ExecutorError::Store(cim_eventstore::StoreError::Database(
            sqlx::Error::Database(db)
        ))) if db.constraint() == Some("document_versions_tenant_id_cid_fkey")
    )
}

/// Downloads send about this much per message (below the 4 MiB message limit).
const DOWNLOAD_MESSAGE_BYTES: usize = 1024 * 1024;
const SHORT_TEXT_MAX: usize = 255;

#[derive(Debug, Clone)]
pub struct DocumentApi {
    executor: CommandExecutor<Document>,
    pool: PgPool,
    content: ContentStore,
}

fn document_id(s: &str) -> Result<AggregateId, ServiceError> {
    AggregateId::from_str(s).map_err(|e| ServiceError::invalid("document_id", e.to_string()))
}

fn details(
    title: String,
    description: String,
    tags: Vec<String>,
    metadata: Option<prost_types::Struct>,
) -> Result<Details, ServiceError> {
    let metadata = json("metadata", metadata)?;
    Ok(Details { title, description, tags, metadata })
}

/// A short single-line text a caller names things with (content type, file name).
fn short_text(field: &str, s: &str) -> Result<(), ServiceError> {
    if s.len() > SHORT_TEXT_MAX || !cim_core::names::is_printable(s) {
        return Err(ServiceError::invalid(field, "at most 255 bytes of printable characters"));
    }
    Ok(())
}

fn content_type(s: &str) -> Result<String, ServiceError> {
    if s.is_empty() {
        return Ok("application/octet-stream".into());
    }
    short_text("start.content_type", s)?;
    let (kind, sub) = s.split(';').next().unwrap_or("").trim().split_once('/').unwrap_or(("", ""));
    if kind.is_empty() || sub.is_empty() || s.contains(char::is_whitespace) && !s.contains(';') {
        return Err(ServiceError::invalid("start.content_type", "a MIME type such as text/plain"));
    }
    Ok(s.to_owned())
}

/// The answer to a command: the kit's result plus the content version it made, if any.
fn respond(done: Executed) -> pb::CommandResponse {
    let mut response = pb::CommandResponse {
        document_id: done.aggregate_id.to_string(),
        version: done.version,
        event_ids: done.event_ids.iter().map(ToString::to_string).collect(),
        replayed: done.replayed,
        ..Default::default()
    };
    for envelope in &done.events {
        match DocumentEvent::from_envelope(envelope) {
            Ok(DocumentEvent::ContentIngested(e)) => {
                (response.content_version, response.content_cid) = (e.version, e.content.cid)
            }
            Ok(DocumentEvent::ContentUpdated(e)) => {
                (response.content_version, response.content_cid) = (e.version, e.new_content_cid)
            }
            Ok(DocumentEvent::VersionRestored(e)) => {
                (response.content_version, response.content_cid) = (e.version, e.content.cid)
            }
            _ => {}
        }
    }
    response
}

impl DocumentApi {
    pub fn new(executor: CommandExecutor<Document>, content: ContentStore) -> Self {
        let pool = executor.store().pool().clone();
        Self { executor, pool, content }
    }

    async fn run(
        &self,
        caller: &Caller,
        id: AggregateId,
        command: C,
        options: Option<cim_proto::common::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let done = self.executor.execute(caller, id, &command, &CommandOptions::from(options)).await?;
        Ok(respond(done))
    }

    /// Streams the upload to staging, names it, pins and promotes it, then commits the version.
    async fn upload(
        &self,
        caller: &Caller,
        mut parts: Streaming<pb::UploadContentRequest>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        use pb::upload_content_request::Part;
        let start = match parts.message().await.map_err(ServiceError::Stream)? {
            Some(pb::UploadContentRequest { part: Some(Part::Start(start)) }) => start,
            _ => return Err(ServiceError::invalid("start", "the first message must be `start`")),
        };
        let id = document_id(&start.document_id)
            .map_err(|_| ServiceError::invalid("start.document_id", "expected a UUID"))?;
        let content_type = content_type(&start.content_type)?;
        short_text("start.filename", &start.filename)?;
        if start.filename.contains(['/', '\\']) {
            return Err(ServiceError::invalid("start.filename", "a file name, not a path"));
        }
        let expected = match start.expected_cid.as_str() {
            "" => None,
            cid => Some(parse_cid(cid)?),
        };
        // Refuse before reading a byte when the document cannot take content now.
        let (state, _) = self.executor.load(caller.tenant, id).await?;
        state.accepts_content()?;

        let mut upload = self.content.upload(caller.tenant, is_text(&content_type));
        let read = async {
            while let Some(message) = parts.message().await.map_err(ServiceError::Stream)? {
                match message.part {
                    Some(Part::Chunk(bytes)) => upload.write(bytes.into()).await?,
                    _ => return Err(ServiceError::invalid("chunk", "every message after `start` must be a `chunk`")),
                }
            }
            Ok(())
        };
        if let Err(e) = read.await {
            upload.abort().await;
            return Err(e);
        }
        let staged: Staged = upload.finish().await?;
        if let Some(expected) = expected
            && expected != staged.cid
        {
            self.content.discard(&staged.path).await?;
            return Err(crate::content::ContentError::Mismatch { expected, actual: staged.cid }.into());
        }
        metrics::counter!(UPLOADED_BYTES_TOTAL).increment(staged.size);
        let content = Content { cid: staged.cid.clone(), size: staged.size, content_type, filename: start.filename };
        let committed = self.commit_upload(caller, id, &staged, content, start.options).await;
        // Committed or not, the staged copy has served; a failed commit leaves pinned,
        // unreferenced content, which the sweeper collects.
        if let Err(e) = self.content.discard(&staged.path).await {
            tracing::warn!(error = %e, path = %staged.path, "staged upload not removed; the sweeper will");
        }
        committed
    }

    /// Pins and promotes the staged bytes, then commits the version. If the sweeper took the
    /// content between the pin and the commit (only possible when the commit outlasts the grace
    /// period), the version's foreign key refuses the commit: pin and promote again.
    async fn commit_upload(
        &self,
        caller: &Caller,
        id: AggregateId,
        staged: &Staged,
        content: Content,
        options: Option<cim_proto::common::CommandOptions>,
    ) -> Result<pb::CommandResponse, ServiceError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            pin(&self.pool, caller.tenant, staged).await?;
            if self.content.promote(staged, caller.tenant).await? && attempt == 1 {
                metrics::counter!(DEDUPLICATED_TOTAL).increment(1);
            }
            match self.run(caller, id, C::AttachContent(content.clone()), options.clone()).await {
                Err(e) if collected_meanwhile(&e) && attempt < COMMIT_ATTEMPTS => {
                    tracing::debug!(document = %id, attempt, "content swept before the version committed; promoting again");
                }
                Err(e) if collected_meanwhile(&e) => {
                    return Err(ServiceError::unavailable(format!(
                        "the content was collected {COMMIT_ATTEMPTS} times while the version committed; upload again"
                    )));
                }
                done => return done,
            }
        }
    }

    async fn download(&self, caller: &Caller, r: pb::DownloadContentRequest) -> Result<Downloading, ServiceError> {
        let id = document_id(&r.document_id)?;
        let wanted = match (r.version, r.tag.as_str()) {
            (0, "") => Wanted::Current,
            (n, "") => Wanted::Number(n),
            (0, tag) => {
                check_tag("tag", tag)?;
                Wanted::Tag(tag.to_owned())
            }
            _ => return Err(ServiceError::invalid("tag", "give a version or a tag, not both")),
        };
        let version = queries::downloadable(&self.pool, caller.tenant, id, &wanted).await?;
        if r.offset > version.size || (r.offset == version.size && r.offset > 0) {
            return Err(ServiceError::invalid("offset", format!("beyond the content's {} bytes", version.size)));
        }
        let length = match r.length {
            0 => None,
            n => Some(n.min(version.size - r.offset)),
        };
        let bytes = self.content.read(caller.tenant, &version.cid, version.size, r.offset, length).await?;
        let mut info = Some(pb::ContentInfo {
            version: version.version,
            cid: version.cid,
            size: version.size,
            content_type: version.content_type,
            filename: version.filename,
        });
        // Chunks gathered into messages of about DOWNLOAD_MESSAGE_BYTES (a local read is one
        // already; an S3 stream's are small). The first message carries the info.
        let messages = futures::stream::unfold((bytes, false), |(mut bytes, ended)| async move {
            if ended {
                return None;
            }
            let mut data: Vec<u8> = Vec::new();
            loop {
                match bytes.next().await {
                    Some(Ok(chunk)) if data.is_empty() && chunk.len() >= DOWNLOAD_MESSAGE_BYTES => {
                        // Uncopied when the chunk owns its buffer.
                        return Some((Ok(Vec::from(chunk)), (bytes, false)));
                    }
                    Some(Ok(chunk)) => {
                        data.extend_from_slice(&chunk);
                        if data.len() >= DOWNLOAD_MESSAGE_BYTES {
                            return Some((Ok(data), (bytes, false)));
                        }
                    }
                    Some(Err(e)) => {
                        return Some((Err(cim_runtime::status::into_status(&ServiceError::from(e))), (bytes, true)));
                    }
                    None if data.is_empty() => return None,
                    None => return Some((Ok(data), (bytes, true))),
                }
            }
        });
        let messages = messages.map(move |data| {
            let data = data?;
            metrics::counter!(DOWNLOADED_BYTES_TOTAL).increment(data.len() as u64);
            Ok(pb::DownloadContentResponse { info: info.take(), data })
        });
        // Empty content still answers its info.
        Ok(Box::pin(messages))
    }
}

#[tonic::async_trait]
impl DocumentService for DocumentApi {
    type DownloadContentStream = Downloading;

    async fn create_document(&self, req: Request<pb::CreateDocumentRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = match r.document_id.as_str() {
                "" => AggregateId::new(),
                s => document_id(s)?,
            };
            let details = details(r.title, r.description, r.tags, r.metadata)?;
            self.run(&caller, id, C::Create(details), r.options).await
        })
        .await
    }

    async fn upload_content(&self, req: Request<Streaming<pb::UploadContentRequest>>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, parts| async move {
            let result = self.upload(&caller, parts).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code().as_str(),
            };
            metrics::counter!(UPLOADS_TOTAL, "outcome" => outcome).increment(1);
            result
        })
        .await
    }

    async fn download_content(&self, req: Request<pb::DownloadContentRequest>) -> Reply<Self::DownloadContentStream> {
        handle(req, |caller, r| async move { self.download(&caller, r).await }).await
    }

    async fn update_metadata(&self, req: Request<pb::UpdateMetadataRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            let details = details(r.title, r.description, r.tags, r.metadata)?;
            self.run(&caller, id, C::UpdateMetadata(details), r.options).await
        })
        .await
    }

    async fn change_state(&self, req: Request<pb::ChangeStateRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            let to = State::parse(&r.state)
                .filter(|s| !matches!(s, State::Archived | State::Deleted))
                .ok_or_else(|| ServiceError::invalid("state", "one of draft, in_review, approved, rejected"))?;
            self.run(&caller, id, C::ChangeState { to, reason: r.reason }, r.options).await
        })
        .await
    }

    async fn tag_version(&self, req: Request<pb::TagVersionRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::TagVersion { version: r.version, tag: r.tag }, r.options).await
        })
        .await
    }

    async fn restore_version(&self, req: Request<pb::RestoreVersionRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::RestoreVersion { version: r.version }, r.options).await
        })
        .await
    }

    async fn link_documents(&self, req: Request<pb::LinkDocumentsRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            let link_type = LinkType::parse(&r.link_type)
                .ok_or_else(|| ServiceError::invalid("link_type", format!("one of {}", LinkType::NAMES.join(", "))))?;
            if r.target == r.document_id {
                return Err(ServiceError::invalid("target", "a document cannot link to itself"));
            }
            self.run(&caller, id, C::Link { link_type, target: r.target }, r.options).await
        })
        .await
    }

    async fn archive_document(&self, req: Request<pb::DocumentCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::Archive, r.options).await
        })
        .await
    }

    async fn delete_document(&self, req: Request<pb::DeleteDocumentRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::Delete { hard: r.hard_delete, now: Utc::now() }, r.options).await
        })
        .await
    }

    async fn restore_document(&self, req: Request<pb::DocumentCommand>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::Restore, r.options).await
        })
        .await
    }

    async fn set_retention(&self, req: Request<pb::SetRetentionRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            let until = instant("retain_until", r.retain_until)?
                .ok_or_else(|| ServiceError::invalid("retain_until", "required"))?;
            self.run(&caller, id, C::SetRetention { until, now: Utc::now() }, r.options).await
        })
        .await
    }

    async fn place_legal_hold(&self, req: Request<pb::LegalHoldRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::PlaceLegalHold { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn release_legal_hold(&self, req: Request<pb::LegalHoldRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::ReleaseLegalHold { reason: r.reason }, r.options).await
        })
        .await
    }

    async fn quarantine_content(&self, req: Request<pb::QuarantineContentRequest>) -> Reply<pb::CommandResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            self.run(&caller, id, C::Quarantine { version: r.version, reason: r.reason }, r.options).await
        })
        .await
    }

    async fn get_document(&self, req: Request<pb::GetDocumentRequest>) -> Reply<pb::Document> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            queries::get_document(&self.pool, caller.tenant, id).await
        })
        .await
    }

    async fn list_versions(&self, req: Request<pb::ListVersionsRequest>) -> Reply<pb::ListVersionsResponse> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            let versions = queries::list_versions(&self.pool, caller.tenant, id).await?;
            Ok::<_, ServiceError>(pb::ListVersionsResponse { versions })
        })
        .await
    }

    async fn search_documents(&self, req: Request<pb::SearchDocumentsRequest>) -> Reply<pb::SearchDocumentsResponse> {
        handle(req, |caller, r| async move {
            let page = KeysetPage::parse(r.page, queries::DEFAULT_PAGE, queries::MAX_PAGE)?;
            let optional = |s: String| (!s.is_empty()).then_some(s);
            if !r.state.is_empty() && State::parse(&r.state).is_none() {
                return Err(ServiceError::invalid("state", format!("one of {}", State::NAMES.join(", "))));
            }
            if r.query.len() > 1000 || !cim_core::names::is_printable(&r.query) {
                return Err(ServiceError::invalid("query", "at most 1000 bytes of printable characters"));
            }
            let search = Search {
                query: r.query,
                state: optional(r.state),
                tag: optional(r.tag),
                content_type: optional(r.content_type),
                created_after: instant("created_after", r.created_after)?,
                created_before: instant("created_before", r.created_before)?,
                page,
            };
            let (documents, next) = queries::search(&self.pool, caller.tenant, &search).await?;
            Ok(pb::SearchDocumentsResponse { documents, page: Some(next) })
        })
        .await
    }

    async fn get_document_at_version(&self, req: Request<pb::GetDocumentAtVersionRequest>) -> Reply<pb::Document> {
        handle(req, |caller, r| async move {
            let id = document_id(&r.document_id)?;
            let as_of = self.executor.at_version(caller.tenant, id, r.version).await?;
            Ok::<_, ServiceError>(document_as_of(id, &as_of))
        })
        .await
    }
}

/// A document as folded from its history (versions' upload times are the projection's, so
/// absent here).
fn document_as_of(id: AggregateId, as_of: &cim_aggregate::AsOf<Document>) -> pb::Document {
    let d = &as_of.state;
    let version_of = |n: u32, v: &crate::domain::ContentVersion| pb::Version {
        version: n,
        cid: v.content.cid.clone(),
        size: v.content.size,
        content_type: v.content.content_type.clone(),
        filename: v.content.filename.clone(),
        tags: v.tags.clone(),
        quarantined: v.quarantined,
        created_at: None,
    };
    pb::Document {
        document_id: id.to_string(),
        title: d.details.title.clone(),
        description: d.details.description.clone(),
        tags: d.details.tags.clone(),
        metadata: Some(cim_proto::json::json_to_struct(&d.details.metadata)),
        state: d.state.as_str().to_owned(),
        version: as_of.version,
        current: d.current().map(|(n, v)| version_of(n, v)),
        links: d
            .links
            .iter()
            .map(|(t, target)| pb::Link { link_type: t.as_str().to_owned(), target: target.clone() })
            .collect(),
        retain_until: d.retain_until.map(cim_runtime::edge::timestamp),
        legal_hold: d.legal_hold.is_some(),
        created_at: Some(cim_runtime::edge::timestamp(as_of.created_at)),
        updated_at: Some(cim_runtime::edge::timestamp(as_of.updated_at)),
    }
}
