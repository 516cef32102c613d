//! The workflow service's ears: one durable consumer per domain stream (graph, document, agent,
//! and its own), each event matched against the waits and triggers of its tenant.
//!
//! - A waiting attempt that takes the event gets it through `Deliver` (the rules accept it only
//!   while that attempt waits, so a redelivered event changes nothing).
//! - A trigger that takes it creates and starts an instance whose id derives from the definition
//!   and the event: exactly one instance per triggering event, however often it is delivered.
//!
//! No inbox: both writes are idempotent for the reasons given, so a redelivery is harmless, and
//! handling an event holds no database connection while the executor takes one (the kit's
//! inbox consumer would hold its transaction's: with small pools, four listeners could hold
//! every connection and wait for a fifth). The message is acknowledged after the writes.

use std::sync::Arc;

use chrono::Utc;
use cim_aggregate::{CommandExecutor, CommandOptions, ExecutorError};
use cim_core::{Actor, AggregateId, CorrelationId, Domain, EventEnvelope, SubjectPrefix, TenantId};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use cim_runtime::Shutdown;
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;
use cim_streams::{ConsumerMetrics, PullLoop, dead_letter_or_retry};
use serde_json::{Map, Value};
use sqlx::{PgPool, Row};

use crate::engine::Engine;
use crate::events::Wait;
use crate::instance::{Tick, Workflow, WorkflowCommand, WorkflowError, derived_id, takes};
use crate::metrics::{DELIVERIES_TOTAL, TRIGGERED_TOTAL};

/// The streams listened to: every domain a step may wait on (the spec refuses any other).
pub const DOMAINS: [Domain; 4] = crate::spec::LISTENED;

/// How long an event that could not be taken (the database did not answer) waits to come again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Listener {
    workflows: CommandExecutor<Workflow>,
    pool: PgPool,
    engine: Arc<Engine>,
}

impl Listener {
    pub fn new(workflows: CommandExecutor<Workflow>, engine: Arc<Engine>) -> Arc<Self> {
        let pool = workflows.store().pool().clone();
        Arc::new(Self { workflows, pool, engine })
    }

    /// One consumer per domain stream, `workflow-listen-<domain>`, each as a worker of its own
    /// until `stop`. A stream that does not exist yet (its service not deployed) is bound again
    /// with backoff until it does.
    pub fn consumers(
        self: &Arc<Self>,
        js: &jetstream::Context,
        prefix: &SubjectPrefix,
        stop: &Shutdown,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        DOMAINS
            .iter()
            .map(|&domain| {
                let name = format!("workflow-listen-{domain}");
                // One outstanding: a step waiting on an aggregate takes its events in the order
                // they happened, whichever replica hears them, and after a crash too.
                let consumer =
                    PullLoop::domain_durable(&name, prefix, domain, Duration::from_secs(30)).one_outstanding();
                let (listener, js, prefix, stop) = (self.clone(), js.clone(), prefix.clone(), stop.clone());
                async move {
                    let metrics = ConsumerMetrics::new(&name);
                    consumer
                        .run(
                            &js,
                            &stop,
                            |_| async {},
                            |message| {
                                let (listener, js, prefix, metrics, name) =
                                    (&listener, &js, &prefix, &metrics, name.as_str());
                                async move {
                                    listener.take(js, prefix, metrics, name, message).await;
                                    Ok(())
                                }
                            },
                        )
                        .await;
                }
            })
            .collect()
    }

    /// Handles one message and acknowledges it: applied, retried later, or dead-lettered when no
    /// retry can help (it does not read as an event).
    async fn take(
        &self,
        js: &jetstream::Context,
        prefix: &SubjectPrefix,
        metrics: &ConsumerMetrics,
        name: &str,
        message: Message,
    ) {
        let event = match serde_json::from_slice::<EventEnvelope>(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                let reason = format!("unreadable event: {e}");
                dead_letter_or_retry(js, prefix, name, metrics, &message, &reason, RETRY_AFTER).await;
                return;
            }
        };
        match self.hear(&event).await {
            Ok(()) => {
                let _ = message.ack().await;
                metrics.applied.increment(1);
            }
            Err(e) => {
                tracing::warn!(consumer = %name, event_id = %event.event_id, error = %e, "not taken; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
                metrics.retried.increment(1);
            }
        }
    }

    async fn hear(&self, event: &EventEnvelope) -> Result<(), String> {
        let subject =
            format!("{}.evt.{}.{}.{}", event.domain, event.aggregate_type, event.aggregate_id, event.event_type);
        let shown = cim_aggregate::expr::event_view(event);
        let database = |e: sqlx::Error| format!("database: {e}");
        // Waits and triggers in one round trip: every event of four streams comes through here.
        let rows = sqlx::query(
            "SELECT instance_id, step, attempt, subject, condition, correlation_id, NULL::uuid AS definition_id \
             FROM workflow_waits WHERE tenant_id = $1 AND domain = $2 AND (aggregate_id IS NULL OR aggregate_id = $3) \
             UNION ALL \
             SELECT NULL, NULL, NULL, subject, condition, NULL, definition_id \
             FROM workflow_triggers WHERE tenant_id = $1 AND domain = $2",
        )
        .bind(event.tenant_id.as_uuid())
        .bind(event.domain.as_str())
        .bind(event.aggregate_id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(database)?;
        for row in rows {
            if !taken(&row, &subject, &shown)? {
                continue;
            }
            // A trigger's row names its definition; a wait's its instance.
            if let Some(definition_id) = row.try_get::<Option<uuid::Uuid>, _>("definition_id").map_err(database)? {
                self.start(event, id(definition_id)?, &shown).await?;
                continue;
            }
            let instance = id(row.try_get("instance_id").map_err(database)?)?;
            let correlation = CorrelationId::from_uuid(row.try_get("correlation_id").map_err(database)?)
                .map_err(|e| e.to_string())?;
            let command = WorkflowCommand::Deliver {
                step: row.try_get("step").map_err(database)?,
                attempt: row.try_get::<i32, _>("attempt").map_err(database)? as u32,
                event: shown.clone(),
                now: Utc::now(),
                jitter: fastrand::f64(),
            };
            self.write(event.tenant_id, correlation, instance, &command, DELIVERIES_TOTAL).await?;
        }
        Ok(())
    }

    /// One instance of the definition's current version for `event`.
    async fn start(
        &self,
        event: &EventEnvelope,
        definition_id: AggregateId,
        shown: &Map<String, Value>,
    ) -> Result<(), String> {
        let (content_id, definition) =
            match crate::queries::definition_version(&self.pool, event.tenant_id, definition_id, None).await {
                Ok(found) => found,
                // Removed since: nothing to start.
                Err(e) if e.code() == cim_core::ErrorCode::NotFound => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
        let instance = derived_id(
            AggregateId::from_uuid(event.event_id.as_uuid()).map_err(|e| e.to_string())?,
            &["trigger", &definition_id.to_string()],
        );
        let context = Map::from_iter([("trigger".to_owned(), Value::Object(shown.clone()))]);
        let command = WorkflowCommand::Create {
            definition_id,
            content_id,
            definition,
            context,
            start: Some(Tick::now(instance)),
        };
        self.write(event.tenant_id, event.correlation_id, instance, &command, TRIGGERED_TOTAL).await
    }

    /// Writes `command` on `instance`; refusals by the rules (the attempt no longer waits, the
    /// instance exists already) mean the event was taken before, and are not errors.
    async fn write(
        &self,
        tenant: TenantId,
        correlation: CorrelationId,
        instance: AggregateId,
        command: &WorkflowCommand,
        counter: &'static str,
    ) -> Result<(), String> {
        let caller = Caller { tenant, actor: Actor::service("workflow"), correlation: Some(correlation) };
        match self.workflows.execute(&caller, instance, command, &CommandOptions::default()).await {
            Ok(_) => {
                metrics::counter!(counter, "outcome" => "taken").increment(1);
                self.engine.wake();
                Ok(())
            }
            Err(ExecutorError::Rule(WorkflowError::NothingDue) | ExecutorError::Exists(..)) => {
                metrics::counter!(counter, "outcome" => "already").increment(1);
                Ok(())
            }
            Err(ExecutorError::Rule(e)) => {
                // The rules refuse for good (a trigger's definition no longer starts): nothing
                // a redelivery could change.
                tracing::warn!(%instance, error = %e, "workflow listener: event not taken");
                metrics::counter!(counter, "outcome" => "refused").increment(1);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether the filter of a wait's or trigger's row (its `subject` and `condition`) takes the
/// event. A condition that cannot be evaluated on this event does not take it.
fn taken(row: &sqlx::postgres::PgRow, subject: &str, shown: &Map<String, Value>) -> Result<bool, String> {
    let database = |e: sqlx::Error| format!("database: {e}");
    let filter = Wait {
        subject: row.try_get("subject").map_err(database)?,
        aggregate_id: None,
        condition: row.try_get("condition").map_err(database)?,
    };
    Ok(takes(&filter, subject, shown).unwrap_or(false))
}

fn id(uuid: uuid::Uuid) -> Result<AggregateId, String> {
    AggregateId::from_uuid(uuid).map_err(|e| e.to_string())
}
