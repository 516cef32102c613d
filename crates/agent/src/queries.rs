//! Reads over the projections, always within the caller's tenant: another tenant's agent or task
//! is simply not found.

use cim_core::{AggregateId, TenantId};
use cim_proto::agent as pb;
use cim_proto::common::PageResponse;
use cim_proto::json::json_to_struct;
use cim_runtime::edge::{KeysetPage, timestamp};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::agent::AgentState;
use crate::error::ServiceError;
use crate::routing::Candidate;

/// List pages: the size when a request names none, and the largest it may ask for.
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

const AGENT_COLUMNS: &str = "agent_id, name, agent_type, owner, state, capabilities, permissions, tools, \
     model_provider, model_name, model_parameters, system_prompt, max_concurrent_tasks, version, created_at, updated_at, \
     (SELECT count(*) FROM tasks t WHERE t.tenant_id = agents.tenant_id AND t.holder = agents.agent_id \
      AND t.state = 'assigned') AS running_tasks";

fn agent_from_row(row: &PgRow) -> Result<pb::Agent, ServiceError> {
    let model = match row.try_get::<Option<String>, _>("model_provider")? {
        None => None,
        Some(provider) => {
            let parameters: Option<Json<Map<String, Value>>> = row.try_get("model_parameters")?;
            Some(pb::ModelConfiguration {
                provider,
                model: row.try_get::<Option<String>, _>("model_name")?.unwrap_or_default(),
                parameters: parameters.map(|p| json_to_struct(&p.0)),
            })
        }
    };
    Ok(pb::Agent {
        agent_id: row.try_get::<uuid::Uuid, _>("agent_id")?.to_string(),
        name: row.try_get("name")?,
        agent_type: row.try_get("agent_type")?,
        owner: row.try_get("owner")?,
        state: row.try_get("state")?,
        capabilities: row.try_get("capabilities")?,
        permissions: row.try_get("permissions")?,
        tools: row.try_get("tools")?,
        model,
        system_prompt: row.try_get("system_prompt")?,
        max_concurrent_tasks: row.try_get::<i32, _>("max_concurrent_tasks")? as u32,
        running_tasks: row.try_get::<i64, _>("running_tasks")?.max(0) as u32,
        version: row.try_get::<i64, _>("version")? as u64,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
    })
}

pub async fn get_agent(pool: &PgPool, tenant: TenantId, id: AggregateId) -> Result<pb::Agent, ServiceError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 AND agent_id = $2"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.as_ref()
        .map(agent_from_row)
        .transpose()?
        .ok_or_else(|| ServiceError::not_found(format!("agent {id} not found")))
}

/// Agents in one state (or any), holding every one of `capabilities`.
pub async fn list_agents(
    pool: &PgPool,
    tenant: TenantId,
    state: Option<AgentState>,
    capabilities: &[String],
    page: KeysetPage,
) -> Result<(Vec<pb::Agent>, PageResponse), ServiceError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE tenant_id = $1 \
         AND ($2::text IS NULL OR state = $2) AND capabilities @> $3 \
         AND ($4::uuid IS NULL OR agent_id < $4) ORDER BY agent_id DESC LIMIT $5"
    )))
    .bind(tenant.as_uuid())
    .bind(state.map(AgentState::as_str))
    .bind(capabilities)
    .bind(page.after)
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let agents = rows.iter().map(agent_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.split(agents, |a| a.agent_id.clone()))
}

const TASK_COLUMNS: &str = "task_id, state, required_capabilities, payload, priority, deadline, correlation, holder, \
     lease_until, attempts, result, result_cid, error, retryable, version, created_at, updated_at";

fn task_from_row(row: &PgRow) -> Result<pb::Task, ServiceError> {
    use pb::task::Result as Outcome;
    let payload: Json<Map<String, Value>> = row.try_get("payload")?;
    let value: Option<Json<Map<String, Value>>> = row.try_get("result")?;
    let cid: Option<String> = row.try_get("result_cid")?;
    let result = match (value, cid) {
        (Some(v), _) => Some(Outcome::ResultValue(json_to_struct(&v.0))),
        (None, Some(cid)) => Some(Outcome::ResultCid(cid)),
        (None, None) => None,
    };
    let instant = |column: &str| -> Result<_, sqlx::Error> {
        Ok(row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(column)?.map(timestamp))
    };
    Ok(pb::Task {
        task_id: row.try_get::<uuid::Uuid, _>("task_id")?.to_string(),
        state: row.try_get("state")?,
        required_capabilities: row.try_get("required_capabilities")?,
        payload: Some(json_to_struct(&payload.0)),
        priority: row.try_get::<i32, _>("priority")? as u32,
        deadline: instant("deadline")?,
        correlation: row.try_get("correlation")?,
        holder: row.try_get::<Option<uuid::Uuid>, _>("holder")?.map(|h| h.to_string()).unwrap_or_default(),
        lease_until: instant("lease_until")?,
        attempts: row.try_get::<i32, _>("attempts")? as u32,
        result,
        error: row.try_get::<Option<String>, _>("error")?.unwrap_or_default(),
        retryable: row.try_get::<Option<bool>, _>("retryable")?.unwrap_or_default(),
        version: row.try_get::<i64, _>("version")? as u64,
        created_at: instant("created_at")?,
        updated_at: instant("updated_at")?,
    })
}

pub async fn get_task(pool: &PgPool, tenant: TenantId, id: AggregateId) -> Result<pb::Task, ServiceError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND task_id = $2"
    )))
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(task_from_row).transpose()?.ok_or_else(|| ServiceError::not_found(format!("task {id} not found")))
}

pub async fn list_tasks(
    pool: &PgPool,
    tenant: TenantId,
    state: Option<&str>,
    page: KeysetPage,
) -> Result<(Vec<pb::Task>, PageResponse), ServiceError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2) \
         AND ($3::uuid IS NULL OR task_id < $3) ORDER BY task_id DESC LIMIT $4"
    )))
    .bind(tenant.as_uuid())
    .bind(state)
    .bind(page.after)
    .bind(page.fetch())
    .fetch_all(pool)
    .await?;
    let tasks = rows.iter().map(task_from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(page.split(tasks, |t| t.task_id.clone()))
}

/// The required capabilities no agent of the tenant declares (decommissioned agents aside).
pub async fn unknown_capabilities(
    pool: &PgPool,
    tenant: TenantId,
    required: &[String],
) -> Result<Vec<String>, ServiceError> {
    if required.is_empty() {
        return Ok(Vec::new());
    }
    let unknown = sqlx::query_scalar(
        "SELECT c FROM unnest($2::text[]) WITH ORDINALITY AS r(c, i) WHERE NOT EXISTS \
         (SELECT 1 FROM agents a WHERE a.capabilities @> ARRAY[r.c] AND a.tenant_id = $1 \
          AND a.state <> 'decommissioned') ORDER BY i",
    )
    .bind(tenant.as_uuid())
    .bind(required)
    .fetch_all(pool)
    .await?;
    Ok(unknown)
}

/// Active agents whose capabilities cover `required`: what routing chooses among.
pub async fn covering_agents(
    pool: &PgPool,
    tenant: TenantId,
    required: &[String],
) -> Result<Vec<Candidate>, ServiceError> {
    let rows = sqlx::query(
        "SELECT agent_id, capabilities, max_concurrent_tasks, \
         (SELECT count(*) FROM tasks t WHERE t.tenant_id = agents.tenant_id AND t.holder = agents.agent_id \
          AND t.state = 'assigned') AS running_tasks FROM agents \
         WHERE tenant_id = $1 AND state = 'active' AND capabilities @> $2",
    )
    .bind(tenant.as_uuid())
    .bind(required)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let corrupt = |e: &dyn std::fmt::Display| ServiceError::corrupt(format!("agents: {e}"));
            let id: uuid::Uuid = row.try_get("agent_id")?;
            let capabilities: Vec<String> = row.try_get("capabilities")?;
            Ok(Candidate {
                agent: AggregateId::from_uuid(id).map_err(|e| corrupt(&e))?,
                state: AgentState::Active,
                capabilities: capabilities
                    .iter()
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| corrupt(&e))?,
                running: row.try_get::<i64, _>("running_tasks")?.max(0) as u32,
                limit: row.try_get::<i32, _>("max_concurrent_tasks")?.max(1) as u32,
            })
        })
        .collect()
}
