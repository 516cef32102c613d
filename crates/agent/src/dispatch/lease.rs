//! Leases: a heartbeat (or progress) keeps the leases of the tasks it names, and the sweeper
//! puts back in the queue what lapsed and times out what passed its deadline.
//!
//! An extension is an event, so heartbeats do not write one each: a lease is extended only once
//! half of it has run. The sweeper runs in every replica; two of them acting on the same task is
//! harmless, because the second command is decided on the state the first left (the lease is no
//! longer lapsed, the task is already timed out) and refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cim_aggregate::ExecutorError;
use cim_core::{AggregateId, ErrorCode, TenantId};
use cim_proto::agent as pb;
use cim_runtime::Shutdown;
use cim_runtime::status::HasErrorCode;
use futures::future::join_all;

use super::session::Session;
use super::wire::{self, cause};
use super::{Dispatcher, dispatcher, lost_race, queue};
use crate::error::ServiceError;
use crate::events::TaskEvent;
use crate::metrics::{AGENTS, LEASE_EXPIRIES_TOTAL, TASKS, TASKS_TIMED_OUT_TOTAL};
use crate::task::{TaskCommand, TaskError};

/// The sweeper never sweeps more often than this, however close the next due instant is.
const MIN_SWEEP_GAP: Duration = Duration::from_millis(20);
/// How often the backlog gauges (tasks and agents by state) are counted.
const GAUGES_EVERY: Duration = Duration::from_secs(10);

/// What a worker is told when a task it held was taken from it, by the rule that refused it.
fn cause_of(e: &ExecutorError<TaskError>) -> &'static str {
    match e {
        ExecutorError::Rule(TaskError::DeadlinePassed(_)) => cause::TIMED_OUT,
        ExecutorError::Rule(TaskError::LeaseLapsed(_) | TaskError::NotHolder { .. }) => cause::LEASE_LAPSED,
        ExecutorError::Rule(TaskError::Finished("cancelled")) => cause::CANCELLED,
        ExecutorError::Rule(TaskError::Finished("timed_out")) => cause::TIMED_OUT,
        _ => cause::NOT_HELD,
    }
}

impl Dispatcher {
    /// The worker is alive and names the tasks it still works on: those past half their lease
    /// are extended; a named task the agent does not hold is cancelled at the worker.
    pub(super) async fn heartbeat(&self, session: &Session, heartbeat: pb::Heartbeat) {
        let mut held = Vec::with_capacity(heartbeat.task_ids.len());
        for (i, raw) in heartbeat.task_ids.iter().enumerate() {
            match wire::id(&format!("task_ids[{i}]"), raw) {
                Ok(task) if session.lease_of(task).is_some() => held.push(task),
                Ok(task) => {
                    session.push(wire::cancellation(task, cause::NOT_HELD, "the agent does not hold this task"))
                }
                Err(e) => session.push(wire::task_reply(raw, Err(e))),
            }
        }
        self.extend_due(session, &held).await;
    }

    /// Progress on one task: not recorded, but it keeps that task's lease like a heartbeat.
    pub(super) async fn progress(&self, session: &Session, progress: pb::Progress) {
        let outcome = (|| {
            let task = wire::id("task_id", &progress.task_id)?;
            if progress.percent > 100 {
                return Err(ServiceError::invalid("percent", "from 0 to 100"));
            }
            if session.lease_of(task).is_none() {
                return Err(ServiceError::precondition(format!("agent {} does not hold task {task}", session.agent)));
            }
            Ok(task)
        })();
        match outcome {
            Ok(task) => {
                let note: String = progress.message.chars().take(200).collect();
                tracing::debug!(%task, percent = progress.percent, %note, "task progress");
                self.extend_due(session, &[task]).await;
            }
            Err(e) => session.push(wire::task_reply(&progress.task_id, Err(e))),
        }
    }

    /// Extends the leases among `tasks` that have run half their length. A task the agent turns
    /// out not to hold any more is released and cancelled at the worker.
    async fn extend_due(&self, session: &Session, tasks: &[AggregateId]) {
        let now = Utc::now();
        let half = self.options.lease / 2;
        let due = tasks.iter().copied().filter(|task| {
            session.lease_of(*task).is_some_and(|until| (until - now).to_std().unwrap_or_default() < half)
        });
        join_all(due.map(|task| async move {
            let lease_until = now + self.options.lease;
            let command = TaskCommand::ExtendLease { agent: session.agent, lease_until, now };
            match self.tasks.execute(&session.caller, task, &command, &Default::default()).await {
                Ok(_) => session.extended(task, lease_until),
                Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                    if session.release(task) {
                        session.push(wire::cancellation(task, cause_of(&e), &e.to_string()));
                        self.slot_freed(session.tenant);
                    }
                }
                // Tried again at the next heartbeat, well before the lease lapses.
                Err(e) => tracing::warn!(%task, error = %e, "lease extension failed"),
            }
        }))
        .await;
    }

    /// One sweep: lapsed leases back to the queue, passed deadlines timed out. Answers when the
    /// next one is due, if anything is.
    async fn sweep(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let now = Utc::now();
        let lapsed = queue::lapsed_leases(&self.pool, now).await?;
        let past = queue::past_deadline(&self.pool, now).await?;
        let more = lapsed.len() as i64 == queue::SWEEP_BATCH || past.len() as i64 == queue::SWEEP_BATCH;
        join_all(lapsed.into_iter().map(|l| self.requeue(l, now))).await;
        join_all(past.into_iter().map(|(tenant, task)| self.time_out(tenant, task, now))).await;
        if more {
            return Ok(Some(now));
        }
        queue::next_due(&self.pool).await
    }

    async fn requeue(&self, lapsed: queue::Lapsed, now: DateTime<Utc>) {
        let reason = format!("the lease of agent {} lapsed at {}", lapsed.holder, lapsed.lease_until.to_rfc3339());
        let command = TaskCommand::Reassign { to: None, reason: reason.clone(), lease_until: None, now };
        match self.tasks.execute(&dispatcher(lapsed.tenant), lapsed.task, &command, &Default::default()).await {
            Ok(_) => {
                metrics::counter!(LEASE_EXPIRIES_TOTAL).increment(1);
                tracing::info!(task = %lapsed.task, holder = %lapsed.holder, "lease lapsed; task queued again");
                self.revoke(lapsed.tenant, lapsed.holder, lapsed.task, cause::LEASE_LAPSED, &reason);
                self.backlogs.changed(lapsed.tenant);
                self.wake();
            }
            Err(e) if lost_race(e.code()) => tracing::debug!(task = %lapsed.task, error = %e, "not requeued"),
            Err(e) => tracing::warn!(task = %lapsed.task, error = %e, "requeue failed"),
        }
    }

    async fn time_out(&self, tenant: TenantId, task: AggregateId, now: DateTime<Utc>) {
        let command = TaskCommand::TimeOut { now };
        match self.tasks.execute(&dispatcher(tenant), task, &command, &Default::default()).await {
            Ok(done) => {
                metrics::counter!(TASKS_TIMED_OUT_TOTAL).increment(1);
                let holder = done.events.iter().find_map(|e| match TaskEvent::from_envelope(e) {
                    Ok(TaskEvent::TimedOut(t)) => t.holder,
                    _ => None,
                });
                if let Some(holder) = holder {
                    self.revoke(tenant, holder, task, cause::TIMED_OUT, "the task's deadline passed");
                }
            }
            Err(e) if lost_race(e.code()) => tracing::debug!(%task, error = %e, "not timed out"),
            Err(e) => tracing::warn!(%task, error = %e, "time-out failed"),
        }
    }

    async fn count_backlog(&self) -> Result<(), sqlx::Error> {
        for (state, n) in queue::tasks_by_state(&self.pool).await? {
            metrics::gauge!(TASKS, "state" => state).set(n as f64);
        }
        for (state, n) in queue::agents_by_state(&self.pool).await? {
            metrics::gauge!(AGENTS, "state" => state).set(n as f64);
        }
        Ok(())
    }
}

/// The sweeper: sweeps, then sleeps until the next lease or deadline it knows of is due (at most
/// the sweep interval, which also catches what other replicas made due meanwhile).
pub async fn sweep_forever(dispatcher: Arc<Dispatcher>, stop: Shutdown) {
    let mut counted: Option<Instant> = None;
    while !stop.is_triggered() {
        let next = dispatcher.sweep().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "sweep failed");
            None
        });
        if counted.is_none_or(|at| at.elapsed() >= GAUGES_EVERY) {
            counted = Some(Instant::now());
            if let Err(e) = dispatcher.count_backlog().await {
                tracing::warn!(error = %e, "counting the backlog failed");
            }
        }
        let mut wait = dispatcher.options.sweep_interval;
        if let Some(next) = next {
            wait = wait.min((next - Utc::now()).to_std().unwrap_or_default().max(MIN_SWEEP_GAP));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait() => return,
        }
    }
}
