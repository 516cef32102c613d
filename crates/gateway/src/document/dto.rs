//! The document routes' JSON: representations, requests, query parameters, and their
//! conversions from the gRPC messages.

use super::*;

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
pub struct Versions {
    pub items: Vec<Version>,
}

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
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The name a download offers.
    pub filename: Option<String>,
    /// The CID the client computed; a mismatch stores nothing (400).
    pub expected_cid: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContentQuery {
    /// A content version number (default: the current one).
    pub version: Option<u32>,
    /// A tag instead of a number.
    pub tag: Option<String>,
}

pub(super) fn version(v: pb::Version) -> Version {
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

pub(super) fn document(d: pb::Document) -> Document {
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

pub(super) fn result(r: pb::CommandResponse) -> CommandResult {
    CommandResult {
        document_id: r.document_id,
        version: r.version,
        event_ids: r.event_ids,
        replayed: r.replayed,
        content_version: (r.content_version > 0).then_some(r.content_version),
        content_cid: (!r.content_cid.is_empty()).then_some(r.content_cid),
    }
}

pub(super) fn done(r: pb::CommandResponse) -> Json<CommandResult> {
    Json(result(r))
}

pub(super) const PROBLEM: &str = "application/problem+json";
