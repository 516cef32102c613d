//! The read tables, written in each command's transaction by the kit's executor: `agents` by
//! the agent events, `tasks` (and the holders' `agents.running_tasks`) by the task events.

use cim_aggregate::Projection;
use cim_core::EventEnvelope;
use sqlx::PgConnection;

use crate::agent::AgentState;
use crate::events::AgentEvent;
use crate::names::{Names, strings};

mod task;

pub use task::TaskProjection;

/// Projects agent events into `agents`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentProjection;

impl Projection for AgentProjection {
    type Event = AgentEvent;

    async fn apply(&self, tx: &mut PgConnection, at: &EventEnvelope, event: &AgentEvent) -> Result<(), sqlx::Error> {
        project(tx, at, event).await
    }
}

/// Which name set of an agent a grant or revocation changes.
#[derive(Clone, Copy)]
enum NameColumn {
    Permissions,
    Tools,
}

impl NameColumn {
    fn as_str(self) -> &'static str {
        match self {
            NameColumn::Permissions => "permissions",
            NameColumn::Tools => "tools",
        }
    }
}

async fn project(tx: &mut PgConnection, at: &EventEnvelope, event: &AgentEvent) -> Result<(), sqlx::Error> {
    use AgentEvent as E;
    let tenant = at.tenant_id.as_uuid();
    let id = at.aggregate_id.as_uuid();
    match event {
        E::Deployed(e) => {
            sqlx::query(
                "INSERT INTO agents (tenant_id, agent_id, name, agent_type, owner, state, max_concurrent_tasks, \
                 version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'deployed', $6, 0, $7, $7)",
            )
            .bind(tenant)
            .bind(id)
            .bind(&e.name)
            .bind(e.agent_type.as_str())
            .bind(&e.owner)
            .bind(e.max_concurrent_tasks as i32)
            .bind(at.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        E::ModelConfigurationAssigned(e) => {
            sqlx::query(
                "UPDATE agents SET model_provider = $3, model_name = $4, model_parameters = $5 \
                 WHERE tenant_id = $1 AND agent_id = $2",
            )
            .bind(tenant)
            .bind(id)
            .bind(e.model.provider.as_str())
            .bind(&e.model.model)
            .bind(sqlx::types::Json(&e.model.parameters))
            .execute(&mut *tx)
            .await?;
        }
        E::SystemPromptConfigured(e) => {
            sqlx::query("UPDATE agents SET system_prompt = $3 WHERE tenant_id = $1 AND agent_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(&e.prompt)
                .execute(&mut *tx)
                .await?;
        }
        E::CapabilitiesUpdated(e) => {
            sqlx::query("UPDATE agents SET capabilities = $3 WHERE tenant_id = $1 AND agent_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(strings(&e.capabilities))
                .execute(&mut *tx)
                .await?;
        }
        E::PermissionsGranted(e) => change_names(tx, at, NameColumn::Permissions, &e.permissions, true).await?,
        E::PermissionsRevoked(e) => change_names(tx, at, NameColumn::Permissions, &e.permissions, false).await?,
        E::ToolsEnabled(e) => change_names(tx, at, NameColumn::Tools, &e.tools, true).await?,
        E::ToolsDisabled(e) => change_names(tx, at, NameColumn::Tools, &e.tools, false).await?,
        E::ConcurrencyLimitSet(e) => {
            sqlx::query("UPDATE agents SET max_concurrent_tasks = $3 WHERE tenant_id = $1 AND agent_id = $2")
                .bind(tenant)
                .bind(id)
                .bind(e.max_concurrent_tasks as i32)
                .execute(&mut *tx)
                .await?;
        }
        E::Activated(_) => set_state(tx, at, AgentState::Active).await?,
        E::Suspended(_) => set_state(tx, at, AgentState::Suspended).await?,
        E::WentOffline(_) => set_state(tx, at, AgentState::Offline).await?,
        E::Decommissioned(_) => set_state(tx, at, AgentState::Decommissioned).await?,
        // Conversations have no read table yet; they move the version like every event.
        E::MessageSent(_) | E::ResponseCompleted(_) | E::ResponseFailed(_) => {}
    }
    sqlx::query("UPDATE agents SET version = $3, updated_at = $4 WHERE tenant_id = $1 AND agent_id = $2")
        .bind(tenant)
        .bind(id)
        .bind(at.sequence as i64)
        .bind(at.occurred_at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Adds names to, or removes them from, a set column, keeping it sorted as the events sort it.
async fn change_names(
    tx: &mut PgConnection,
    at: &EventEnvelope,
    column: NameColumn,
    names: &Names,
    add: bool,
) -> Result<(), sqlx::Error> {
    let column = column.as_str();
    let set = if add {
        format!("ARRAY(SELECT DISTINCT n COLLATE \"C\" FROM unnest({column} || $3::text[]) AS n ORDER BY 1)")
    } else {
        format!("ARRAY(SELECT n COLLATE \"C\" FROM unnest({column}) AS n WHERE n <> ALL($3::text[]) ORDER BY 1)")
    };
    let sql = format!("UPDATE agents SET {column} = {set} WHERE tenant_id = $1 AND agent_id = $2");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(at.tenant_id.as_uuid())
        .bind(at.aggregate_id.as_uuid())
        .bind(strings(names))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn set_state(tx: &mut PgConnection, at: &EventEnvelope, state: AgentState) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agents SET state = $3 WHERE tenant_id = $1 AND agent_id = $2")
        .bind(at.tenant_id.as_uuid())
        .bind(at.aggregate_id.as_uuid())
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
