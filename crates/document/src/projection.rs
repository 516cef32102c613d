//! The read tables, written in each command's transaction by the kit's executor.

use cim_aggregate::Projection;
use cim_core::EventEnvelope;
use sqlx::PgConnection;

use crate::domain::{Content, State};
use crate::events::DocumentEvent;

/// Projects document events into `documents` and `document_versions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DocumentProjection;

impl Projection for DocumentProjection {
    type Event = DocumentEvent;

    async fn apply(&self, tx: &mut PgConnection, at: &EventEnvelope, event: &DocumentEvent) -> Result<(), sqlx::Error> {
        project(tx, at, event).await
    }
}

async fn project(tx: &mut PgConnection, at: &EventEnvelope, event: &DocumentEvent) -> Result<(), sqlx::Error> {
    use DocumentEvent as E;
    let tenant = at.tenant_id.as_uuid();
    let id = at.aggregate_id.as_uuid();
    match event {
        E::Created(e) => {
            let d = &e.details;
            sqlx::query(
                "INSERT INTO documents (tenant_id, document_id, title, description, tags, metadata, state, version, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'draft', 0, $7, $7)",
            )
            .bind(tenant)
            .bind(id)
            .bind(&d.title)
            .bind(&d.description)
            .bind(&d.tags)
            .bind(sqlx::types::Json(&d.metadata))
            .bind(at.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        E::ContentIngested(e) => add_version(tx, at, e.version, &e.content).await?,
        E::ContentUpdated(e) => add_version(tx, at, e.version, &e.content()).await?,
        E::VersionRestored(e) => add_version(tx, at, e.version, &e.content).await?,
        E::MetadataUpdated(e) => {
            let d = &e.details;
            sqlx::query(
                "UPDATE documents SET title = $3, description = $4, tags = $5, metadata = $6 \
                 WHERE tenant_id = $1 AND document_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(&d.title)
            .bind(&d.description)
            .bind(&d.tags)
            .bind(sqlx::types::Json(&d.metadata))
            .execute(&mut *tx)
            .await?;
        }
        E::StateChanged(e) => set_state(tx, at, e.to).await?,
        E::Archived(_) => set_state(tx, at, State::Archived).await?,
        E::Restored(e) => set_state(tx, at, e.state).await?,
        E::Deleted(e) => {
            set_state(tx, at, State::Deleted).await?;
            if e.hard_delete {
                // The versions go, so the sweeper may collect content nothing else references;
                // the events keep the history of content ids.
                sqlx::query("DELETE FROM document_versions WHERE tenant_id = $1 AND document_id = $2")
                    .bind(tenant)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE documents SET purged = true, current_version = NULL, content_type = NULL \
                     WHERE tenant_id = $1 AND document_id = $2",
                )
                .bind(tenant)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        E::VersionTagged(e) => {
            sqlx::query(
                "UPDATE document_versions SET tags = CASE WHEN version = $3 THEN array_append(array_remove(tags, $4), $4) \
                 ELSE array_remove(tags, $4) END WHERE tenant_id = $1 AND document_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(e.version as i32)
            .bind(&e.tag)
            .execute(&mut *tx)
            .await?;
        }
        E::Linked(e) => {
            let link = serde_json::json!([{ "link_type": e.link_type.as_str(), "target": e.target }]);
            sqlx::query("UPDATE documents SET links = links || $3 WHERE tenant_id = $1 AND document_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(link)
                .execute(&mut *tx)
                .await?;
        }
        E::RetentionSet(e) => {
            sqlx::query("UPDATE documents SET retain_until = $3 WHERE tenant_id = $1 AND document_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(e.retain_until)
                .execute(&mut *tx)
                .await?;
        }
        E::LegalHoldPlaced(_) | E::LegalHoldReleased(_) => {
            let held = matches!(event, E::LegalHoldPlaced(_));
            sqlx::query("UPDATE documents SET legal_hold = $3 WHERE tenant_id = $1 AND document_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(held)
                .execute(&mut *tx)
                .await?;
        }
        E::ContentQuarantined(e) => {
            sqlx::query(
                "UPDATE document_versions SET quarantined = true \
                 WHERE tenant_id = $1 AND document_id = $2 AND version = $3",
            )
            .bind(tenant)
            .bind(id)
            .bind(e.version as i32)
            .execute(&mut *tx)
            .await?;
        }
    }
    // Every event moves the version; the search vector follows the text it covers.
    sqlx::query(
        "UPDATE documents d SET version = $3, updated_at = $4, search = \
           setweight(to_tsvector('simple', d.title), 'A') || \
           setweight(to_tsvector('simple', d.description || ' ' || array_to_string(d.tags, ' ')), 'B') || \
           setweight(jsonb_to_tsvector('simple', d.metadata, '[\"string\", \"numeric\"]'), 'C') || \
           setweight(to_tsvector('simple', coalesce((SELECT t.body FROM document_versions v \
             JOIN content_text t ON t.tenant_id = v.tenant_id AND t.cid = v.cid \
             WHERE v.tenant_id = d.tenant_id AND v.document_id = d.document_id \
             AND v.version = d.current_version), '')), 'D') \
         WHERE tenant_id = $1 AND document_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(at.sequence as i64)
    .bind(at.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn add_version(
    tx: &mut PgConnection,
    at: &EventEnvelope,
    version: u32,
    content: &Content,
) -> Result<(), sqlx::Error> {
    let tenant = at.tenant_id.as_uuid();
    let id = at.aggregate_id.as_uuid();
    sqlx::query(
        "INSERT INTO document_versions (tenant_id, document_id, version, cid, size, content_type, filename, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant)
    .bind(id)
    .bind(version as i32)
    .bind(&content.cid)
    .bind(content.size as i64)
    .bind(&content.content_type)
    .bind(&content.filename)
    .bind(at.occurred_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE documents SET current_version = $3, content_type = $4 WHERE tenant_id = $1 AND document_id = $2",
    )
    .bind(tenant)
    .bind(id)
    .bind(version as i32)
    .bind(&content.content_type)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn set_state(tx: &mut PgConnection, at: &EventEnvelope, state: State) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE documents SET state = $3 WHERE tenant_id = $1 AND document_id = $2")
        .bind(at.tenant_id.as_uuid())
        .bind(at.aggregate_id.as_uuid())
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
