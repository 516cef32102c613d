//! The task's one-round-trip write: an assignment or a completion decided on assumed facts and
//! written by one guarded statement, grouped with other tasks' (the kit's
//! [`cim_aggregate::OneStatement`] and group commit, as graph does). The dispatcher assigns
//! and its workers complete many tasks at once; each used to cost a replay and a transaction of
//! its own (about eight round trips and a commit), now a share of one statement.
//!
//! The assumptions are stated as a task ([`assumed`]) and decided by the aggregate's own rules,
//! so this path cannot decide differently from the read one; the guard then checks them on the
//! projection row under its lock: the head (the row's version, written with every event), the
//! state, the holder and its lease, the deadline, the attempts. If any differs nothing of the
//! command is written and the executor decides for real on the row read under its lock. The
//! guard locks task rows in id order and nothing else (an agent's load is counted from the
//! tasks, not kept on its row), so groups and single commands never deadlock.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use cim_aggregate::{Aggregate, GroupStatement, OneStatement};

use super::{Task, TaskCommand, TaskResult, TaskState};
use crate::events::TaskEvent;

/// The facts a command needs, as a task: what the guard checks.
fn assumed(command: &TaskCommand) -> Option<Task> {
    match command {
        // Only with the attempts the dispatcher saw in the queue (the event numbers the attempt).
        TaskCommand::Assign { attempts: Some(attempts), .. } => {
            Some(Task { state: TaskState::Queued, attempts: *attempts, ..Task::default() })
        }
        TaskCommand::Complete { agent, .. } => Some(Task {
            state: TaskState::Assigned,
            holder: Some(*agent),
            // Running: the guard checks the real lease against the command's `now`.
            lease_until: Some(DateTime::<Utc>::MAX_UTC),
            ..Task::default()
        }),
        _ => None,
    }
}

/// One command's guard and projection row. `want_*` is what the guard checks, the rest what
/// the projection writes (as [`crate::projection::TaskProjection`] would).
#[derive(Debug)]
pub struct TaskRow {
    want_state: &'static str,
    want_attempts: Option<i32>,
    now: DateTime<Utc>,
    /// The new holder (assigned) or the holder the guard requires (completed).
    agent: uuid::Uuid,
    state: &'static str,
    lease_until: Option<DateTime<Utc>>,
    attempts: Option<i32>,
    result: Option<String>,
    result_cid: Option<String>,
}

fn row(command: &TaskCommand, assumed: &Task, event: &TaskEvent) -> Option<TaskRow> {
    let want_state = assumed.state.as_str();
    match (command, event) {
        (TaskCommand::Assign { now, .. }, TaskEvent::Assigned(e)) => Some(TaskRow {
            want_state,
            want_attempts: Some(assumed.attempts as i32),
            now: *now,
            agent: e.agent.as_uuid(),
            state: TaskState::Assigned.as_str(),
            lease_until: Some(e.lease_until),
            attempts: Some(e.attempt as i32),
            result: None,
            result_cid: None,
        }),
        (TaskCommand::Complete { now, .. }, TaskEvent::Completed(e)) => {
            let (result, result_cid) = match &e.result {
                TaskResult::Value(v) => (Some(serde_json::to_string(v).ok()?), None),
                TaskResult::Document(cid) => (None, Some(cid.clone())),
            };
            Some(TaskRow {
                want_state,
                want_attempts: None,
                now: *now,
                agent: e.agent.as_uuid(),
                state: TaskState::Completed.as_str(),
                lease_until: None,
                attempts: None,
                result,
                result_cid,
            })
        }
        _ => None,
    }
}

/// The guard and the projection writes (see [`cim_eventstore::guarded_append_many_sql`]);
/// caller parameters `$23..$32`, one element per command.
static SQL: LazyLock<String> = LazyLock::new(|| {
    cim_eventstore::guarded_append_many_sql(
        "a AS ( \
            SELECT * FROM unnest($23::uuid[], $24::text[], $25::int[], $26::timestamptz[], $27::uuid[], $28::text[], \
                                 $29::timestamptz[], $30::int[], $31::text[], $32::text[]) \
            AS a(task_id, want_state, want_attempts, now, agent, state, lease_until, attempts, result, result_cid) \
        ), guard AS ( \
            SELECT t.task_id AS aggregate_id FROM tasks t \
            JOIN cmd c ON t.tenant_id = c.tenant_id AND t.task_id = c.aggregate_id \
            JOIN a ON a.task_id = c.aggregate_id \
            WHERE t.version = c.version AND t.state = a.want_state \
              AND (a.want_attempts IS NULL OR t.attempts = a.want_attempts) \
              AND (t.deadline IS NULL OR t.deadline > a.now) \
              AND (a.want_state <> 'assigned' OR (t.holder = a.agent AND t.lease_until > a.now)) \
            ORDER BY t.task_id FOR UPDATE OF t \
        ), written AS ( \
            SELECT c.tenant_id, c.new_version, c.occurred_at, a.* FROM cmd c JOIN a ON a.task_id = c.aggregate_id \
            WHERE c.aggregate_id = ANY (ARRAY(SELECT aggregate_id FROM guard)) \
        )",
        ", up AS ( \
            UPDATE tasks t SET state = w.state, holder = w.agent, lease_until = w.lease_until, \
                attempts = COALESCE(w.attempts, t.attempts), \
                result = CASE WHEN w.state = 'completed' THEN w.result::jsonb ELSE t.result END, \
                result_cid = CASE WHEN w.state = 'completed' THEN w.result_cid ELSE t.result_cid END, \
                version = w.new_version, updated_at = w.occurred_at \
            FROM written w WHERE t.tenant_id = w.tenant_id AND t.task_id = w.task_id \
        )",
    )
});

/// The statement's caller parameters for a group, column by column.
#[derive(Debug, Default)]
pub struct TaskParams {
    task: Vec<uuid::Uuid>,
    want_state: Vec<&'static str>,
    want_attempts: Vec<Option<i32>>,
    now: Vec<DateTime<Utc>>,
    agent: Vec<uuid::Uuid>,
    state: Vec<&'static str>,
    lease_until: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<Option<i32>>,
    result: Vec<Option<String>>,
    result_cid: Vec<Option<String>>,
}

type Query = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Assignments and completions, for the kit's group writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskStatement;

impl GroupStatement for TaskStatement {
    type Rows = TaskRow;
    type Params = TaskParams;

    fn sql(&self, _: &[&TaskRow]) -> &'static str {
        SQL.as_str()
    }

    fn add(&self, p: &mut TaskParams, task: uuid::Uuid, r: TaskRow) {
        p.task.push(task);
        p.want_state.push(r.want_state);
        p.want_attempts.push(r.want_attempts);
        p.now.push(r.now);
        p.agent.push(r.agent);
        p.state.push(r.state);
        p.lease_until.push(r.lease_until);
        p.attempts.push(r.attempts);
        p.result.push(r.result);
        p.result_cid.push(r.result_cid);
    }

    fn bind(&self, p: TaskParams, q: Query) -> Query {
        q.bind(p.task)
            .bind(p.want_state)
            .bind(p.want_attempts)
            .bind(p.now)
            .bind(p.agent)
            .bind(p.state)
            .bind(p.lease_until)
            .bind(p.attempts)
            .bind(p.result)
            .bind(p.result_cid)
    }
}

impl OneStatement<Task> for TaskStatement {
    fn decide_assuming(&self, command: &TaskCommand, services: &()) -> Option<(Vec<TaskEvent>, TaskRow)> {
        let assumed = assumed(command)?;
        // Refused on the assumed facts (a bad result, a lease in the past): the read path says
        // why, on the real ones.
        let events = assumed.decide(command, services).ok()?;
        let [event] = events.as_slice() else { return None };
        let row = row(command, &assumed, event)?;
        Some((events, row))
    }

    /// A finished task takes no more writes of this kind; the guard checks the state anyway.
    fn open(&self, state: &Task) -> bool {
        !state.state.is_finished()
    }
}
