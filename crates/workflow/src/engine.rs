//! The engine: claims due instances from `workflow_due` under a lease (`FOR UPDATE SKIP
//! LOCKED`, so replicas over one schema split the work and never hold one instance at once),
//! advances each with one [`WorkflowCommand::Advance`] at the version it read, and hands the
//! row back with the next instant the instance waits for.
//!
//! Exactly once: the lease keeps a second replica away while one works; if a lease lapses
//! mid-work anyway, the advance was decided at an expected version, so only one of two writes
//! lands, and the rules start a step only from `pending` and fire a timer only while it is
//! scheduled. Never early: a timer fires only when the engine's clock has passed it, and its
//! row is due no sooner. Durable: the rows are in Postgres; after a restart, whatever came due
//! meanwhile is claimed on the first poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cim_aggregate::{Aggregate, CommandExecutor, CommandOptions, ExecutorError};
use cim_core::{Actor, AggregateId, CorrelationId, TenantId};
use cim_runtime::Shutdown;
use cim_runtime::config::WorkflowSettings;
use cim_runtime::edge::Caller;
use sqlx::{PgPool, Row};
use tokio::sync::{Notify, Semaphore};

use crate::calls::Calls;
use crate::error::ServiceError;
use crate::instance::{Workflow, WorkflowCommand, WorkflowError};
use crate::metrics::{ADVANCES_TOTAL, GAUGES_EVERY, INSTANCES, TIMER_LATENESS, WAITING_ON_TIME};

mod send;

/// How the engine works (tests shorten it).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How long a claim keeps other replicas away from an instance.
    pub lease: Duration,
    /// How often due work is looked for when nothing woke the engine.
    pub poll: Duration,
    /// Instances advanced at once by this replica.
    pub concurrency: usize,
}

impl EngineOptions {
    pub fn from_settings(s: &WorkflowSettings) -> Self {
        Self { lease: s.lease, poll: s.poll, concurrency: s.concurrency }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { lease: Duration::from_secs(30), poll: Duration::from_millis(100), concurrency: 16 }
    }
}

/// One claimed row.
#[derive(Debug, Clone, Copy)]
struct Due {
    tenant: TenantId,
    instance: AggregateId,
    correlation: CorrelationId,
}

#[derive(Debug)]
pub struct Engine {
    workflows: CommandExecutor<Workflow>,
    pool: PgPool,
    options: EngineOptions,
    calls: Calls,
    wake: Notify,
}

impl Engine {
    pub fn new(workflows: CommandExecutor<Workflow>, calls: Calls, options: EngineOptions) -> Arc<Self> {
        let pool = workflows.store().pool().clone();
        Arc::new(Self { workflows, pool, options, calls, wake: Notify::new() })
    }

    pub fn start(self: &Arc<Self>, host: &mut cim_runtime::ServiceHost) {
        let stop = host.workers_shutdown();
        host.spawn_worker("workflow-engine", self.clone().run(stop));
    }

    /// Something may be due now (a command of this replica): look without waiting for the poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, stop: Shutdown) {
        let mut counted = tokio::time::Instant::now() - GAUGES_EVERY;
        let mut withdrawn = counted;
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        while !stop.is_triggered() {
            if counted.elapsed() >= GAUGES_EVERY {
                counted = tokio::time::Instant::now();
                if let Err(e) = self.count().await {
                    tracing::warn!(error = %e, "workflow engine: counting instances failed");
                }
            }
            // At most once a poll period: the loop turns once per freed slot when busy.
            if withdrawn.elapsed() >= self.options.poll {
                withdrawn = tokio::time::Instant::now();
                if let Err(e) = self.withdraw().await {
                    tracing::warn!(error = %e, "workflow engine: withdrawing tasks and children failed");
                }
            }
            // At least one free slot before claiming, and never more rows than free slots: an
            // instance waiting on a slow call holds its own slot, not the rest of a batch.
            let acquired = tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                _ = stop.wait() => break,
            };
            let Ok(first) = acquired else { break };
            let claimed = match self.claim(slots.available_permits() + 1).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "workflow engine: claiming due work failed");
                    Vec::new()
                }
            };
            if claimed.is_empty() {
                drop(first);
                let idle = self.until_next_due().await;
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = self.wake.notified() => {}
                    _ = stop.wait() => {}
                }
                continue;
            }
            let mut first = Some(first);
            for due in claimed {
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match slots.clone().try_acquire_owned() {
                        Ok(permit) => permit,
                        // Cannot happen (no more rows than free slots); the lease lapses if it does.
                        Err(_) => break,
                    },
                };
                let engine = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = engine.advance(due).await {
                        // The lease lapses and the row is claimed again.
                        tracing::warn!(instance = %due.instance, error = %e, "workflow engine: advance failed");
                        metrics::counter!(ADVANCES_TOTAL, "outcome" => "error").increment(1);
                    }
                    drop(permit);
                });
            }
        }
        // What is under way finishes before the engine stops.
        let _ = slots.acquire_many(self.options.concurrency.max(1) as u32).await;
    }

    /// The gauges of unfinished instances by status and of those waiting on time.
    async fn count(&self) -> Result<(), sqlx::Error> {
        let rows = sqlx::query(
            "SELECT s.status, count(i.status) AS n FROM unnest(ARRAY['draft', 'running', 'paused']) AS s(status) \
             LEFT JOIN workflow_instances i ON i.status = s.status GROUP BY s.status",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            metrics::gauge!(INSTANCES, "status" => status).set(n as f64);
        }
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM workflow_due WHERE due_at > now()").fetch_one(&self.pool).await?;
        metrics::gauge!(WAITING_ON_TIME).set(waiting as f64);
        Ok(())
    }

    /// How long to sleep when nothing is due: until the earliest row comes due (a timer fires
    /// on time instead of up to a poll late), never longer than the poll, which still bounds
    /// how late this replica sees rows another replica released or a lease that lapsed.
    async fn until_next_due(&self) -> Duration {
        let next: Result<Option<DateTime<Utc>>, _> = sqlx::query_scalar(
            "SELECT min(due_at) FROM workflow_due WHERE due_at IS NOT NULL AND leased_until IS NULL",
        )
        .fetch_one(&self.pool)
        .await;
        match next {
            // At least a millisecond: a row another claim holds locked right now is skipped, and
            // looking again at once would spin until that claim commits.
            Ok(Some(next)) => {
                (next - Utc::now()).to_std().unwrap_or_default().clamp(Duration::from_millis(1), self.options.poll)
            }
            Ok(None) => self.options.poll,
            Err(e) => {
                tracing::warn!(error = %e, "workflow engine: reading the next due time failed");
                self.options.poll
            }
        }
    }

    /// Due rows no other replica holds, leased to this one.
    async fn claim(&self, limit: usize) -> Result<Vec<Due>, sqlx::Error> {
        let now = Utc::now();
        let lease_until = now + chrono::Duration::from_std(self.options.lease).unwrap_or_default();
        let rows = sqlx::query(
            "UPDATE workflow_due d SET leased_until = $2 FROM ( \
                SELECT tenant_id, instance_id FROM workflow_due \
                WHERE due_at <= $1 AND (leased_until IS NULL OR leased_until <= $1) \
                ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) c \
             WHERE d.tenant_id = c.tenant_id AND d.instance_id = c.instance_id \
             RETURNING d.tenant_id, d.instance_id, d.correlation_id",
        )
        .bind(now)
        .bind(lease_until)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let (tenant, instance, correlation) = (
                TenantId::from_uuid(row.try_get("tenant_id")?),
                AggregateId::from_uuid(row.try_get("instance_id")?),
                CorrelationId::from_uuid(row.try_get("correlation_id")?),
            );
            // Rows only the projection writes, from valid ids.
            if let (Ok(tenant), Ok(instance), Ok(correlation)) = (tenant, instance, correlation) {
                claimed.push(Due { tenant, instance, correlation });
            }
        }
        Ok(claimed)
    }

    /// Advances one claimed instance and releases its row.
    async fn advance(&self, due: Due) -> Result<(), ServiceError> {
        let (state, version) = self.workflows.load(due.tenant, due.instance).await?;
        let now = Utc::now();
        let command = WorkflowCommand::Advance { instance: due.instance, now, jitter: fastrand::f64() };
        let events = match state.decide(&command, &()) {
            Ok(events) => events,
            Err(WorkflowError::NothingDue) => {
                // A crash between starting a step and sending what it sends leaves it unsent.
                if self.send(due, &state).await? {
                    return Ok(());
                }
                self.release(due, version, state.next_due()).await?;
                metrics::counter!(ADVANCES_TOTAL, "outcome" => "idle").increment(1);
                return Ok(());
            }
            Err(e) => return Err(ExecutorError::Rule(e).into()),
        };
        let caller =
            Caller { tenant: due.tenant, actor: Actor::service("workflow"), correlation: Some(due.correlation) };
        let options = CommandOptions { expected_version: Some(version), idempotency_key: None };
        match self.workflows.execute(&caller, due.instance, &command, &options).await {
            Ok(done) => {
                let mut after = state;
                for event in &events {
                    after.apply(event);
                    observe(event, now);
                }
                metrics::counter!(ADVANCES_TOTAL, "outcome" => "advanced").increment(1);
                if !self.send(due, &after).await? {
                    self.release(due, done.version, after.next_due()).await?;
                }
                Ok(())
            }
            // Someone wrote first (a person's command, another replica): the row is due again,
            // and the next claim decides on what is there now.
            Err(ExecutorError::Stale { .. } | ExecutorError::Moved { .. }) => {
                metrics::counter!(ADVANCES_TOTAL, "outcome" => "moved").increment(1);
                self.release(due, u64::MAX, None).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the row back: due at `next` unless an event after `version` made it due already.
    async fn release(&self, due: Due, version: u64, next: Option<DateTime<Utc>>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE workflow_due SET leased_until = NULL, \
             due_at = CASE WHEN version = $3 THEN $4 ELSE due_at END \
             WHERE tenant_id = $1 AND instance_id = $2",
        )
        .bind(due.tenant.as_uuid())
        .bind(due.instance.as_uuid())
        .bind(i64::try_from(version).unwrap_or(-1))
        .bind(next)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// How late a timer fired (the lateness the timer benchmark bounds).
fn observe(event: &crate::events::WorkflowEvent, now: DateTime<Utc>) {
    if let crate::events::WorkflowEvent::TimerFired(e) = event {
        let late = (now - e.fire_at).to_std().unwrap_or_default();
        metrics::histogram!(TIMER_LATENESS).record(late.as_secs_f64());
    }
}
