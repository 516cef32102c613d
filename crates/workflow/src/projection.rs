//! The read tables, written in each command's transaction by the kit's executor: definitions,
//! their versions and triggers by the definition events; instances, the engine's due work
//! (`workflow_due`) and what waiting steps wait for (`waits`) by the instance events.

use cim_aggregate::Projection;
use cim_core::EventEnvelope;
use sqlx::PgConnection;
use sqlx::types::Json;

use crate::events::{DefinitionEvent, WorkflowEvent};
use crate::instance::WorkflowStatus;

mod waits;

/// Projects definition events into `workflow_definitions` and `workflow_definition_versions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefinitionProjection;

impl Projection for DefinitionProjection {
    type Event = DefinitionEvent;

    async fn apply(
        &self,
        tx: &mut PgConnection,
        at: &EventEnvelope,
        event: &DefinitionEvent,
    ) -> Result<(), sqlx::Error> {
        let (tenant, id) = (at.tenant_id.as_uuid(), at.aggregate_id.as_uuid());
        let (content_id, definition) = match event {
            DefinitionEvent::Created(e) => {
                sqlx::query(
                    "INSERT INTO workflow_definitions (tenant_id, definition_id, name, content_id, versions, version, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, ARRAY[$4], $5, $6, $6)",
                )
                .bind(tenant)
                .bind(id)
                .bind(&e.definition.name)
                .bind(&e.content_id)
                .bind(at.sequence as i64)
                .bind(at.occurred_at)
                .execute(&mut *tx)
                .await?;
                (&e.content_id, &e.definition)
            }
            DefinitionEvent::Revised(e) => {
                sqlx::query(
                    "UPDATE workflow_definitions SET name = $3, content_id = $4, versions = array_append(versions, $4), \
                     version = $5, updated_at = $6 WHERE tenant_id = $1 AND definition_id = $2",
                )
                .bind(tenant)
                .bind(id)
                .bind(&e.definition.name)
                .bind(&e.content_id)
                .bind(at.sequence as i64)
                .bind(at.occurred_at)
                .execute(&mut *tx)
                .await?;
                (&e.content_id, &e.definition)
            }
        };
        // A revision back to an earlier content is a new version with a body already kept.
        sqlx::query(
            "INSERT INTO workflow_definition_versions (tenant_id, definition_id, content_id, body, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(id)
        .bind(content_id)
        .bind(Json(definition))
        .bind(at.occurred_at)
        .execute(&mut *tx)
        .await?;
        waits::triggers(tx, at, definition).await
    }
}

/// Projects instance events into `workflow_instances` and `workflow_due`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkflowProjection;

impl Projection for WorkflowProjection {
    type Event = WorkflowEvent;

    async fn apply(&self, tx: &mut PgConnection, at: &EventEnvelope, event: &WorkflowEvent) -> Result<(), sqlx::Error> {
        use WorkflowEvent as E;
        let (tenant, id) = (at.tenant_id.as_uuid(), at.aggregate_id.as_uuid());
        waits::step(tx, at, event).await?;
        match event {
            E::Created(e) => {
                sqlx::query(
                    "INSERT INTO workflow_instances (tenant_id, instance_id, definition_id, content_id, name, status, \
                     correlation_id, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'draft', $6, 0, $7, $7)",
                )
                .bind(tenant)
                .bind(id)
                .bind(e.definition_id.as_uuid())
                .bind(&e.content_id)
                .bind(&e.definition.name)
                .bind(at.correlation_id.as_uuid())
                .bind(at.occurred_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO workflow_due (tenant_id, instance_id, correlation_id, due_at, version) \
                     VALUES ($1, $2, $3, NULL, 0)",
                )
                .bind(tenant)
                .bind(id)
                .bind(at.correlation_id.as_uuid())
                .execute(&mut *tx)
                .await?;
            }
            E::Failed(e) => {
                sqlx::query("UPDATE workflow_instances SET error = $3 WHERE tenant_id = $1 AND instance_id = $2")
                    .bind(tenant)
                    .bind(id)
                    .bind(format!("{}: {}", e.step, e.error))
                    .execute(&mut *tx)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The instance row's status and version and its due row, once per command: a command
    /// that runs a chain of steps writes dozens of events, and these rows keep only the last.
    async fn settle(
        &self,
        tx: &mut PgConnection,
        at: &[EventEnvelope],
        events: &[WorkflowEvent],
    ) -> Result<(), sqlx::Error> {
        let (Some(last), Some(last_event)) = (at.last(), events.last()) else { return Ok(()) };
        let statuses: Vec<WorkflowStatus> = events.iter().filter_map(status_after).collect();
        sqlx::query(
            "UPDATE workflow_instances SET status = coalesce($3, status), version = $4, updated_at = $5 \
             WHERE tenant_id = $1 AND instance_id = $2",
        )
        .bind(last.tenant_id.as_uuid())
        .bind(last.aggregate_id.as_uuid())
        .bind(statuses.last().map(|s| s.as_str()))
        .bind(last.sequence as i64)
        .bind(last.occurred_at)
        .execute(&mut *tx)
        .await?;
        let finished = statuses.iter().any(|s| s.is_final());
        due(tx, last, finished, status_after(last_event)).await
    }
}

/// The status an event moves its instance to, if it moves it.
fn status_after(event: &WorkflowEvent) -> Option<WorkflowStatus> {
    use WorkflowEvent as E;
    match event {
        E::Started(_) | E::Resumed(_) => Some(WorkflowStatus::Running),
        E::Paused(_) => Some(WorkflowStatus::Paused),
        E::Completed(_) => Some(WorkflowStatus::Completed),
        E::Cancelled(_) => Some(WorkflowStatus::Cancelled),
        E::Failed(_) => Some(WorkflowStatus::Failed),
        _ => None,
    }
}

/// A finished instance leaves the due work; a paused one waits for its resumption; a draft for
/// its start; any other event may have made something ready, so the engine looks at once.
/// `at` is the command's last event and `status` the status it moved to, if it moved it.
async fn due(
    tx: &mut PgConnection,
    at: &EventEnvelope,
    finished: bool,
    status: Option<WorkflowStatus>,
) -> Result<(), sqlx::Error> {
    let (tenant, id) = (at.tenant_id.as_uuid(), at.aggregate_id.as_uuid());
    if finished {
        waits::end(tx, at, None).await?;
        sqlx::query("DELETE FROM workflow_due WHERE tenant_id = $1 AND instance_id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        return Ok(());
    }
    let waits = matches!(status, Some(WorkflowStatus::Paused)) || at.sequence == 1;
    sqlx::query("UPDATE workflow_due SET due_at = $3, version = $4 WHERE tenant_id = $1 AND instance_id = $2")
        .bind(tenant)
        .bind(id)
        .bind(if waits { None } else { Some(at.occurred_at) })
        .bind(at.sequence as i64)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
