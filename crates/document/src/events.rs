//! The document domain's events, listed once (`cim_core::domain_events!`). Payloads carry
//! content ids and metadata, never bytes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{Content, Details, LinkType, State};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    #[serde(flatten)]
    pub details: Details,
}

/// The first content of a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentIngested {
    pub version: u32,
    #[serde(flatten)]
    pub content: Content,
}

/// A later content version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentUpdated {
    pub version: u32,
    pub new_content_cid: String,
    pub previous_content_cid: String,
    pub size: u64,
    pub content_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filename: String,
}

impl ContentUpdated {
    pub fn content(&self) -> Content {
        Content {
            cid: self.new_content_cid.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
            filename: self.filename.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataUpdated {
    #[serde(flatten)]
    pub details: Details,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChanged {
    pub from: State,
    pub to: State,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionTagged {
    pub version: u32,
    pub tag: String,
}

/// An earlier version's content made current again, as version `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRestored {
    pub version: u32,
    pub restored_from: u32,
    #[serde(flatten)]
    pub content: Content,
    pub previous_content_cid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linked {
    pub link_type: LinkType,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    pub previous_state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    pub hard_delete: bool,
    pub previous_state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    pub state: State,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionSet {
    pub retain_until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegalHold {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentQuarantined {
    pub version: u32,
    pub cid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

cim_core::domain_events! {
    pub enum DocumentEvent {
        Created(Created) = "document_created",
        ContentIngested(ContentIngested) = "document_content_ingested",
        ContentUpdated(ContentUpdated) = "document_content_updated",
        MetadataUpdated(MetadataUpdated) = "document_metadata_updated",
        StateChanged(StateChanged) = "state_changed",
        VersionTagged(VersionTagged) = "version_tagged",
        VersionRestored(VersionRestored) = "document_version_restored",
        Linked(Linked) = "documents_linked",
        Archived(Archived) = "document_archived",
        Deleted(Deleted) = "document_deleted",
        Restored(Restored) = "document_restored",
        RetentionSet(RetentionSet) = "retention_set",
        LegalHoldPlaced(LegalHold) = "legal_hold_placed",
        LegalHoldReleased(LegalHold) = "legal_hold_released",
        ContentQuarantined(ContentQuarantined) = "document_content_quarantined",
    }
}
