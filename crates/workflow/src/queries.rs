//! Reads over the projections, always within the caller's tenant: another tenant's definition
//! or instance is simply not found.

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, TenantId};
use cim_proto::common::PageResponse;
use cim_proto::workflow as pb;
use cim_runtime::edge::{KeysetPage, timestamp};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::error::ServiceError;
use crate::instance::WorkflowStatus;
use crate::spec::Definition;

/// List pages: the size when a request names none, and the largest it may ask for.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

/// One definition version's body: `content_id` or, when absent, the current version.
pub async fn definition_version(
    pool: &PgPool,
    tenant: TenantId,
    id: AggregateId,
    content_id: Option<&str>,
) -> Result<(String, Definition), ServiceError> {
    let row = sqlx::query(
        "SELECT v.content_id, v.body FROM workflow_definitions d JOIN workflow_definition_versions v \
         ON v.tenant_id = d.tenant_id AND v.definition_id = d.definition_id \
         AND v.content_id = COALESCE($3, d.content_id) WHERE d.tenant_id = $1 AND d.definition_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .bind(content_id)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or_else(|| match content_id {
        Some(cid) => ServiceError::not_found(format!("workflow definition {id} has no version {cid}")),
        None => ServiceError::not_found(format!("workflow definition {id} not found")),
    })?;
    let body: Json<Definition> = row.try_get("body")?;
    Ok((row.try_get("content_id")?, body.0))
}

fn definition_from_row(row: &PgRow, body: Option<&Definition>) -> Result<pb::Definition, ServiceError> {
    Ok(pb::Definition {
        definition_id: row.try_get::<uuid::Uuid, _>("definition_id")?.to_string(),
        name: row.try_get("name")?,
        content_id: row.try_get("content_id")?,
        definition: body.map(|d| cim_proto::json::json_to_struct(&d.to_json())),
        versions: row.try_get("versions")?,
        version: row.try_get::<i64, _>("version")? as u64,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
    })
}

const DEFINITION_COLUMNS: &str = "definition_id, name, content_id, versions, version, created_at, updated_at";

/// A definition with the body of `content_id` (default: the current version).
pub async fn get_definition(
    pool: &PgPool,
    tenant: TenantId,
    id: AggregateId,
    content_id: Option<&str>,
) -> Result<pb::Definition, ServiceError> {
    let (content_id, body) = definition_version(pool, tenant, id, content_id).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEFINITION_COLUMNS} FROM workflow_definitions WHERE tenant_id = $1 AND definition_id = $2"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_one(pool)
    .await?;
    Ok(pb::Definition { content_id, ..definition_from_row(&row, Some(&body))? })
}

/// Definitions without their bodies, newest first.
pub async fn list_definitions(
    pool: &PgPool,
    tenant: TenantId,
    page: KeysetPage,
) -> Result<(Vec<pb::Definition>, PageResponse), ServiceError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEFINITION_COLUMNS} FROM workflow_definitions WHERE tenant_id = $1 \
         AND ($2::uuid IS NULL OR definition_id < $2) ORDER BY definition_id DESC LIMIT $3"
    )))
    .bind(tenant.as_uuid())
    .bind(page.after)
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let definitions = rows.iter().map(|r| definition_from_row(r, None)).collect::<Result<Vec<_>, _>>()?;
    Ok(page.split(definitions, |d| d.definition_id.clone()))
}

/// What the list filters on; absent means any.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub status: Option<WorkflowStatus>,
    pub definition: Option<AggregateId>,
    pub correlation: Option<uuid::Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

const INSTANCE_COLUMNS: &str =
    "instance_id, definition_id, content_id, name, status, correlation_id, error, version, created_at, updated_at";

fn summary_from_row(row: &PgRow) -> Result<pb::WorkflowSummary, ServiceError> {
    Ok(pb::WorkflowSummary {
        instance_id: row.try_get::<uuid::Uuid, _>("instance_id")?.to_string(),
        definition_id: row.try_get::<uuid::Uuid, _>("definition_id")?.to_string(),
        content_id: row.try_get("content_id")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        correlation_id: row.try_get::<uuid::Uuid, _>("correlation_id")?.to_string(),
        version: row.try_get::<i64, _>("version")? as u64,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
    })
}

/// Instances matching `filter`, newest first.
pub async fn list_workflows(
    pool: &PgPool,
    tenant: TenantId,
    filter: &InstanceFilter,
    page: KeysetPage,
) -> Result<(Vec<pb::WorkflowSummary>, PageResponse), ServiceError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INSTANCE_COLUMNS} FROM workflow_instances WHERE tenant_id = $1 \
         AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR definition_id = $3) \
         AND ($4::uuid IS NULL OR correlation_id = $4) AND ($5::timestamptz IS NULL OR created_at >= $5) \
         AND ($6::timestamptz IS NULL OR created_at < $6) AND ($7::uuid IS NULL OR instance_id < $7) \
         ORDER BY instance_id DESC LIMIT $8"
    )))
    .bind(tenant.as_uuid())
    .bind(filter.status.map(WorkflowStatus::as_str))
    .bind(filter.definition.map(|d| d.as_uuid()))
    .bind(filter.correlation)
    .bind(filter.created_after)
    .bind(filter.created_before)
    .bind(page.after)
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let workflows = rows.iter().map(summary_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.split(workflows, |w| w.instance_id.clone()))
}

/// An instance's row: what its replayed state does not hold (correlation, times).
pub async fn workflow_summary(
    pool: &PgPool,
    tenant: TenantId,
    id: AggregateId,
) -> Result<pb::WorkflowSummary, ServiceError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INSTANCE_COLUMNS} FROM workflow_instances WHERE tenant_id = $1 AND instance_id = $2"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.as_ref()
        .map(summary_from_row)
        .transpose()?
        .ok_or_else(|| ServiceError::not_found(format!("workflow {id} not found")))
}
