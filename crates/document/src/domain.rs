//! The document aggregate: its lifecycle, versions, links, retention and holds. Pure rules; the
//! kit's executor runs them and the bytes never come near them (only their content ids).

use chrono::{DateTime, Utc};
use cim_aggregate::Aggregate;
use cim_core::document::DocumentLimits;
use cim_core::{Domain, ErrorCode, FieldViolation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::events::*;

pub const AGGREGATE_TYPE: &str = "document";

const TITLE_MAX: usize = 500;
const DESCRIPTION_MAX: usize = 10_000;
const TAGS_MAX: usize = 64;
const TAG_MAX: usize = 64;
const LINKS_MAX: usize = 1_000;
const METADATA: DocumentLimits = DocumentLimits { max_bytes: 64 * 1024, max_depth: 16 };

/// Where a document is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Draft,
    InReview,
    Approved,
    Rejected,
    Archived,
    Deleted,
}

impl State {
    pub const NAMES: [&'static str; 6] = ["draft", "in_review", "approved", "rejected", "archived", "deleted"];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::InReview => "in_review",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Archived => "archived",
            State::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Draft, State::InReview, State::Approved, State::Rejected, State::Archived, State::Deleted]
            .into_iter()
            .find(|state| state.as_str() == s)
    }

    /// The review transitions `ChangeState` may make; archive, delete and restore have their own
    /// commands. Public for the console's copy of this table, which a gateway test checks.
    pub fn may_become(self, to: State) -> bool {
        use State::*;
        matches!((self, to), (Draft, InReview) | (InReview, Approved | Rejected | Draft) | (Approved | Rejected, Draft))
    }
}

/// How one document relates to another (or to another domain's aggregate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkType {
    References,
    Related,
    Supersedes,
    DerivedFrom,
    PartOf,
}

impl LinkType {
    pub const NAMES: [&'static str; 5] = ["references", "related", "supersedes", "derived_from", "part_of"];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkType::References => "references",
            LinkType::Related => "related",
            LinkType::Supersedes => "supersedes",
            LinkType::DerivedFrom => "derived_from",
            LinkType::PartOf => "part_of",
        }
    }

    pub fn parse(s: &str) -> Option<LinkType> {
        [LinkType::References, LinkType::Related, LinkType::Supersedes, LinkType::DerivedFrom, LinkType::PartOf]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// Bytes already in the object store, described by what the upload measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub cid: String,
    pub size: u64,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filename: String,
}

/// One content version as the aggregate remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentVersion {
    pub content: Content,
    pub tags: Vec<String>,
    pub quarantined: bool,
}

/// What a caller may write about a document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub enum DocumentCommand {
    Create(Details),
    AttachContent(Content),
    UpdateMetadata(Details),
    ChangeState { to: State, reason: String },
    TagVersion { version: u32, tag: String },
    RestoreVersion { version: u32 },
    Link { link_type: LinkType, target: String },
    Archive,
    Delete { hard: bool, now: DateTime<Utc> },
    Restore,
    SetRetention { until: DateTime<Utc>, now: DateTime<Utc> },
    PlaceLegalHold { reason: String },
    ReleaseLegalHold { reason: String },
    Quarantine { version: u32, reason: String },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the document is {from}; it cannot become {to}")]
    IllegalTransition { from: &'static str, to: &'static str },
    #[error(
        "the document is {0}: its content changes only in draft (approved or rejected documents go back to draft first)"
    )]
    ContentLocked(&'static str),
    #[error("the document is {0}: {1} is not possible")]
    NotLive(&'static str, &'static str),
    #[error("the document has no content yet")]
    NoContent,
    #[error("version {0} does not exist")]
    NoSuchVersion(u32),
    #[error("nothing to change: {0}")]
    Unchanged(String),
    #[error("the document is under legal hold ({0}): it cannot be deleted for good")]
    LegalHold(String),
    #[error("the document is retained until {0}: it cannot be deleted for good before then")]
    Retained(DateTime<Utc>),
    #[error("retention may only be extended: the document is already retained until {0}")]
    RetentionShortened(DateTime<Utc>),
    #[error("version {0} is quarantined")]
    Quarantined(u32),
    #[error("the document was deleted for good")]
    Purged,
}

impl cim_runtime::status::HasErrorCode for DocumentError {
    fn code(&self) -> ErrorCode {
        match self {
            DocumentError::Invalid { .. } => ErrorCode::InvalidArgument,
            DocumentError::NoSuchVersion(_) | DocumentError::Purged => ErrorCode::NotFound,
            _ => ErrorCode::FailedPrecondition,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            DocumentError::Invalid { field, reason } => vec![FieldViolation::new(*field, reason.clone())],
            _ => vec![],
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DocumentError {
    DocumentError::Invalid { field, reason: reason.into() }
}

/// A tag: 1-64 of a-z A-Z 0-9 . _ -.
pub fn check_tag(field: &'static str, tag: &str) -> Result<(), DocumentError> {
    let ok = !tag.is_empty()
        && tag.len() <= TAG_MAX
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(invalid(field, "1-64 of a-z A-Z 0-9 . _ -")) }
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), DocumentError> {
    if s.len() > max {
        return Err(invalid(field, format!("{} bytes; at most {max}", s.len())));
    }
    // Line breaks and tabs are text; other control and invisible formatting characters are not.
    if !cim_core::names::is_printable(&s.replace(['\n', '\t'], " ")) {
        return Err(invalid(field, "must not contain control or invisible formatting characters"));
    }
    Ok(())
}

fn check_details(d: &Details) -> Result<(), DocumentError> {
    if d.title.trim().is_empty() {
        return Err(invalid("title", "required"));
    }
    check_text("title", &d.title, TITLE_MAX)?;
    check_text("description", &d.description, DESCRIPTION_MAX)?;
    if d.tags.len() > TAGS_MAX {
        return Err(invalid("tags", format!("{} tags; at most {TAGS_MAX}", d.tags.len())));
    }
    for tag in &d.tags {
        check_tag("tags", tag)?;
    }
    cim_core::document::check(&d.metadata, &METADATA).map_err(|e| invalid("metadata", e.to_string()))
}

/// A link target: a document id, or `<domain>:<aggregate id>` for another domain's aggregate.
pub fn check_target(target: &str) -> Result<(), DocumentError> {
    let id = match target.split_once(':') {
        Some((domain, id)) => {
            if !Domain::ALL.iter().any(|d| d.as_str() == domain) {
                return Err(invalid("target", format!("unknown domain {domain:?}")));
            }
            id
        }
        None => target,
    };
    id.parse::<cim_core::AggregateId>().map(|_| ()).map_err(|e| invalid("target", e.to_string()))
}

/// A document's state, folded from its events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Document {
    pub details: Details,
    pub state: State,
    /// The state an archive or soft delete left, which a restore returns to.
    pub before: Option<State>,
    /// Content versions; version `n` is at index `n - 1` and the last is the current one.
    pub versions: Vec<ContentVersion>,
    pub links: Vec<(LinkType, String)>,
    pub retain_until: Option<DateTime<Utc>>,
    pub legal_hold: Option<String>,
    pub purged: bool,
}

impl Document {
    pub fn current(&self) -> Option<(u32, &ContentVersion)> {
        self.versions.last().map(|v| (self.versions.len() as u32, v))
    }

    pub fn version(&self, n: u32) -> Result<&ContentVersion, DocumentError> {
        n.checked_sub(1).and_then(|i| self.versions.get(i as usize)).ok_or(DocumentError::NoSuchVersion(n))
    }

    /// Whether new content may be uploaded now: checked before any byte is read, and again
    /// when the upload's event is decided.
    pub fn accepts_content(&self) -> Result<(), DocumentError> {
        if self.purged {
            return Err(DocumentError::Purged);
        }
        self.live("a content change")?;
        self.content_may_change()
    }

    fn live(&self, what: &'static str) -> Result<(), DocumentError> {
        match self.state {
            State::Archived | State::Deleted => Err(DocumentError::NotLive(self.state.as_str(), what)),
            _ => Ok(()),
        }
    }

    fn content_may_change(&self) -> Result<(), DocumentError> {
        match self.state {
            State::Draft => Ok(()),
            other => Err(DocumentError::ContentLocked(other.as_str())),
        }
    }

    fn next_content(&self, content: &Content) -> DocumentEvent {
        let version = self.versions.len() as u32 + 1;
        match self.current() {
            None => DocumentEvent::ContentIngested(ContentIngested { version, content: content.clone() }),
            Some((_, previous)) => DocumentEvent::ContentUpdated(ContentUpdated {
                version,
                new_content_cid: content.cid.clone(),
                previous_content_cid: previous.content.cid.clone(),
                size: content.size,
                content_type: content.content_type.clone(),
                filename: content.filename.clone(),
            }),
        }
    }
}

impl Aggregate for Document {
    const DOMAIN: Domain = Domain::Document;
    const AGGREGATE_TYPE: &'static str = AGGREGATE_TYPE;
    type Command = DocumentCommand;
    type Event = DocumentEvent;
    type Error = DocumentError;
    type Services = ();

    fn command_name(command: &DocumentCommand) -> &'static str {
        use DocumentCommand::*;
        match command {
            Create(_) => "create_document",
            AttachContent(_) => "upload_content",
            UpdateMetadata(_) => "update_metadata",
            ChangeState { .. } => "change_state",
            TagVersion { .. } => "tag_version",
            RestoreVersion { .. } => "restore_version",
            Link { .. } => "link_documents",
            Archive => "archive_document",
            Delete { .. } => "delete_document",
            Restore => "restore_document",
            SetRetention { .. } => "set_retention",
            PlaceLegalHold { .. } => "place_legal_hold",
            ReleaseLegalHold { .. } => "release_legal_hold",
            Quarantine { .. } => "quarantine_content",
        }
    }

    fn creates(command: &DocumentCommand) -> bool {
        matches!(command, DocumentCommand::Create(_))
    }

    fn decide(&self, command: &DocumentCommand, _: &()) -> Result<Vec<DocumentEvent>, DocumentError> {
        use DocumentCommand as C;
        use DocumentEvent as E;
        if self.purged {
            return Err(DocumentError::Purged);
        }
        let event = match command {
            C::Create(details) => {
                check_details(details)?;
                E::Created(Created { details: details.clone() })
            }
            C::AttachContent(content) => {
                self.accepts_content()?;
                if let Some((n, current)) = self.current()
                    && current.content.cid == content.cid
                {
                    return Err(DocumentError::Unchanged(format!("the content is already version {n}")));
                }
                self.next_content(content)
            }
            C::UpdateMetadata(details) => {
                self.live("a metadata change")?;
                check_details(details)?;
                if *details == self.details {
                    return Err(DocumentError::Unchanged("the metadata is the same".into()));
                }
                E::MetadataUpdated(MetadataUpdated { details: details.clone() })
            }
            C::ChangeState { to, reason } => {
                check_text("reason", reason, DESCRIPTION_MAX)?;
                self.live("a review transition")?;
                if !self.state.may_become(*to) {
                    return Err(DocumentError::IllegalTransition { from: self.state.as_str(), to: to.as_str() });
                }
                if *to == State::InReview && self.versions.is_empty() {
                    return Err(DocumentError::NoContent);
                }
                E::StateChanged(StateChanged { from: self.state, to: *to, reason: reason.clone() })
            }
            C::TagVersion { version, tag } => {
                check_tag("tag", tag)?;
                self.live("tagging")?;
                if self.version(*version)?.tags.contains(tag) {
                    return Err(DocumentError::Unchanged(format!("version {version} is already tagged {tag:?}")));
                }
                E::VersionTagged(VersionTagged { version: *version, tag: tag.clone() })
            }
            C::RestoreVersion { version } => {
                self.live("a version restore")?;
                self.content_may_change()?;
                let earlier = self.version(*version)?;
                if earlier.quarantined {
                    return Err(DocumentError::Quarantined(*version));
                }
                let (current, now) = self.current().ok_or(DocumentError::NoContent)?;
                if now.content.cid == earlier.content.cid {
                    return Err(DocumentError::Unchanged(format!("version {current} already has that content")));
                }
                E::VersionRestored(VersionRestored {
                    version: current + 1,
                    restored_from: *version,
                    content: earlier.content.clone(),
                    previous_content_cid: now.content.cid.clone(),
                })
            }
            C::Link { link_type, target } => {
                check_target(target)?;
                self.live("linking")?;
                if self.links.len() >= LINKS_MAX {
                    return Err(invalid("target", format!("at most {LINKS_MAX} links per document")));
                }
                if self.links.iter().any(|(t, to)| t == link_type && to == target) {
                    return Err(DocumentError::Unchanged(format!("already linked {} {target}", link_type.as_str())));
                }
                E::Linked(Linked { link_type: *link_type, target: target.clone() })
            }
            C::Archive => {
                self.live("archiving")?;
                E::Archived(Archived { previous_state: self.state })
            }
            C::Delete { hard, now } => {
                if *hard {
                    if let Some(reason) = &self.legal_hold {
                        return Err(DocumentError::LegalHold(reason.clone()));
                    }
                    if let Some(until) = self.retain_until
                        && until > *now
                    {
                        return Err(DocumentError::Retained(until));
                    }
                } else if self.state == State::Deleted {
                    return Err(DocumentError::Unchanged("the document is already deleted".into()));
                }
                let previous_state = self.before.filter(|_| self.state == State::Deleted).unwrap_or(self.state);
                E::Deleted(Deleted { hard_delete: *hard, previous_state })
            }
            C::Restore => match (self.state, self.before) {
                (State::Archived | State::Deleted, Some(state)) => E::Restored(Restored { state }),
                _ => {
                    return Err(DocumentError::NotLive(
                        self.state.as_str(),
                        "a restore (only archived or deleted documents are restored)",
                    ));
                }
            },
            C::SetRetention { until, now } => {
                if until <= now {
                    return Err(invalid("retain_until", "must be in the future"));
                }
                if let Some(current) = self.retain_until
                    && *until < current
                {
                    return Err(DocumentError::RetentionShortened(current));
                }
                E::RetentionSet(RetentionSet { retain_until: *until })
            }
            C::PlaceLegalHold { reason } => {
                check_text("reason", reason, DESCRIPTION_MAX)?;
                if self.legal_hold.is_some() {
                    return Err(DocumentError::Unchanged("a legal hold is already placed".into()));
                }
                E::LegalHoldPlaced(LegalHold { reason: reason.clone() })
            }
            C::ReleaseLegalHold { reason } => {
                check_text("reason", reason, DESCRIPTION_MAX)?;
                if self.legal_hold.is_none() {
                    return Err(DocumentError::Unchanged("no legal hold is placed".into()));
                }
                E::LegalHoldReleased(LegalHold { reason: reason.clone() })
            }
            C::Quarantine { version, reason } => {
                check_text("reason", reason, DESCRIPTION_MAX)?;
                let quarantined = self.version(*version)?;
                if quarantined.quarantined {
                    return Err(DocumentError::Unchanged(format!("version {version} is already quarantined")));
                }
                E::ContentQuarantined(ContentQuarantined {
                    version: *version,
                    cid: quarantined.content.cid.clone(),
                    reason: reason.clone(),
                })
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &DocumentEvent) {
        use DocumentEvent as E;
        let new_version = |content: Content| ContentVersion { content, tags: Vec::new(), quarantined: false };
        match event {
            E::Created(e) => self.details = e.details.clone(),
            E::ContentIngested(e) => self.versions.push(new_version(e.content.clone())),
            E::ContentUpdated(e) => self.versions.push(new_version(e.content())),
            E::VersionRestored(e) => self.versions.push(new_version(e.content.clone())),
            E::MetadataUpdated(e) => self.details = e.details.clone(),
            E::StateChanged(e) => self.state = e.to,
            E::VersionTagged(e) => {
                // A tag names one version: tagging another moves it.
                for v in &mut self.versions {
                    v.tags.retain(|t| *t != e.tag);
                }
                if let Some(v) = e.version.checked_sub(1).and_then(|i| self.versions.get_mut(i as usize)) {
                    v.tags.push(e.tag.clone());
                }
            }
            E::Linked(e) => self.links.push((e.link_type, e.target.clone())),
            E::Archived(e) => {
                self.before = Some(e.previous_state);
                self.state = State::Archived;
            }
            E::Deleted(e) => {
                self.before = Some(e.previous_state);
                self.state = State::Deleted;
                self.purged = e.hard_delete;
            }
            E::Restored(e) => {
                self.state = e.state;
                self.before = None;
            }
            E::RetentionSet(e) => self.retain_until = Some(e.retain_until),
            E::LegalHoldPlaced(e) => self.legal_hold = Some(e.reason.clone()),
            E::LegalHoldReleased(_) => self.legal_hold = None,
            E::ContentQuarantined(e) => {
                if let Some(v) = e.version.checked_sub(1).and_then(|i| self.versions.get_mut(i as usize)) {
                    v.quarantined = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
