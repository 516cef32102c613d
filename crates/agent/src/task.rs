//! The task aggregate: work submitted for an agent with the required capabilities, held by one
//! agent at a time under a lease, and finished exactly once. Pure rules; time comes in with
//! each command (`now`), so every lease and deadline rule is decided the same way on replay.
//!
//! queued → assigned (lease) → completed | failed; assigned → (lease lapsed) reassigned to
//! another agent or back to queued; queued | assigned → cancelled | timed_out (deadline).
//! Only the holder, while its lease runs, may extend the lease, complete or fail the task: a
//! holder whose lease lapsed may already have been replaced, and its result is refused.

use chrono::{DateTime, Duration, Utc};
use cim_aggregate::Aggregate;
use cim_core::document::DocumentLimits;
use cim_core::{AggregateId, Domain, ErrorCode, FieldViolation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::agent::{check_text, named_enum};
use crate::events::*;
use crate::names::Names;

mod source;
mod statement;
#[cfg(test)]
mod tests;

pub use source::TaskFacts;
pub use statement::TaskStatement;

pub const AGGREGATE_TYPE: &str = "task";

pub const REQUIRED_MAX: usize = 32;
pub const PRIORITY_MAX: u32 = 1_000;
/// Payloads and results: JSON objects well below the event store's payload limit.
pub const JSON_LIMITS: DocumentLimits = DocumentLimits { max_bytes: 256 * 1024, max_depth: 32 };
const CORRELATION_MAX: usize = 200;
const ERROR_MAX: usize = 4_096;
const REASON_MAX: usize = 1_000;

/// The longest lease one assignment or heartbeat grants: a holder that needs longer sends
/// heartbeats, so a dead holder's task is never stuck for more than this.
pub fn lease_max() -> Duration {
    Duration::hours(24)
}

named_enum!(
    /// Where a task is; the last four are final.
    #[derive(Default)]
    TaskState {
        #[default]
        Queued = "queued",
        Assigned = "assigned",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
        TimedOut = "timed_out",
    }
);

impl TaskState {
    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Cancelled | TaskState::TimedOut)
    }
}

/// What a task produced: a JSON object, or the content id of a document holding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskResult {
    #[serde(rename = "result")]
    Value(Map<String, Value>),
    /// A CIDv1 (as the document service names content).
    #[serde(rename = "result_cid")]
    Document(String),
}

/// A CIDv1 in its canonical text form, or why `s` is not one.
pub fn canonical_cid(s: &str) -> Result<String, String> {
    let cid = cid::Cid::try_from(s).map_err(|e| format!("not a content id: {e}"))?;
    if cid.version() != cid::Version::V1 {
        return Err("expected a CIDv1".into());
    }
    Ok(cid.to_string())
}

/// What a submitter asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub required_capabilities: Names,
    pub payload: Map<String, Value>,
    pub priority: u32,
    pub deadline: Option<DateTime<Utc>>,
    pub correlation: String,
}

#[derive(Debug, Clone)]
pub enum TaskCommand {
    Submit {
        submission: Submission,
        now: DateTime<Utc>,
    },
    /// A submission assigned as it is written, when a free agent covers it and nothing waits
    /// that it would overtake (the dispatcher decides that): both events in one append.
    SubmitAndAssign {
        submission: Submission,
        now: DateTime<Utc>,
        agent: AggregateId,
        lease_until: DateTime<Utc>,
    },
    Assign {
        agent: AggregateId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
        /// The attempts the task had when the dispatcher read it from the queue, if it did: the
        /// one-statement write ([`statement`]) numbers the attempt from it and its guard checks
        /// it. The rules here always number from the task's own state.
        attempts: Option<u32>,
    },
    ExtendLease {
        agent: AggregateId,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    Complete {
        agent: AggregateId,
        result: TaskResult,
        now: DateTime<Utc>,
    },
    Fail {
        agent: AggregateId,
        error: String,
        retryable: bool,
        now: DateTime<Utc>,
    },
    /// After the holder's lease lapsed: to another agent (with a new lease) or, with `to`
    /// absent, back to the queue.
    Reassign {
        to: Option<AggregateId>,
        reason: String,
        lease_until: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    },
    Cancel {
        reason: String,
    },
    TimeOut {
        now: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the task is already {0}")]
    Finished(&'static str),
    #[error("the task is {0}; only a queued task is assigned")]
    NotQueued(&'static str),
    #[error("the task is {0}: no agent holds it")]
    NotHeld(&'static str),
    #[error("the task is held by agent {holder}, not {agent}")]
    NotHolder { holder: AggregateId, agent: AggregateId },
    #[error("the lease lapsed at {0}; the task may have been given to another agent")]
    LeaseLapsed(DateTime<Utc>),
    #[error("the holder's lease runs until {0}; the task is reassigned only after it lapses")]
    LeaseRunning(DateTime<Utc>),
    #[error("the deadline {0} has passed")]
    DeadlinePassed(DateTime<Utc>),
    #[error("the task has no deadline that has passed")]
    DeadlineAhead,
}

impl cim_runtime::status::HasErrorCode for TaskError {
    fn code(&self) -> ErrorCode {
        match self {
            TaskError::Invalid { .. } => ErrorCode::InvalidArgument,
            _ => ErrorCode::FailedPrecondition,
        }
    }

    fn violations(&self) -> Vec<FieldViolation> {
        match self {
            TaskError::Invalid { field, reason } => vec![FieldViolation::new(*field, reason.clone())],
            _ => vec![],
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TaskError {
    TaskError::Invalid { field, reason: reason.into() }
}

fn text(field: &'static str, s: &str, max: usize) -> Result<(), TaskError> {
    check_text(s, max, true).map_err(|reason| invalid(field, reason))
}

fn json(field: &'static str, document: &Map<String, Value>) -> Result<(), TaskError> {
    cim_core::document::check(document, &JSON_LIMITS).map_err(|e| invalid(field, e.to_string()))
}

/// A lease from `now`: in the future, and at most [`lease_max`] away.
fn lease(field: &'static str, until: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), TaskError> {
    if until <= now {
        return Err(invalid(field, "must be in the future"));
    }
    if until - now > lease_max() {
        return Err(invalid(field, format!("at most {} hours ahead", lease_max().num_hours())));
    }
    Ok(())
}

fn check_submission(s: &Submission, now: DateTime<Utc>) -> Result<(), TaskError> {
    if s.required_capabilities.len() > REQUIRED_MAX {
        let n = s.required_capabilities.len();
        return Err(invalid("required_capabilities", format!("{n} names; at most {REQUIRED_MAX}")));
    }
    json("payload", &s.payload)?;
    if s.priority > PRIORITY_MAX {
        return Err(invalid("priority", format!("from 0 to {PRIORITY_MAX}")));
    }
    if s.deadline.is_some_and(|d| d <= now) {
        return Err(invalid("deadline", "must be in the future"));
    }
    check_text(&s.correlation, CORRELATION_MAX, false).map_err(|r| invalid("correlation", r))
}

/// A task's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub state: TaskState,
    pub required_capabilities: Names,
    pub priority: u32,
    pub deadline: Option<DateTime<Utc>>,
    /// The agent holding the task (or, once finished, the last one that did).
    pub holder: Option<AggregateId>,
    /// While assigned: until when the holder may work on it undisturbed.
    pub lease_until: Option<DateTime<Utc>>,
    pub attempts: u32,
}

impl Task {
    fn unfinished(&self) -> Result<(), TaskError> {
        if self.state.is_finished() { Err(TaskError::Finished(self.state.as_str())) } else { Ok(()) }
    }

    /// The holder's lease as of `now`, if `agent` holds the task and the lease still runs.
    fn held_by(&self, agent: AggregateId, now: DateTime<Utc>) -> Result<DateTime<Utc>, TaskError> {
        self.unfinished()?;
        let (Some(holder), Some(until), TaskState::Assigned) = (self.holder, self.lease_until, self.state) else {
            return Err(TaskError::NotHeld(self.state.as_str()));
        };
        if holder != agent {
            return Err(TaskError::NotHolder { holder, agent });
        }
        if until <= now {
            return Err(TaskError::LeaseLapsed(until));
        }
        self.before_deadline(now)?;
        Ok(until)
    }

    fn before_deadline(&self, now: DateTime<Utc>) -> Result<(), TaskError> {
        match self.deadline {
            Some(deadline) if deadline <= now => Err(TaskError::DeadlinePassed(deadline)),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Task {
    const DOMAIN: Domain = Domain::Agent;
    const AGGREGATE_TYPE: &'static str = AGGREGATE_TYPE;
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = TaskError;
    type Services = ();

    fn command_name(command: &TaskCommand) -> &'static str {
        use TaskCommand::*;
        match command {
            Submit { .. } | SubmitAndAssign { .. } => "submit_task",
            Assign { .. } => "assign_task",
            ExtendLease { .. } => "extend_task_lease",
            Complete { .. } => "complete_task",
            Fail { .. } => "fail_task",
            Reassign { .. } => "reassign_task",
            Cancel { .. } => "cancel_task",
            TimeOut { .. } => "time_out_task",
        }
    }

    fn creates(command: &TaskCommand) -> bool {
        matches!(command, TaskCommand::Submit { .. } | TaskCommand::SubmitAndAssign { .. })
    }

    fn decide(&self, command: &TaskCommand, _: &()) -> Result<Vec<TaskEvent>, TaskError> {
        use TaskCommand as C;
        use TaskEvent as E;
        let submitted = |s: &Submission, now: &DateTime<Utc>| -> Result<TaskEvent, TaskError> {
            check_submission(s, *now)?;
            Ok(E::Submitted(TaskSubmitted {
                required_capabilities: s.required_capabilities.clone(),
                payload: s.payload.clone(),
                priority: s.priority,
                deadline: s.deadline,
                correlation: s.correlation.clone(),
            }))
        };
        let event = match command {
            C::Submit { submission, now } => submitted(submission, now)?,
            C::SubmitAndAssign { submission, now, agent, lease_until } => {
                let first = submitted(submission, now)?;
                let mut task = self.clone();
                task.apply(&first);
                let then = task
                    .decide(&C::Assign { agent: *agent, lease_until: *lease_until, now: *now, attempts: None }, &())?;
                return Ok([vec![first], then].concat());
            }
            C::Assign { agent, lease_until, now, .. } => {
                lease("lease_until", *lease_until, *now)?;
                self.unfinished()?;
                if self.state != TaskState::Queued {
                    return Err(TaskError::NotQueued(self.state.as_str()));
                }
                self.before_deadline(*now)?;
                E::Assigned(TaskAssigned { agent: *agent, lease_until: *lease_until, attempt: self.attempts + 1 })
            }
            C::ExtendLease { agent, lease_until, now } => {
                lease("lease_until", *lease_until, *now)?;
                let current = self.held_by(*agent, *now)?;
                if *lease_until <= current {
                    return Err(invalid("lease_until", format!("must be later than the current lease, {current}")));
                }
                E::LeaseExtended(TaskLeaseExtended { agent: *agent, lease_until: *lease_until })
            }
            C::Complete { agent, result, now } => {
                match result {
                    TaskResult::Value(value) => json("result", value)?,
                    TaskResult::Document(cid) => {
                        if canonical_cid(cid).as_ref() != Ok(cid) {
                            return Err(invalid("result_cid", "expected a CIDv1 in its canonical form"));
                        }
                    }
                }
                self.held_by(*agent, *now)?;
                E::Completed(TaskCompleted { agent: *agent, result: result.clone() })
            }
            C::Fail { agent, error, retryable, now } => {
                if error.trim().is_empty() {
                    return Err(invalid("error", "required"));
                }
                text("error", error, ERROR_MAX)?;
                self.held_by(*agent, *now)?;
                E::Failed(TaskFailed { agent: *agent, error: error.clone(), retryable: *retryable })
            }
            C::Reassign { to, reason, lease_until, now } => {
                text("reason", reason, REASON_MAX)?;
                match (to, lease_until) {
                    (Some(_), Some(until)) => lease("lease_until", *until, *now)?,
                    (None, None) => {}
                    (Some(_), None) => return Err(invalid("lease_until", "required when the task goes to an agent")),
                    (None, Some(_)) => return Err(invalid("lease_until", "only when the task goes to an agent")),
                }
                self.unfinished()?;
                let (Some(from), Some(until), TaskState::Assigned) = (self.holder, self.lease_until, self.state) else {
                    return Err(TaskError::NotHeld(self.state.as_str()));
                };
                if until > *now {
                    return Err(TaskError::LeaseRunning(until));
                }
                self.before_deadline(*now)?;
                E::Reassigned(TaskReassigned { from, to: *to, reason: reason.clone(), lease_until: *lease_until })
            }
            C::Cancel { reason } => {
                text("reason", reason, REASON_MAX)?;
                self.unfinished()?;
                let holder = self.holder.filter(|_| self.state == TaskState::Assigned);
                E::Cancelled(TaskCancelled { reason: reason.clone(), holder })
            }
            C::TimeOut { now } => {
                self.unfinished()?;
                let deadline = self.deadline.filter(|d| d <= now).ok_or(TaskError::DeadlineAhead)?;
                let holder = self.holder.filter(|_| self.state == TaskState::Assigned);
                E::TimedOut(TaskTimedOut { deadline, holder })
            }
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &TaskEvent) {
        use TaskEvent as E;
        match event {
            E::Submitted(e) => {
                self.required_capabilities = e.required_capabilities.clone();
                self.priority = e.priority;
                self.deadline = e.deadline;
            }
            E::Assigned(e) => {
                self.state = TaskState::Assigned;
                self.holder = Some(e.agent);
                self.lease_until = Some(e.lease_until);
                self.attempts = e.attempt;
            }
            E::LeaseExtended(e) => self.lease_until = Some(e.lease_until),
            E::Reassigned(e) => match e.to {
                Some(to) => {
                    self.holder = Some(to);
                    self.lease_until = e.lease_until;
                    self.attempts += 1;
                }
                None => {
                    self.state = TaskState::Queued;
                    self.holder = None;
                    self.lease_until = None;
                }
            },
            E::Completed(_) => self.finish(TaskState::Completed),
            E::Failed(_) => self.finish(TaskState::Failed),
            E::Cancelled(_) => self.finish(TaskState::Cancelled),
            E::TimedOut(_) => self.finish(TaskState::TimedOut),
        }
    }
}

impl Task {
    fn finish(&mut self, state: TaskState) {
        self.state = state;
        self.lease_until = None;
    }
}
