//! The workflow service's ears: one durable consumer per domain stream (graph, document, agent,
//! and its own), each event matched against the waits and triggers of its tenant.
//!
//! - A waiting attempt that takes the event gets it through `Deliver` (the rules accept it only
//!   while that attempt waits, so a redelivered event changes nothing).
//! - A trigger that takes it creates and starts an instance whose id derives from the definition
//!   and the event: exactly one instance per triggering event, however often it is delivered.
//!
//! The kit's consumer records each event id in the inbox once its handling succeeded; the writes
//! above go through the instance executor in their own transactions, and are idempotent for the
//! reasons given, so a crash between them and the inbox record is harmless.

use std::sync::Arc;

use chrono::Utc;
use cim_aggregate::{CommandExecutor, CommandOptions, ExecutorError};
use cim_core::{Actor, AggregateId, CorrelationId, Domain, EventEnvelope, SubjectPrefix, TenantId};
use cim_eventstore::consumer::{Consumer, ConsumerConfig, EventHandler};
use cim_runtime::edge::Caller;
use cim_runtime::status::HasErrorCode;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Row};

use crate::engine::Engine;
use crate::events::Wait;
use crate::instance::{Workflow, WorkflowCommand, WorkflowError, derived_id, takes};
use crate::metrics::{DELIVERIES_TOTAL, TRIGGERED_TOTAL};

/// The streams listened to: every domain a step may wait on.
pub const DOMAINS: [Domain; 4] = [Domain::Graph, Domain::Document, Domain::Agent, Domain::Workflow];

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

    /// One consumer per domain stream, `workflow-listen-<domain>`. A stream that does not exist
    /// yet (its service not deployed) is bound again with backoff until it does.
    pub fn consumers(
        self: &Arc<Self>,
        js: &async_nats::jetstream::Context,
        prefix: &SubjectPrefix,
    ) -> Result<Vec<Consumer>, String> {
        DOMAINS
            .iter()
            .map(|&domain| {
                let name = format!("workflow-listen-{domain}");
                let config = ConsumerConfig::new(&name, &prefix.stream_name(domain), &prefix.domain_events(domain));
                let handler: Arc<dyn EventHandler> = Arc::new(DomainEars { listener: self.clone() });
                Consumer::new(self.pool.clone(), js.clone(), prefix.clone(), config, handler).map_err(|e| e.to_string())
            })
            .collect()
    }

    async fn hear(&self, tx: &mut PgConnection, event: &EventEnvelope) -> Result<(), String> {
        let subject =
            format!("{}.evt.{}.{}.{}", event.domain, event.aggregate_type, event.aggregate_id, event.event_type);
        let shown = shown(event);
        let database = |e: sqlx::Error| format!("database: {e}");
        let waits = sqlx::query(
            "SELECT instance_id, step, attempt, subject, aggregate_id, condition, correlation_id FROM workflow_waits \
             WHERE tenant_id = $1 AND domain = $2 AND (aggregate_id IS NULL OR aggregate_id = $3)",
        )
        .bind(event.tenant_id.as_uuid())
        .bind(event.domain.as_str())
        .bind(event.aggregate_id.as_uuid())
        .fetch_all(&mut *tx)
        .await
        .map_err(database)?;
        for row in waits {
            let wait = Wait {
                subject: row.try_get("subject").map_err(database)?,
                aggregate_id: None,
                condition: row.try_get("condition").map_err(database)?,
            };
            // A condition that cannot be evaluated on this event does not take it.
            if !takes(&wait, &subject, &shown).unwrap_or(false) {
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
        let triggers = sqlx::query(
            "SELECT definition_id, subject, condition FROM workflow_triggers WHERE tenant_id = $1 AND domain = $2",
        )
        .bind(event.tenant_id.as_uuid())
        .bind(event.domain.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(database)?;
        for row in triggers {
            let wait = Wait {
                subject: row.try_get("subject").map_err(database)?,
                aggregate_id: None,
                condition: row.try_get("condition").map_err(database)?,
            };
            if !takes(&wait, &subject, &shown).unwrap_or(false) {
                continue;
            }
            let definition_id = id(row.try_get("definition_id").map_err(database)?)?;
            self.start(event, definition_id, &shown).await?;
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
        let command = WorkflowCommand::Create { definition_id, content_id, definition, context, start: true };
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

/// The event as conditions and step outputs see it.
fn shown(event: &EventEnvelope) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("event_id".into(), Value::String(event.event_id.to_string()));
    map.insert("event_type".into(), Value::String(event.event_type.to_string()));
    map.insert("domain".into(), Value::String(event.domain.to_string()));
    map.insert("aggregate_type".into(), Value::String(event.aggregate_type.to_string()));
    map.insert("aggregate_id".into(), Value::String(event.aggregate_id.to_string()));
    map.insert("sequence".into(), Value::from(event.sequence));
    map.insert("occurred_at".into(), Value::String(event.occurred_at.to_rfc3339()));
    map.insert("actor".into(), Value::String(event.actor.to_string()));
    map.insert("payload".into(), event.payload.clone());
    map
}

fn id(uuid: uuid::Uuid) -> Result<AggregateId, String> {
    AggregateId::from_uuid(uuid).map_err(|e| e.to_string())
}

/// The consumer's handler: every stream's events go to the one listener.
struct DomainEars {
    listener: Arc<Listener>,
}

impl EventHandler for DomainEars {
    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a EventEnvelope) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.listener.hear(tx, event))
    }
}
