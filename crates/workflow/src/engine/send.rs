//! What the engine sends for steps that reach out, and what it takes back.
//!
//! Sending happens after the attempt's start is committed, and its result is recorded with
//! `Reached` for that attempt. A crash in between leaves the attempt unsent in the state; the
//! next claim sends it again with the same idempotency key (a call) or the same derived id (a
//! task, a child), so the other service acts once. A service that is down or busy is tried again
//! later without using up an attempt; a refusal fails the attempt (and its retry policy decides).
//!
//! Withdrawals: a task or child whose step ended another way (timed out, the run cancelled or
//! failed) is cancelled once; its row stays until the cancel went through or was moot.

use chrono::Utc;
use cim_aggregate::{CommandOptions, ExecutorError};
use cim_core::{Actor, AggregateId, CorrelationId, ErrorCode, TenantId};
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;
use serde_json::{Map, Value, json};
use sqlx::Row;

use super::{Due, Engine};
use crate::calls::CallError;
use crate::error::ServiceError;
use crate::events::Outreach;
use crate::instance::{Reach, Tick, Workflow, WorkflowCommand, WorkflowError};
use crate::metrics::{OUTREACH_TOTAL, WITHDRAWALS_TOTAL};

/// How long a step whose service was unreachable waits before it is sent again.
const UNREACHABLE_WAIT: chrono::Duration = chrono::Duration::seconds(1);
/// Withdrawals handled per pass.
const WITHDRAWALS_PER_PASS: i64 = 16;

impl Engine {
    /// Sends what `state`'s running attempts have not sent yet. `true` when there was something
    /// (the row was handed back here), `false` when nothing was unsent.
    pub(super) async fn send(&self, due: Due, state: &Workflow) -> Result<bool, ServiceError> {
        let unsent: Vec<_> =
            state.steps.iter().filter_map(|s| s.unsent().map(|o| (s.spec.id.clone(), s.attempts, o.clone()))).collect();
        if unsent.is_empty() {
            return Ok(false);
        }
        let caller =
            Caller { tenant: due.tenant, actor: Actor::service("workflow"), correlation: Some(due.correlation) };
        let mut later = false;
        for (step, attempt, outreach) in unsent {
            let kind = kind(&outreach);
            let outcome = match self.reach(&caller, due.instance, &step, attempt, &outreach).await {
                Ok(outcome) => outcome,
                Err(CallError { transient: true, message }) => {
                    tracing::info!(instance = %due.instance, %step, %message, "workflow step: will send again");
                    metrics::counter!(OUTREACH_TOTAL, "kind" => kind, "outcome" => "retry").increment(1);
                    later = true;
                    continue;
                }
                Err(CallError { message, .. }) => Reach::Refused(message),
            };
            let label = if matches!(outcome, Reach::Refused(_)) { "refused" } else { "sent" };
            metrics::counter!(OUTREACH_TOTAL, "kind" => kind, "outcome" => label).increment(1);
            let command = WorkflowCommand::Reached { step, attempt, outcome, now: Utc::now(), jitter: fastrand::f64() };
            match self.workflows.execute(&caller, due.instance, &command, &CommandOptions::default()).await {
                // Recorded, or the attempt ended meanwhile (a person cancelled, a timeout).
                Ok(_) | Err(ExecutorError::Rule(WorkflowError::NothingDue)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if later {
            self.postpone(due, Utc::now() + UNREACHABLE_WAIT).await?;
        } else {
            // Recorded events made the row due at once: the next claim carries on.
            self.release(due, u64::MAX, None).await?;
        }
        Ok(true)
    }

    async fn reach(
        &self,
        caller: &Caller,
        instance: AggregateId,
        step: &str,
        attempt: u32,
        outreach: &Outreach,
    ) -> Result<Reach, CallError> {
        let key = format!("workflow:{instance}:{step}:{attempt}");
        match outreach {
            Outreach::Call { service, method, request } => {
                self.calls.call(caller, service, method, request, &key).await.map(Reach::Answered)
            }
            Outreach::Task { task_id, capabilities, payload, priority } => {
                let request = json!({
                    "task_id": task_id.to_string(),
                    "required_capabilities": capabilities,
                    "payload": payload,
                    "priority": priority,
                    "correlation": format!("workflow {instance} step {step} attempt {attempt}"),
                });
                let request = request.as_object().cloned().unwrap_or_default();
                self.calls.call(caller, "agent", "SubmitTask", &request, &key).await.map(|_| Reach::Submitted)
            }
            Outreach::Child { instance_id, definition_id, context } => {
                self.start_child(caller, *instance_id, *definition_id, context).await
            }
        }
    }

    /// A child is an instance of this service: created here, at the id its parent derived.
    async fn start_child(
        &self,
        caller: &Caller,
        child: AggregateId,
        definition_id: AggregateId,
        context: &Map<String, Value>,
    ) -> Result<Reach, CallError> {
        let found = crate::queries::definition_version(&self.pool, caller.tenant, definition_id, None).await;
        let (content_id, definition) = found.map_err(|e| CallError {
            transient: e.code().is_retryable() || e.code() == ErrorCode::Unavailable,
            message: format!("child workflow: {e}"),
        })?;
        let start = Some(Tick::now(child));
        let command =
            WorkflowCommand::Create { definition_id, content_id, definition, context: context.clone(), start };
        match self.workflows.execute(caller, child, &command, &CommandOptions::default()).await {
            Ok(_) | Err(ExecutorError::Exists(..)) => {
                self.wake();
                Ok(Reach::ChildStarted)
            }
            Err(e) => {
                let code = e.code();
                Err(CallError { transient: code.is_retryable(), message: format!("child workflow: {e}") })
            }
        }
    }

    /// The row comes due again at `at`, whatever happened meanwhile (an unreachable service).
    async fn postpone(&self, due: Due, at: chrono::DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE workflow_due SET leased_until = NULL, due_at = LEAST(COALESCE(due_at, $3), $3) \
             WHERE tenant_id = $1 AND instance_id = $2",
        )
        .bind(due.tenant.as_uuid())
        .bind(due.instance.as_uuid())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels the tasks and children whose steps ended without them; rows another replica holds
    /// are skipped.
    pub(super) async fn withdraw(&self) -> Result<(), ServiceError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT tenant_id, target_id, outreach, instance_id, correlation_id FROM workflow_withdrawals \
             LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(WITHDRAWALS_PER_PASS)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let tenant: uuid::Uuid = row.try_get("tenant_id")?;
            let target: uuid::Uuid = row.try_get("target_id")?;
            let outreach: String = row.try_get("outreach")?;
            let instance: uuid::Uuid = row.try_get("instance_id")?;
            let correlation: uuid::Uuid = row.try_get("correlation_id")?;
            let corrupt = |e: cim_core::IdError| ServiceError::corrupt(e.to_string());
            let caller = Caller {
                tenant: TenantId::from_uuid(tenant).map_err(corrupt)?,
                actor: Actor::service("workflow"),
                correlation: Some(CorrelationId::from_uuid(correlation).map_err(corrupt)?),
            };
            let target_id = AggregateId::from_uuid(target).map_err(corrupt)?;
            let reason = format!("its step in workflow {instance} ended");
            let done = match outreach.as_str() {
                "task" => self.cancel_task(&caller, target_id, &reason).await,
                _ => self.cancel_child(&caller, target_id, &reason).await,
            };
            let kind = if outreach == "task" { "task" } else { "child" };
            if done {
                metrics::counter!(WITHDRAWALS_TOTAL, "kind" => kind, "outcome" => "done").increment(1);
                sqlx::query("DELETE FROM workflow_withdrawals WHERE tenant_id = $1 AND target_id = $2")
                    .bind(tenant)
                    .bind(target)
                    .execute(&mut *tx)
                    .await?;
            } else {
                metrics::counter!(WITHDRAWALS_TOTAL, "kind" => kind, "outcome" => "retry").increment(1);
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether the task is cancelled or past cancelling (finished, never submitted).
    async fn cancel_task(&self, caller: &Caller, task: AggregateId, reason: &str) -> bool {
        let request = json!({"task_id": task.to_string(), "reason": reason});
        let request = request.as_object().cloned().unwrap_or_default();
        let key = format!("workflow-withdraw:{task}");
        match self.calls.call(caller, "agent", "CancelTask", &request, &key).await {
            Ok(_) => true,
            Err(e) => !e.transient,
        }
    }

    async fn cancel_child(&self, caller: &Caller, child: AggregateId, reason: &str) -> bool {
        let command = WorkflowCommand::Cancel { reason: reason.chars().take(500).collect() };
        match self.workflows.execute(caller, child, &command, &CommandOptions::default()).await {
            Ok(_) => {
                self.wake();
                true
            }
            Err(e) => !e.code().is_retryable() && e.code() != ErrorCode::Unavailable && e.code() != ErrorCode::Internal,
        }
    }
}

fn kind(outreach: &Outreach) -> &'static str {
    match outreach {
        Outreach::Call { .. } => "call",
        Outreach::Task { .. } => "task",
        Outreach::Child { .. } => "child",
    }
}
