//! `tasks`: one statement per event, on the task's own row. An agent's load is counted from the
//! tasks it holds when read (`tasks_held`), so no task write touches an agent's row.

use cim_aggregate::Projection;
use cim_core::EventEnvelope;
use sqlx::PgConnection;

use crate::events::{TaskAssigned, TaskEvent, TaskSubmitted};
use crate::names::strings;
use crate::task::{TaskResult, TaskState};

/// Projects task events into `tasks`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskProjection;

impl Projection for TaskProjection {
    type Event = TaskEvent;

    async fn apply(&self, tx: &mut PgConnection, at: &EventEnvelope, event: &TaskEvent) -> Result<(), sqlx::Error> {
        project(tx, at, event).await
    }

    /// A submission written with its assignment is one insert of the assigned row, not an insert
    /// and an update: the same row, one round trip less.
    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        at: &[EventEnvelope],
        events: &[TaskEvent],
    ) -> Result<(), sqlx::Error> {
        let mut rest = at.iter().zip(events).peekable();
        if let (Some((at, TaskEvent::Submitted(submitted))), Some((then, TaskEvent::Assigned(assigned)))) =
            (at.first().zip(events.first()), at.get(1).zip(events.get(1)))
        {
            insert(tx, at, submitted, Some((then, assigned))).await?;
            rest.nth(1);
        }
        for (at, event) in rest {
            project(tx, at, event).await?;
        }
        Ok(())
    }
}

/// A task's first row: queued, or assigned (`assigned`: the assignment written with it).
async fn insert(
    tx: &mut PgConnection,
    at: &EventEnvelope,
    e: &TaskSubmitted,
    assigned: Option<(&EventEnvelope, &TaskAssigned)>,
) -> Result<(), sqlx::Error> {
    let last = assigned.map_or(at, |(then, _)| then);
    let state = if assigned.is_some() { TaskState::Assigned } else { TaskState::Queued };
    sqlx::query(
        "INSERT INTO tasks (tenant_id, task_id, version, created_at, updated_at, state, required_capabilities, \
         payload, priority, deadline, correlation, holder, lease_until, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(at.tenant_id.as_uuid())
    .bind(at.aggregate_id.as_uuid())
    .bind(last.sequence as i64)
    .bind(at.occurred_at)
    .bind(last.occurred_at)
    .bind(state.as_str())
    .bind(strings(&e.required_capabilities))
    .bind(sqlx::types::Json(&e.payload))
    .bind(e.priority as i32)
    .bind(e.deadline)
    .bind(&e.correlation)
    .bind(assigned.map(|(_, a)| a.agent.as_uuid()))
    .bind(assigned.map(|(_, a)| a.lease_until))
    .bind(assigned.map_or(0, |(_, a)| a.attempt as i32))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn project(tx: &mut PgConnection, at: &EventEnvelope, event: &TaskEvent) -> Result<(), sqlx::Error> {
    use TaskEvent as E;
    // Every statement on the task's row also moves its version and `updated_at` (`$1`..`$4`
    // below are tenant, task, version, time): one statement per row, not one more per event.
    let task = |sql: &'static str| {
        sqlx::query(sql)
            .bind(at.tenant_id.as_uuid())
            .bind(at.aggregate_id.as_uuid())
            .bind(at.sequence as i64)
            .bind(at.occurred_at)
    };
    match event {
        E::Submitted(e) => insert(tx, at, e, None).await?,
        E::Assigned(e) => {
            task(
                "UPDATE tasks SET version = $3, updated_at = $4, state = 'assigned', holder = $5, lease_until = $6, \
                 attempts = $7 WHERE tenant_id = $1 AND task_id = $2",
            )
            .bind(e.agent.as_uuid())
            .bind(e.lease_until)
            .bind(e.attempt as i32)
            .execute(&mut *tx)
            .await?;
        }
        E::LeaseExtended(e) => {
            task("UPDATE tasks SET version = $3, updated_at = $4, lease_until = $5 WHERE tenant_id = $1 AND task_id = $2")
                .bind(e.lease_until)
                .execute(&mut *tx)
                .await?;
        }
        E::Completed(e) => {
            let (value, cid) = match &e.result {
                TaskResult::Value(v) => (Some(sqlx::types::Json(v)), None),
                TaskResult::Document(cid) => (None, Some(cid)),
            };
            task(
                "UPDATE tasks SET version = $3, updated_at = $4, state = $5, lease_until = NULL, result = $6, \
                 result_cid = $7 WHERE tenant_id = $1 AND task_id = $2",
            )
            .bind(TaskState::Completed.as_str())
            .bind(value)
            .bind(cid)
            .execute(&mut *tx)
            .await?;
        }
        E::Failed(e) => {
            task(
                "UPDATE tasks SET version = $3, updated_at = $4, state = $5, lease_until = NULL, error = $6, \
                 retryable = $7 WHERE tenant_id = $1 AND task_id = $2",
            )
            .bind(TaskState::Failed.as_str())
            .bind(&e.error)
            .bind(e.retryable)
            .execute(&mut *tx)
            .await?;
        }
        E::Reassigned(e) => {
            task(
                "UPDATE tasks SET version = $3, updated_at = $4, \
                 state = CASE WHEN $5::uuid IS NULL THEN 'queued' ELSE 'assigned' END, \
                 holder = $5, lease_until = $6, attempts = attempts + CASE WHEN $5::uuid IS NULL THEN 0 ELSE 1 END \
                 WHERE tenant_id = $1 AND task_id = $2",
            )
            .bind(e.to.map(|a| a.as_uuid()))
            .bind(e.lease_until)
            .execute(&mut *tx)
            .await?;
        }
        E::Cancelled(_) => finish(tx, at, TaskState::Cancelled).await?,
        E::TimedOut(_) => finish(tx, at, TaskState::TimedOut).await?,
    }
    Ok(())
}

/// A final state without a result: the lease ends. The holder column keeps the last agent that
/// held the task.
async fn finish(tx: &mut PgConnection, at: &EventEnvelope, state: TaskState) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tasks SET version = $3, updated_at = $4, state = $5, lease_until = NULL \
         WHERE tenant_id = $1 AND task_id = $2",
    )
    .bind(at.tenant_id.as_uuid())
    .bind(at.aggregate_id.as_uuid())
    .bind(at.sequence as i64)
    .bind(at.occurred_at)
    .bind(state.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
