//! What the dispatcher learns from other replicas (and hears again from itself) over NATS:
//!
//! - The domain stream's events, through an ordered consumer from "now": a submission or requeue
//!   wakes the dispatch loop; a cancellation, time-out or requeue of a task held by an agent
//!   connected here reaches its worker; an agent's activation or new capabilities or limit wakes
//!   the loop; an agent the dispatcher of another replica took offline while its worker is
//!   connected here is activated again (its old stream closed there after the worker moved
//!   here); an agent someone else took offline, or decommissioned, has its stream here ended. Events that arrive twice, or were acted on here already, change nothing.
//! - Session announcements (core NATS, `<prefix>.agent.worker.connected`): when a worker
//!   connects, the other replicas end any older stream of the same agent, so an agent has one
//!   stream across replicas too. The newer session (UUIDv7 ids order by time) wins.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::push};
use cim_core::{AggregateId, Domain, ErrorCode, EventEnvelope, SubjectPrefix, TenantId};
use cim_runtime::Shutdown;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::wire::cause;
use super::{Dispatcher, dispatcher};
use crate::agent::AgentCommand;
use crate::events::{AgentEvent, TaskEvent};

/// A worker connected somewhere: older streams of its agent end.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Connected {
    pub tenant: TenantId,
    pub agent: AggregateId,
    pub session: Uuid,
}

/// Where sessions are announced: beside the domain's event subjects, outside its stream.
pub(super) fn sessions_subject(prefix: &SubjectPrefix) -> String {
    format!("{prefix}.{}.worker.connected", Domain::Agent)
}

/// Follows the domain stream and the session announcements until `stop`, starting again after
/// failures (from "now": the sweeper and the re-scan cover what passed meanwhile).
pub async fn follow(dispatcher: Arc<Dispatcher>, js: jetstream::Context, prefix: SubjectPrefix, stop: Shutdown) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_triggered() {
        match consume(&dispatcher, &js, &prefix, &stop).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "dispatcher's event feed interrupted; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn consume(
    dispatcher: &Dispatcher,
    js: &jetstream::Context,
    prefix: &SubjectPrefix,
    stop: &Shutdown,
) -> Result<(), String> {
    let mut sessions =
        js.client().subscribe(sessions_subject(prefix)).await.map_err(|e| format!("subscribing sessions: {e}"))?;
    let name = prefix.stream_name(Domain::Agent);
    let stream = js.get_stream(&name).await.map_err(|e| format!("stream {name}: {e}"))?;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: prefix.domain_events(Domain::Agent),
            deliver_policy: DeliverPolicy::New,
            description: Some("cim-agent dispatcher".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating the dispatcher's consumer: {e}"))?;
    let consumer_name = consumer.cached_info().name.clone();
    let mut events = consumer.messages().await.map_err(|e| format!("subscribing the events: {e}"))?;
    // Whatever was submitted while the feed was down is found by a pass now.
    dispatcher.wake();
    let outcome = loop {
        tokio::select! {
            _ = stop.wait() => break Ok(()),
            announced = sessions.next() => match announced {
                None => break Err("the session subscription ended".to_owned()),
                Some(m) => match serde_json::from_slice::<Connected>(&m.payload) {
                    Ok(connected) => dispatcher.on_connected(&connected),
                    Err(e) => tracing::debug!(error = %e, "skipping a malformed session announcement"),
                },
            },
            next = events.next() => match next {
                None => break Err("the event subscription ended".to_owned()),
                // The ordered consumer re-creates itself after these and goes on where it was.
                Some(Err(e)) => tracing::debug!(error = %e, "dispatcher's event feed hiccup"),
                Some(Ok(m)) => match serde_json::from_slice::<EventEnvelope>(&m.payload) {
                    Ok(event) => dispatcher.on_event(&event).await,
                    Err(e) => tracing::debug!(error = %e, "skipping an unreadable stream message"),
                },
            },
        }
    };
    let _ = stream.delete_consumer(&consumer_name).await;
    outcome
}

impl Dispatcher {
    /// Announces a new stream to the other replicas (best effort: a missed announcement leaves
    /// an older stream on another replica until its worker drops it).
    pub(super) async fn announce(&self, connected: &Connected) {
        let Some(bus) = self.bus.get() else { return };
        match serde_json::to_vec(connected) {
            Ok(payload) => {
                if let Err(e) = bus.client.publish(sessions_subject(&bus.prefix), payload.into()).await {
                    tracing::warn!(error = %e, "could not announce a worker stream");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not encode a session announcement"),
        }
    }

    fn on_connected(&self, connected: &Connected) {
        if let Some(session) = self.session(connected.tenant, connected.agent)
            && session.id < connected.session
        {
            session.replace();
        }
    }

    async fn on_event(&self, event: &EventEnvelope) {
        let (tenant, id) = (event.tenant_id, event.aggregate_id);
        match event.aggregate_type.as_str() {
            crate::task::AGGREGATE_TYPE => match TaskEvent::from_envelope(event) {
                // One submitted here woke the loop when it committed.
                Ok(TaskEvent::Submitted(_)) => {
                    if !self.submitted_here.remove(id) {
                        self.backlogs.changed(tenant);
                        self.wake();
                    }
                }
                Ok(TaskEvent::Reassigned(r)) => {
                    self.revoke(tenant, r.from, id, cause::LEASE_LAPSED, &r.reason);
                    if r.to.is_none() {
                        self.backlogs.changed(tenant);
                        self.wake();
                    }
                }
                Ok(TaskEvent::Cancelled(c)) => {
                    if let Some(holder) = c.holder {
                        let reason = if c.reason.is_empty() { "the task was cancelled" } else { &c.reason };
                        self.revoke(tenant, holder, id, cause::CANCELLED, reason);
                    }
                }
                Ok(TaskEvent::TimedOut(t)) => {
                    if let Some(holder) = t.holder {
                        self.revoke(tenant, holder, id, cause::TIMED_OUT, "the task's deadline passed");
                    }
                }
                // Finished through another replica's stream of the same agent: the slot is free.
                Ok(TaskEvent::Completed(c)) => self.release(tenant, c.agent, id),
                Ok(TaskEvent::Failed(f)) => self.release(tenant, f.agent, id),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "skipping an unreadable task event"),
            },
            crate::agent::AGGREGATE_TYPE => self.on_agent_event(event).await,
            _ => {}
        }
    }

    async fn on_agent_event(&self, event: &EventEnvelope) {
        let (tenant, id) = (event.tenant_id, event.aggregate_id);
        // Routing at submission waits for a pass to read the agent again.
        self.agent_changed(tenant, id);
        match AgentEvent::from_envelope(event) {
            Ok(AgentEvent::Activated(_) | AgentEvent::CapabilitiesUpdated(_)) => self.wake(),
            Ok(AgentEvent::ConcurrencyLimitSet(limit)) => {
                if let Some(session) = self.session(tenant, id) {
                    session.set_limit(limit.max_concurrent_tasks);
                }
                self.wake();
            }
            // Written by a replica whose old stream of the agent closed, after its worker
            // moved here.
            Ok(AgentEvent::WentOffline(_)) if event.actor == dispatcher(tenant).actor => {
                self.back_online(tenant, id).await;
            }
            // Marked offline by someone: its stream here goes too, unless the worker
            // connected after that (which made the agent active again).
            Ok(AgentEvent::WentOffline(_)) => self.end_stream(event, "was marked offline"),
            Ok(AgentEvent::Decommissioned(_)) => self.end_stream(event, "was decommissioned"),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "skipping an unreadable agent event"),
        }
    }

    fn release(&self, tenant: TenantId, agent: AggregateId, task: AggregateId) {
        if let Some(session) = self.session(tenant, agent)
            && session.release(task)
        {
            self.slot_freed(tenant);
        }
    }

    /// Ends the stream of the event's agent, if it was open before the event happened.
    fn end_stream(&self, event: &EventEnvelope, what: &str) {
        let agent = event.aggregate_id;
        if let Some(session) = self.session(event.tenant_id, agent)
            && session.connected_at < event.occurred_at
        {
            let why = format!("agent {agent} {what}");
            session.end(cim_proto::status::error_status(ErrorCode::FailedPrecondition, why, &[]));
        }
    }

    /// An agent went offline while its worker is connected here: the offline came from the
    /// replica its old stream was on, after the worker moved here.
    async fn back_online(&self, tenant: TenantId, agent: AggregateId) {
        let Some(session) = self.session(tenant, agent).filter(|s| !s.is_closing()) else { return };
        match self.agents.execute(&session.caller, agent, &AgentCommand::Activate, &Default::default()).await {
            Ok(_) => tracing::info!(%agent, "agent active again: its worker is connected here"),
            Err(e) => tracing::debug!(%agent, error = %e, "agent not activated again"),
        }
    }
}
