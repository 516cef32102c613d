//! `tasks`, and each holder's `agents.running_tasks`: every task event that gives a task to an
//! agent or takes it away names that agent, so the load is kept without reading histories.

use cim_aggregate::Projection;
use cim_core::{AggregateId, EventEnvelope};
use sqlx::PgConnection;

use crate::events::TaskEvent;
use crate::names::strings;
use crate::task::{TaskResult, TaskState};

/// Projects task events into `tasks` and the holders' load.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskProjection;

impl Projection for TaskProjection {
    type Event = TaskEvent;

    async fn apply(&self, tx: &mut PgConnection, at: &EventEnvelope, event: &TaskEvent) -> Result<(), sqlx::Error> {
        project(tx, at, event).await
    }
}

async fn project(tx: &mut PgConnection, at: &EventEnvelope, event: &TaskEvent) -> Result<(), sqlx::Error> {
    use TaskEvent as E;
    let tenant = at.tenant_id.as_uuid();
    let id = at.aggregate_id.as_uuid();
    match event {
        E::Submitted(e) => {
            sqlx::query(
                "INSERT INTO tasks (tenant_id, task_id, state, required_capabilities, payload, priority, deadline, \
                 correlation, version, created_at, updated_at) \
                 VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, 0, $8, $8)",
            )
            .bind(tenant)
            .bind(id)
            .bind(strings(&e.required_capabilities))
            .bind(sqlx::types::Json(&e.payload))
            .bind(e.priority as i32)
            .bind(e.deadline)
            .bind(&e.correlation)
            .bind(at.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        E::Assigned(e) => {
            sqlx::query(
                "UPDATE tasks SET state = 'assigned', holder = $3, lease_until = $4, attempts = $5 \
                 WHERE tenant_id = $1 AND task_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(e.agent.as_uuid())
            .bind(e.lease_until)
            .bind(e.attempt as i32)
            .execute(&mut *tx)
            .await?;
            load(tx, at, e.agent, 1).await?;
        }
        E::LeaseExtended(e) => {
            sqlx::query("UPDATE tasks SET lease_until = $3 WHERE tenant_id = $1 AND task_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(e.lease_until)
                .execute(&mut *tx)
                .await?;
        }
        E::Completed(e) => {
            let (value, cid) = match &e.result {
                TaskResult::Value(v) => (Some(sqlx::types::Json(v)), None),
                TaskResult::Document(cid) => (None, Some(cid)),
            };
            sqlx::query("UPDATE tasks SET result = $3, result_cid = $4 WHERE tenant_id = $1 AND task_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(value)
                .bind(cid)
                .execute(&mut *tx)
                .await?;
            finish(tx, at, TaskState::Completed, Some(e.agent)).await?;
        }
        E::Failed(e) => {
            sqlx::query("UPDATE tasks SET error = $3, retryable = $4 WHERE tenant_id = $1 AND task_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(&e.error)
                .bind(e.retryable)
                .execute(&mut *tx)
                .await?;
            finish(tx, at, TaskState::Failed, Some(e.agent)).await?;
        }
        E::Reassigned(e) => {
            sqlx::query(
                "UPDATE tasks SET state = CASE WHEN $3::uuid IS NULL THEN 'queued' ELSE 'assigned' END, \
                 holder = $3, lease_until = $4, attempts = attempts + CASE WHEN $3::uuid IS NULL THEN 0 ELSE 1 END \
                 WHERE tenant_id = $1 AND task_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(e.to.map(|a| a.as_uuid()))
            .bind(e.lease_until)
            .execute(&mut *tx)
            .await?;
            // Two agents' rows: taken in id order, so two reassignments between the same pair
            // of agents, in opposite directions, cannot deadlock.
            let mut moves = vec![(e.from, -1)];
            moves.extend(e.to.map(|to| (to, 1)));
            moves.sort();
            for (agent, by) in moves {
                load(tx, at, agent, by).await?;
            }
        }
        E::Cancelled(e) => finish(tx, at, TaskState::Cancelled, e.holder).await?,
        E::TimedOut(e) => finish(tx, at, TaskState::TimedOut, e.holder).await?,
    }
    sqlx::query("UPDATE tasks SET version = $3, updated_at = $4 WHERE tenant_id = $1 AND task_id = $2")
        .bind(tenant)
        .bind(id)
        .bind(at.sequence as i64)
        .bind(at.occurred_at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A final state: the lease ends, and the holder the event names (if any) has a slot free. The
/// holder column keeps the last agent that held the task.
async fn finish(
    tx: &mut PgConnection,
    at: &EventEnvelope,
    state: TaskState,
    holder: Option<AggregateId>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET state = $3, lease_until = NULL WHERE tenant_id = $1 AND task_id = $2")
        .bind(at.tenant_id.as_uuid())
        .bind(at.aggregate_id.as_uuid())
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
    if let Some(holder) = holder {
        load(tx, at, holder, -1).await?;
    }
    Ok(())
}

/// Moves an agent's running count (an agent this tenant does not have is no row to move).
async fn load(tx: &mut PgConnection, at: &EventEnvelope, agent: AggregateId, by: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agents SET running_tasks = running_tasks + $3 WHERE tenant_id = $1 AND agent_id = $2")
        .bind(at.tenant_id.as_uuid())
        .bind(agent.as_uuid())
        .bind(by)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
