//! Rule tests decide and apply without I/O, but what a replay folds is the event as the store
//! gives it back: sealed into an envelope, then parsed from it. Running each decided event
//! through that round trip catches a payload that does not survive storage (a field skipped on
//! write but required on read, a renamed variant) in the rule tests themselves.

use cim_aggregate::Aggregate;
use cim_core::events::DomainEvent;

/// `event` as a reload reads it back.
pub fn through_the_store<A: Aggregate>(event: &A::Event) -> A::Event {
    let context = cim_core::EventContext {
        domain: A::DOMAIN,
        aggregate_type: A::AGGREGATE_TYPE.parse().expect("a snake_case aggregate type"),
        aggregate_id: cim_core::AggregateId::new(),
        tenant_id: cim_core::TenantId::new(),
        actor: cim_core::Actor::service("test"),
        correlation_id: cim_core::CommandId::new().as_root_correlation(),
        causation_id: cim_core::CommandId::new().as_causation(),
    };
    let now = std::time::SystemTime::now().into();
    let sealed = cim_core::EventEnvelope::seal(&context, event.to_new_event(), 1, cim_core::EventHash::GENESIS, now);
    A::Event::from_envelope(&sealed).expect("a stored event reads back")
}

/// Decides `command` on `state` and applies each event as a replay would, asserting that it
/// survived the round trip unchanged.
pub fn run<A: Aggregate>(state: &mut A, command: &A::Command, services: &A::Services) -> Result<Vec<A::Event>, A::Error>
where
    A::Event: PartialEq + std::fmt::Debug,
{
    let events = state.decide(command, services)?;
    for event in &events {
        let stored = through_the_store::<A>(event);
        assert_eq!(&stored, event, "{} changed on its way through the store", event.event_type());
        state.apply(&stored);
    }
    Ok(events)
}
