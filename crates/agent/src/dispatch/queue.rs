//! What the dispatcher and the sweeper read from the projections: the connected agents as the
//! registry has them now, a tenant's queue, and what is due (lapsed leases, passed deadlines).

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, TenantId};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use crate::agent::AgentState;
use crate::names::Names;

/// The sweeper acts on at most this many tasks of each kind per sweep; it sweeps again at once
/// when it found that many.
pub(super) const SWEEP_BATCH: i64 = 500;

fn corrupt(what: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("{what}: {e}").into())
}

fn id(row: &PgRow, column: &str) -> Result<AggregateId, sqlx::Error> {
    AggregateId::from_uuid(row.try_get(column)?).map_err(|e| corrupt(column, e))
}

fn names(row: &PgRow, column: &str) -> Result<Names, sqlx::Error> {
    let raw: Vec<String> = row.try_get(column)?;
    raw.iter().map(|n| n.parse()).collect::<Result<_, _>>().map_err(|e| corrupt(column, e))
}

/// A connected agent as the registry has it now.
pub(super) struct AgentRow {
    pub agent: AggregateId,
    pub state: AgentState,
    pub capabilities: Names,
    pub limit: u32,
}

pub(super) async fn agents(pool: &PgPool, tenant: TenantId, ids: &[AggregateId]) -> Result<Vec<AgentRow>, sqlx::Error> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(AggregateId::as_uuid).collect();
    let rows = sqlx::query(
        "SELECT agent_id, state, capabilities, max_concurrent_tasks FROM agents \
         WHERE tenant_id = $1 AND agent_id = ANY($2)",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get("state")?;
            Ok(AgentRow {
                agent: id(row, "agent_id")?,
                state: AgentState::parse(&state).ok_or_else(|| corrupt("state", state))?,
                capabilities: names(row, "capabilities")?,
                limit: row.try_get::<i32, _>("max_concurrent_tasks")?.max(1) as u32,
            })
        })
        .collect()
}

/// A queued task, with what its worker is told.
pub(super) struct QueuedTask {
    pub id: AggregateId,
    pub required_capabilities: Names,
    pub payload: Map<String, Value>,
    pub priority: u32,
    pub deadline: Option<DateTime<Utc>>,
    pub correlation: String,
    /// Since when it waits: its submission, or the requeue that put it back.
    pub queued_since: DateTime<Utc>,
    /// How often it was given to an agent before (the assignment numbers the next attempt).
    pub attempts: u32,
}

/// A connected agent as its stream here has it: the tasks it holds through it, and the
/// worker's own limit (0: none).
pub(super) struct Connected {
    pub agent: AggregateId,
    pub held: u32,
    pub slots: u32,
}

/// One read for a tenant's turn (a round trip per pass, not one for the agents and another for
/// the queue): the `connected` agents as the registry has them now, and up to `turn` of the
/// tenant's queued tasks that an active one of them with a free slot covers (no more than
/// those slots), leaving out `skip` (being assigned here, not yet committed). Highest priority
/// first, then oldest; the queue index gives this order, and the covering check skips tasks
/// nobody here can take instead of letting them block the ones behind. An agent's slots are
/// its limit, or its worker's if lower, as [`super::session::Session::capacity`] counts them.
pub(super) async fn turn(
    pool: &PgPool,
    tenant: TenantId,
    connected: &[Connected],
    skip: &[AggregateId],
    turn: usize,
    now: DateTime<Utc>,
) -> Result<(Vec<AgentRow>, Vec<QueuedTask>), sqlx::Error> {
    let agents: Vec<uuid::Uuid> = connected.iter().map(|c| c.agent.as_uuid()).collect();
    let held: Vec<i32> = connected.iter().map(|c| c.held as i32).collect();
    let slots: Vec<i32> = connected.iter().map(|c| c.slots as i32).collect();
    let skip: Vec<uuid::Uuid> = skip.iter().map(AggregateId::as_uuid).collect();
    let rows = sqlx::query(
        "WITH s AS (SELECT * FROM unnest($2::uuid[], $3::int[], $4::int[]) AS s(agent_id, held, slots)), \
         ag AS ( \
             SELECT a.agent_id, a.state, a.capabilities, a.max_concurrent_tasks, s.held, \
                    CASE WHEN s.slots = 0 THEN GREATEST(a.max_concurrent_tasks, 1) \
                         ELSE LEAST(GREATEST(a.max_concurrent_tasks, 1), s.slots) END AS cap \
             FROM agents a JOIN s ON a.agent_id = s.agent_id WHERE a.tenant_id = $1 \
         ), free AS (SELECT capabilities, cap - held AS n FROM ag WHERE state = 'active' AND held < cap), \
         q AS ( \
             SELECT t.task_id, t.required_capabilities, t.payload, t.priority, t.deadline, t.correlation, \
                    t.updated_at, t.attempts \
             FROM tasks t WHERE t.tenant_id = $1 AND t.state = 'queued' AND (t.deadline IS NULL OR t.deadline > $7) \
               AND t.task_id <> ALL($5) AND EXISTS (SELECT 1 FROM free f WHERE f.capabilities @> t.required_capabilities) \
             ORDER BY t.priority DESC, t.task_id \
             LIMIT LEAST($6, (SELECT COALESCE(sum(n), 0) FROM free)) \
         ) \
         SELECT false AS is_task, agent_id AS id, state, capabilities AS names, max_concurrent_tasks, \
                NULL::jsonb AS payload, NULL::int AS priority, NULL::timestamptz AS deadline, NULL::text AS correlation, \
                NULL::timestamptz AS updated_at, NULL::int AS attempts FROM ag \
         UNION ALL \
         SELECT true, task_id, NULL, required_capabilities, NULL, payload, priority, deadline, correlation, updated_at, \
                attempts FROM q \
         ORDER BY is_task, priority DESC, id",
    )
    .bind(tenant.as_uuid())
    .bind(&agents)
    .bind(&held)
    .bind(&slots)
    .bind(&skip)
    .bind(turn as i64)
    .bind(now)
    .fetch_all(pool)
    .await?;
    let (mut agents, mut tasks) = (Vec::new(), Vec::new());
    for row in &rows {
        if !row.try_get::<bool, _>("is_task")? {
            let state: String = row.try_get("state")?;
            agents.push(AgentRow {
                agent: id(row, "id")?,
                state: AgentState::parse(&state).ok_or_else(|| corrupt("state", state))?,
                capabilities: names(row, "names")?,
                limit: row.try_get::<i32, _>("max_concurrent_tasks")?.max(1) as u32,
            });
            continue;
        }
        let payload: Json<Map<String, Value>> = row.try_get("payload")?;
        tasks.push(QueuedTask {
            id: id(row, "id")?,
            required_capabilities: names(row, "names")?,
            payload: payload.0,
            priority: row.try_get::<i32, _>("priority")?.max(0) as u32,
            deadline: row.try_get("deadline")?,
            correlation: row.try_get("correlation")?,
            queued_since: row.try_get("updated_at")?,
            attempts: row.try_get::<i32, _>("attempts")?.max(0) as u32,
        });
    }
    Ok((agents, tasks))
}

/// A held task whose holder's lease lapsed.
pub(super) struct Lapsed {
    pub tenant: TenantId,
    pub task: AggregateId,
    pub holder: AggregateId,
    pub lease_until: DateTime<Utc>,
}

pub(super) async fn lapsed_leases(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<Lapsed>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT tenant_id, task_id, holder, lease_until FROM tasks \
         WHERE state = 'assigned' AND lease_until <= $1 ORDER BY lease_until LIMIT $2",
    )
    .bind(now)
    .bind(SWEEP_BATCH)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Lapsed {
                tenant: TenantId::from_uuid(row.try_get("tenant_id")?).map_err(|e| corrupt("tenant_id", e))?,
                task: id(row, "task_id")?,
                holder: id(row, "holder")?,
                lease_until: row.try_get("lease_until")?,
            })
        })
        .collect()
}

/// Unfinished tasks whose deadline passed.
pub(super) async fn past_deadline(
    pool: &PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<(TenantId, AggregateId)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT tenant_id, task_id FROM tasks \
         WHERE state IN ('queued', 'assigned') AND deadline <= $1 ORDER BY deadline LIMIT $2",
    )
    .bind(now)
    .bind(SWEEP_BATCH)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let tenant = TenantId::from_uuid(row.try_get("tenant_id")?).map_err(|e| corrupt("tenant_id", e))?;
            Ok((tenant, id(row, "task_id")?))
        })
        .collect()
}

/// The next instant a lease lapses or a deadline passes, if any is ahead.
pub(super) async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT LEAST((SELECT min(lease_until) FROM tasks WHERE state = 'assigned'), \
                      (SELECT min(deadline) FROM tasks WHERE state IN ('queued', 'assigned')))",
    )
    .fetch_one(pool)
    .await
}

/// A task as a reconnecting worker claims it: who holds it and until when.
pub(super) async fn holding(
    pool: &PgPool,
    tenant: TenantId,
    task: AggregateId,
) -> Result<Option<(Option<AggregateId>, Option<DateTime<Utc>>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT holder, lease_until FROM tasks WHERE tenant_id = $1 AND task_id = $2 AND state = 'assigned'",
    )
    .bind(tenant.as_uuid())
    .bind(task.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        let holder: Option<uuid::Uuid> = row.try_get("holder")?;
        let holder = holder.map(AggregateId::from_uuid).transpose().map_err(|e| corrupt("holder", e))?;
        Ok((holder, row.try_get("lease_until")?))
    })
    .transpose()
}

/// The agent's state and limit, for a worker announcing itself (None: not this tenant's).
pub(super) async fn agent(
    pool: &PgPool,
    tenant: TenantId,
    agent: AggregateId,
) -> Result<Option<AgentRow>, sqlx::Error> {
    Ok(agents(pool, tenant, &[agent]).await?.into_iter().next())
}

/// Unfinished tasks by state (`queued`, `assigned`), every tenant: the backlog gauges.
pub(super) async fn tasks_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.state, (SELECT count(*) FROM tasks t WHERE t.state = s.state) \
         FROM unnest(ARRAY['queued', 'assigned']) AS s(state)",
    )
    .fetch_all(pool)
    .await
}

/// Agents by state, every tenant (a state nobody is in counts 0, so its series drops to 0).
pub(super) async fn agents_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.state, (SELECT count(*) FROM agents a WHERE a.state = s.state) FROM unnest($1::text[]) AS s(state)",
    )
    .bind(AgentState::NAMES)
    .fetch_all(pool)
    .await
}
