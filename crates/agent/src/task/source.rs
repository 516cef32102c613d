//! The task's read path: the state a command is decided on, read from the task's projection row
//! under that row's lock (the kit's [`LockingSource`]) instead of replayed.
//!
//! Every write to a task then takes its row lock before it appends, as the one-statement path
//! ([`super::statement`]) does. With a replay, a write appended the event first and locked the
//! row only to project it; against a group statement holding the row and inserting the same
//! event sequence, the two waited on each other until Postgres broke the deadlock a second later
//! (two replicas racing for one task). The row also holds everything the rules read, so a
//! command costs one statement here instead of two reads of the event store.

use cim_aggregate::source::SourceFuture;
use cim_aggregate::{Current, LockingSource};
use cim_core::{AggregateId, EventHash, TenantId};
use cim_eventstore::{HeadToken, StoreError};
use sqlx::{PgConnection, Row};

use super::{Task, TaskCommand, TaskState};
use crate::names::Names;

/// Reads a task from `tasks` under its row lock, with the head from its last event.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskFacts;

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("tasks.{what}: {e}"))
}

impl LockingSource<Task> for TaskFacts {
    fn read<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        tenant: TenantId,
        id: AggregateId,
        _: &'a TaskCommand,
    ) -> SourceFuture<'a, Task> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT t.state, t.required_capabilities, t.priority, t.deadline, t.holder, t.lease_until, t.attempts, \
                 t.version, e.hash FROM tasks t JOIN events e ON e.aggregate_id = t.task_id AND e.sequence = t.version \
                 WHERE t.tenant_id = $1 AND t.task_id = $2 FOR UPDATE OF t",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let state: String = row.try_get("state")?;
            let required: Vec<String> = row.try_get("required_capabilities")?;
            let holder: Option<uuid::Uuid> = row.try_get("holder")?;
            let hash: Vec<u8> = row.try_get("hash")?;
            let task = Task {
                state: TaskState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
                required_capabilities: required
                    .iter()
                    .map(|n| n.parse())
                    .collect::<Result<Names, _>>()
                    .map_err(|e| corrupt("required_capabilities", e))?,
                priority: row.try_get::<i32, _>("priority")?.max(0) as u32,
                deadline: row.try_get("deadline")?,
                holder: holder.map(AggregateId::from_uuid).transpose().map_err(|e| corrupt("holder", e))?,
                lease_until: row.try_get("lease_until")?,
                attempts: row.try_get::<i32, _>("attempts")?.max(0) as u32,
            };
            let version = row.try_get::<i64, _>("version")? as u64;
            let head =
                HeadToken::from_projection(version, EventHash::from_slice(&hash).map_err(|e| corrupt("hash", e))?);
            Ok(Some(Current { state: task, head }))
        })
    }
}
