//! Reads over the projections, always within the caller's tenant: another tenant's document is
//! simply not found.

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, TenantId};
use cim_proto::common::PageResponse;
use cim_proto::document as pb;
use cim_proto::json::json_to_struct;
use cim_runtime::edge::{KeysetPage, timestamp};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::error::ServiceError;

pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

fn not_found(id: AggregateId) -> ServiceError {
    ServiceError::not_found(format!("document {id} not found"))
}

fn version_from_row(row: &PgRow) -> Result<pb::Version, ServiceError> {
    Ok(pb::Version {
        version: row.try_get::<i32, _>("version")? as u32,
        cid: row.try_get("cid")?,
        size: row.try_get::<i64, _>("size")? as u64,
        content_type: row.try_get("content_type")?,
        filename: row.try_get("filename")?,
        tags: row.try_get("tags")?,
        quarantined: row.try_get("quarantined")?,
        created_at: Some(timestamp(row.try_get("created_at")?)),
    })
}

const DOCUMENT_COLUMNS: &str = "d.document_id, d.title, d.description, d.tags, d.metadata, d.state, d.version, \
     d.links, d.retain_until, d.legal_hold, d.created_at, d.updated_at, \
     v.version AS cv_version, v.cid AS cv_cid, v.size AS cv_size, v.content_type AS cv_content_type, \
     v.filename AS cv_filename, v.tags AS cv_tags, v.quarantined AS cv_quarantined, v.created_at AS cv_created_at";

const DOCUMENT_FROM: &str = "documents d LEFT JOIN document_versions v ON v.tenant_id = d.tenant_id \
     AND v.document_id = d.document_id AND v.version = d.current_version";

fn document_from_row(row: &PgRow) -> Result<pb::Document, ServiceError> {
    let metadata: sqlx::types::Json<serde_json::Map<String, serde_json::Value>> = row.try_get("metadata")?;
    let links: sqlx::types::Json<Vec<serde_json::Value>> = row.try_get("links")?;
    let current = match row.try_get::<Option<i32>, _>("cv_version")? {
        None => None,
        Some(version) => Some(pb::Version {
            version: version as u32,
            cid: row.try_get("cv_cid")?,
            size: row.try_get::<i64, _>("cv_size")? as u64,
            content_type: row.try_get("cv_content_type")?,
            filename: row.try_get("cv_filename")?,
            tags: row.try_get("cv_tags")?,
            quarantined: row.try_get("cv_quarantined")?,
            created_at: Some(timestamp(row.try_get("cv_created_at")?)),
        }),
    };
    let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or_default().to_owned();
    Ok(pb::Document {
        document_id: row.try_get::<uuid::Uuid, _>("document_id")?.to_string(),
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        tags: row.try_get("tags")?,
        metadata: Some(json_to_struct(&metadata.0)),
        state: row.try_get("state")?,
        version: row.try_get::<i64, _>("version")? as u64,
        current,
        links: links
            .0
            .iter()
            .map(|l| pb::Link { link_type: text(l, "link_type"), target: text(l, "target") })
            .collect(),
        retain_until: row.try_get::<Option<DateTime<Utc>>, _>("retain_until")?.map(timestamp),
        legal_hold: row.try_get("legal_hold")?,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
    })
}

pub async fn get_document(pool: &PgPool, tenant: TenantId, id: AggregateId) -> Result<pb::Document, ServiceError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DOCUMENT_COLUMNS} FROM {DOCUMENT_FROM} \
         WHERE d.tenant_id = $1 AND d.document_id = $2 AND NOT d.purged"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(document_from_row).transpose()?.ok_or_else(|| not_found(id))
}

pub async fn list_versions(pool: &PgPool, tenant: TenantId, id: AggregateId) -> Result<Vec<pb::Version>, ServiceError> {
    get_document(pool, tenant, id).await?;
    versions_of(pool, tenant, id).await
}

/// The versions of a document the caller has already found.
async fn versions_of(pool: &PgPool, tenant: TenantId, id: AggregateId) -> Result<Vec<pb::Version>, ServiceError> {
    let rows = sqlx::query(
        "SELECT version, cid, size, content_type, filename, tags, quarantined, created_at FROM document_versions \
         WHERE tenant_id = $1 AND document_id = $2 ORDER BY version",
    )
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?;
    rows.iter().map(version_from_row).collect()
}

/// Which version a download asks for.
#[derive(Debug, Clone)]
pub enum Wanted {
    Current,
    Number(u32),
    Tag(String),
}

/// The version a download reads, refusing quarantined content.
pub async fn downloadable(
    pool: &PgPool,
    tenant: TenantId,
    id: AggregateId,
    wanted: &Wanted,
) -> Result<pb::Version, ServiceError> {
    let document = get_document(pool, tenant, id).await?;
    let found = match wanted {
        Wanted::Current => document.current,
        Wanted::Number(n) => versions_of(pool, tenant, id).await?.into_iter().find(|v| v.version == *n),
        Wanted::Tag(tag) => versions_of(pool, tenant, id).await?.into_iter().find(|v| v.tags.contains(tag)),
    };
    let version = found.ok_or_else(|| {
        ServiceError::not_found(match wanted {
            Wanted::Current => format!("document {id} has no content yet"),
            Wanted::Number(n) => format!("document {id} has no version {n}"),
            Wanted::Tag(tag) => format!("document {id} has no version tagged {tag:?}"),
        })
    })?;
    if version.quarantined {
        return Err(ServiceError::precondition(format!(
            "version {} of document {id} is quarantined: its content cannot be downloaded",
            version.version
        )));
    }
    Ok(version)
}

/// Search filters; each is optional.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: String,
    pub state: Option<String>,
    pub tag: Option<String>,
    pub content_type: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub page: KeysetPage,
}

/// Full-text search with filters, newest first, keyset-paged by document id (UUIDv7).
pub async fn search(
    pool: &PgPool,
    tenant: TenantId,
    s: &Search,
) -> Result<(Vec<pb::Document>, PageResponse), ServiceError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DOCUMENT_COLUMNS} FROM {DOCUMENT_FROM} \
         WHERE d.tenant_id = $1 AND NOT d.purged \
         AND ($2 = '' OR d.search @@ websearch_to_tsquery('simple', $2)) \
         AND ($3::text IS NULL OR d.state = $3) \
         AND ($4::text IS NULL OR $4 = ANY(d.tags)) \
         AND ($5::text IS NULL OR d.content_type = $5) \
         AND ($6::timestamptz IS NULL OR d.created_at >= $6) \
         AND ($7::timestamptz IS NULL OR d.created_at < $7) \
         AND ($8::uuid IS NULL OR d.document_id < $8) \
         ORDER BY d.document_id DESC LIMIT $9"
    )))
    .bind(tenant.as_uuid())
    .bind(&s.query)
    .bind(&s.state)
    .bind(&s.tag)
    .bind(&s.content_type)
    .bind(s.created_after)
    .bind(s.created_before)
    .bind(s.page.after)
    .bind(s.page.fetch())
    .fetch_all(pool)
    .await?;
    let documents = rows.iter().map(document_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(s.page.split(documents, |d| d.document_id.clone()))
}
