//! The task's one-round-trip write: a submission (with its assignment, when the dispatcher
//! routed it at once), an assignment or a completion decided on assumed facts and written by
//! one guarded statement, grouped with other tasks' (the kit's [`cim_aggregate::OneStatement`]
//! and group commit, as graph does). Submitters, the dispatcher and its workers write many
//! tasks at once; each write used to cost a transaction of its own (four to eight round trips
//! and a commit), now a share of one statement.
//!
//! The assumptions are stated as a task ([`assumed`]) and decided by the aggregate's own rules,
//! so this path cannot decide differently from the read one; the guard then checks them on the
//! projection row under its lock: the head (the row's version, written with every event), the
//! state, the holder and its lease, the deadline, the attempts. If any differs nothing of the
//! command is written and the executor decides for real on the row read under its lock. The
//! guard locks task rows in id order and nothing else (an agent's load is counted from the
//! tasks, not kept on its row), so groups and single commands never deadlock. A submission has
//! no row to lock: the guard checks that none exists, and two statements racing to create the
//! same id are told apart by the events' sequence key (the kit then retries each alone).

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

/// What the guard requires of a submission's task: no row at all.
const ABSENT: &str = "absent";

/// One command's guard and projection row. `want_*` is what the guard checks, the rest what
/// the projection writes (as [`crate::projection::TaskProjection`] would).
#[derive(Debug)]
pub struct TaskRow {
    want_state: &'static str,
    want_attempts: Option<i32>,
    now: DateTime<Utc>,
    /// The new holder (assigned) or the holder the guard requires (completed); none for a
    /// submission left queued.
    agent: Option<uuid::Uuid>,
    state: &'static str,
    lease_until: Option<DateTime<Utc>>,
    attempts: Option<i32>,
    result: Option<String>,
    result_cid: Option<String>,
    submitted: Option<Submitted>,
}

/// A submission's own columns, for the row it creates.
#[derive(Debug)]
struct Submitted {
    /// As a JSON array: arrays of different lengths do not fit one SQL array of arrays.
    required_capabilities: String,
    payload: String,
    priority: i32,
    deadline: Option<DateTime<Utc>>,
    correlation: String,
}

/// A submission decided on an absent task, and the row that creates it (queued, or assigned
/// when the dispatcher routed it with the submission).
fn created(command: &TaskCommand) -> Option<(Vec<TaskEvent>, TaskRow)> {
    let now = match command {
        TaskCommand::Submit { now, .. } | TaskCommand::SubmitAndAssign { now, .. } => *now,
        _ => return None,
    };
    let events = Task::default().decide(command, &()).ok()?;
    let (submitted, assigned) = match events.as_slice() {
        [TaskEvent::Submitted(s)] => (s, None),
        [TaskEvent::Submitted(s), TaskEvent::Assigned(a)] => (s, Some(a)),
        _ => return None,
    };
    let row = TaskRow {
        want_state: ABSENT,
        want_attempts: None,
        now,
        agent: assigned.map(|a| a.agent.as_uuid()),
        state: if assigned.is_some() { TaskState::Assigned } else { TaskState::Queued }.as_str(),
        lease_until: assigned.map(|a| a.lease_until),
        attempts: Some(assigned.map_or(0, |a| a.attempt as i32)),
        result: None,
        result_cid: None,
        submitted: Some(Submitted {
            required_capabilities: serde_json::to_string(&crate::names::strings(&submitted.required_capabilities))
                .ok()?,
            payload: serde_json::to_string(&submitted.payload).ok()?,
            priority: i32::try_from(submitted.priority).ok()?,
            deadline: submitted.deadline,
            correlation: submitted.correlation.clone(),
        }),
    };
    Some((events, row))
}

fn row(command: &TaskCommand, assumed: &Task, event: &TaskEvent) -> Option<TaskRow> {
    let want_state = assumed.state.as_str();
    match (command, event) {
        (TaskCommand::Assign { now, .. }, TaskEvent::Assigned(e)) => Some(TaskRow {
            want_state,
            want_attempts: Some(assumed.attempts as i32),
            now: *now,
            agent: Some(e.agent.as_uuid()),
            state: TaskState::Assigned.as_str(),
            lease_until: Some(e.lease_until),
            attempts: Some(e.attempt as i32),
            result: None,
            result_cid: None,
            submitted: None,
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
                agent: Some(e.agent.as_uuid()),
                state: TaskState::Completed.as_str(),
                lease_until: None,
                attempts: None,
                result,
                result_cid,
                submitted: None,
            })
        }
        _ => None,
    }
}

/// The guard and the projection writes (see [`cim_eventstore::guarded_append_many_sql`]);
/// caller parameters `$23..$37`, one element per command.
static SQL: LazyLock<String> = LazyLock::new(|| {
    cim_eventstore::guarded_append_many_sql(
        "a AS ( \
            SELECT * FROM unnest($23::uuid[], $24::text[], $25::int[], $26::timestamptz[], $27::uuid[], $28::text[], \
                                 $29::timestamptz[], $30::int[], $31::text[], $32::text[], $33::text[], $34::text[], \
                                 $35::int[], $36::timestamptz[], $37::text[]) \
            AS a(task_id, want_state, want_attempts, now, agent, state, lease_until, attempts, result, result_cid, \
                 required_capabilities, payload, priority, deadline, correlation) \
        ), locked AS ( \
            SELECT t.task_id AS aggregate_id FROM tasks t \
            JOIN cmd c ON t.tenant_id = c.tenant_id AND t.task_id = c.aggregate_id \
            JOIN a ON a.task_id = c.aggregate_id \
            WHERE t.version = c.version AND t.state = a.want_state \
              AND (a.want_attempts IS NULL OR t.attempts = a.want_attempts) \
              AND (t.deadline IS NULL OR t.deadline > a.now) \
              AND (a.want_state <> 'assigned' OR (t.holder = a.agent AND t.lease_until > a.now)) \
            ORDER BY t.task_id FOR UPDATE OF t \
        ), guard AS ( \
            SELECT aggregate_id FROM locked \
            UNION ALL \
            SELECT c.aggregate_id FROM cmd c JOIN a ON a.task_id = c.aggregate_id \
            WHERE a.want_state = 'absent' AND c.version = 0 AND NOT EXISTS ( \
                SELECT 1 FROM tasks t WHERE t.tenant_id = c.tenant_id AND t.task_id = c.aggregate_id) \
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
            FROM written w WHERE t.tenant_id = w.tenant_id AND t.task_id = w.task_id AND w.want_state <> 'absent' \
        ), born AS ( \
            INSERT INTO tasks (tenant_id, task_id, version, created_at, updated_at, state, required_capabilities, \
                               payload, priority, deadline, correlation, holder, lease_until, attempts) \
            SELECT w.tenant_id, w.task_id, w.new_version, w.occurred_at, w.occurred_at, w.state, \
                   ARRAY(SELECT json_array_elements_text(w.required_capabilities::json)), w.payload::jsonb, \
                   w.priority, w.deadline, w.correlation, w.agent, w.lease_until, w.attempts \
            FROM written w WHERE w.want_state = 'absent' \
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
    agent: Vec<Option<uuid::Uuid>>,
    state: Vec<&'static str>,
    lease_until: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<Option<i32>>,
    result: Vec<Option<String>>,
    result_cid: Vec<Option<String>>,
    required_capabilities: Vec<Option<String>>,
    payload: Vec<Option<String>>,
    priority: Vec<Option<i32>>,
    deadline: Vec<Option<DateTime<Utc>>>,
    correlation: Vec<Option<String>>,
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
        let (required_capabilities, payload, priority, deadline, correlation) = match r.submitted {
            Some(s) => {
                (Some(s.required_capabilities), Some(s.payload), Some(s.priority), s.deadline, Some(s.correlation))
            }
            None => (None, None, None, None, None),
        };
        p.required_capabilities.push(required_capabilities);
        p.payload.push(payload);
        p.priority.push(priority);
        p.deadline.push(deadline);
        p.correlation.push(correlation);
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
            .bind(p.required_capabilities)
            .bind(p.payload)
            .bind(p.priority)
            .bind(p.deadline)
            .bind(p.correlation)
    }
}

impl OneStatement<Task> for TaskStatement {
    fn decide_assuming(&self, command: &TaskCommand, services: &()) -> Option<(Vec<TaskEvent>, TaskRow)> {
        if Task::creates(command) {
            return created(command);
        }
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
