//! The agent domain service: a registry of agents (human, AI, system, external) and the tasks
//! they are given, built on the domain kit (`cim-aggregate`).
//!
//! - [`agent`], [`task`], [`events`]: the two aggregates' rules and events, pure Rust;
//!   [`names`]: the capability, permission and tool name pattern.
//! - [`routing`]: which agent a task goes to, a pure function.
//! - [`projection`], [`queries`]: the tables in schema `agent` and the reads over them.
//! - [`dispatch`]: the worker streams, the leased dispatch of tasks to connected agents, the
//!   sweeper, and conversations.
//! - [`service`]: the gRPC edge; [`app`]: wiring for `cim serve` and the service's binary.

pub mod agent;
pub mod app;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod metrics;
pub mod names;
pub mod projection;
pub mod queries;
pub mod routing;
pub mod service;
pub mod task;

/// The schema this service owns.
pub const SCHEMA: &str = "agent";

/// The projections' migrations (versions 1001+), applied after the event store's.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}

/// An event as a reload reads it back: sealed into an envelope like the store seals it, then
/// parsed from the envelope, so rule tests fold exactly what a replay would fold.
#[cfg(test)]
pub(crate) fn through_the_store<E: cim_core::events::DomainEvent>(event: &E, aggregate_type: &str) -> E {
    let context = cim_core::EventContext {
        domain: cim_core::Domain::Agent,
        aggregate_type: aggregate_type.parse().expect("a snake_case aggregate type"),
        aggregate_id: cim_core::AggregateId::new(),
        tenant_id: cim_core::TenantId::new(),
        actor: cim_core::Actor::service("test"),
        correlation_id: cim_core::CommandId::new().as_root_correlation(),
        causation_id: cim_core::CommandId::new().as_causation(),
    };
    let sealed = cim_core::EventEnvelope::seal(
        &context,
        event.to_new_event(),
        1,
        cim_core::EventHash::GENESIS,
        chrono::Utc::now(),
    );
    E::from_envelope(&sealed).expect("a stored event reads back")
}
