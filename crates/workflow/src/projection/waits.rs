//! `workflow_waits`, `workflow_withdrawals` and `workflow_triggers`: what the event consumer
//! (`listen`) matches events against, and the tasks and children the engine must cancel.

use cim_core::EventEnvelope;
use sqlx::PgConnection;

use crate::events::{Outreach, WorkflowEvent};
use crate::spec::Definition;

/// A definition's current triggers replace its earlier ones.
pub(super) async fn triggers(
    tx: &mut PgConnection,
    at: &EventEnvelope,
    definition: &Definition,
) -> Result<(), sqlx::Error> {
    let (tenant, id) = (at.tenant_id.as_uuid(), at.aggregate_id.as_uuid());
    sqlx::query("DELETE FROM workflow_triggers WHERE tenant_id = $1 AND definition_id = $2")
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    for (position, trigger) in definition.triggers.iter().enumerate() {
        sqlx::query(
            "INSERT INTO workflow_triggers (tenant_id, definition_id, position, domain, subject, condition) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(id)
        .bind(position as i32)
        .bind(trigger.domain().as_str())
        .bind(&trigger.subject)
        .bind(&trigger.condition)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// A step event's effect on the waits: a started attempt that waits adds its row; a completed
/// step removes it; a step that ended another way removes it and withdraws its task or child.
pub(super) async fn step(tx: &mut PgConnection, at: &EventEnvelope, event: &WorkflowEvent) -> Result<(), sqlx::Error> {
    use WorkflowEvent as E;
    match event {
        E::StepStarted(e) => {
            let Some(wait) = &e.wait else { return Ok(()) };
            let outreach = match &e.outreach {
                Some(Outreach::Task { .. }) => Some("task"),
                Some(Outreach::Child { .. }) => Some("child"),
                _ => None,
            };
            let domain = crate::spec::subject_domain(&wait.subject).map(|d| d.as_str()).unwrap_or_default();
            sqlx::query(
                "INSERT INTO workflow_waits (tenant_id, instance_id, step, attempt, domain, subject, aggregate_id, \
                 condition, outreach, correlation_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (tenant_id, instance_id, step) DO UPDATE SET attempt = $4, domain = $5, subject = $6, \
                 aggregate_id = $7, condition = $8, outreach = $9",
            )
            .bind(at.tenant_id.as_uuid())
            .bind(at.aggregate_id.as_uuid())
            .bind(&e.step)
            .bind(e.attempt as i32)
            .bind(domain)
            .bind(&wait.subject)
            .bind(wait.aggregate_id.map(|a| a.as_uuid()))
            .bind(&wait.condition)
            .bind(outreach)
            .bind(at.correlation_id.as_uuid())
            .execute(&mut *tx)
            .await?;
            Ok(())
        }
        E::StepCompleted(e) => {
            sqlx::query("DELETE FROM workflow_waits WHERE tenant_id = $1 AND instance_id = $2 AND step = $3")
                .bind(at.tenant_id.as_uuid())
                .bind(at.aggregate_id.as_uuid())
                .bind(&e.step)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }
        E::StepFailed(e) => end(tx, at, Some(&e.step)).await,
        E::StepSkipped(e) => end(tx, at, Some(&e.step)).await,
        _ => Ok(()),
    }
}

/// Waits that end without their event (one step's, or, with `None`, the whole instance's as it
/// ends): removed, and their tasks and children queued for cancelling.
pub(super) async fn end(tx: &mut PgConnection, at: &EventEnvelope, step: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH ended AS (DELETE FROM workflow_waits WHERE tenant_id = $1 AND instance_id = $2 \
             AND ($3::text IS NULL OR step = $3) RETURNING outreach, aggregate_id, correlation_id) \
         INSERT INTO workflow_withdrawals (tenant_id, target_id, outreach, instance_id, correlation_id) \
         SELECT $1, aggregate_id, outreach, $2, correlation_id FROM ended \
         WHERE outreach IS NOT NULL AND aggregate_id IS NOT NULL ON CONFLICT DO NOTHING",
    )
    .bind(at.tenant_id.as_uuid())
    .bind(at.aggregate_id.as_uuid())
    .bind(step)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
