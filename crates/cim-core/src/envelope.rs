//! The event envelope (docs/design.md#event-envelope): what is stored in `events`, published to JetStream and
//! delivered to browsers. Metadata is typed; the domain payload is JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::hash::EventHash;
use crate::ids::{AggregateId, CausationId, CorrelationId, EventId, TenantId};
use crate::names::{Actor, AggregateType, Domain, EventType};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEnvelope {
    pub event_id: EventId,
    pub event_type: EventType,
    pub schema_version: u32,
    pub domain: Domain,
    pub aggregate_type: AggregateType,
    pub aggregate_id: AggregateId,
    /// Position within the aggregate, from 1, without gaps.
    pub sequence: u64,
    #[serde(with = "micros")]
    pub occurred_at: DateTime<Utc>,
    pub tenant_id: TenantId,
    pub actor: Actor,
    pub correlation_id: CorrelationId,
    pub causation_id: CausationId,
    pub payload: serde_json::Value,
    /// BLAKE3 over this event's canonical form and `prev_hash`.
    pub hash: EventHash,
    /// The previous event's `hash`, or [`EventHash::GENESIS`] for sequence 1.
    pub prev_hash: EventHash,
}

/// An event as a domain decides it, before the store gives it identity and position.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: EventType,
    pub schema_version: u32,
    pub payload: serde_json::Value,
}

/// Who and what an appended batch of events belongs to; shared by every event of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContext {
    pub domain: Domain,
    pub aggregate_type: AggregateType,
    pub aggregate_id: AggregateId,
    pub tenant_id: TenantId,
    pub actor: Actor,
    pub correlation_id: CorrelationId,
    pub causation_id: CausationId,
}

/// Postgres keeps microseconds; truncating up front makes a stored event hash-identical to the
/// one that was sealed.
pub fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

mod micros {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("occurred_at: expected RFC 3339, {e}")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn context() -> EventContext {
        EventContext {
            domain: Domain::Graph,
            aggregate_type: "graph".parse().unwrap(),
            aggregate_id: AggregateId::new(),
            tenant_id: TenantId::new(),
            actor: "user:alice".parse().unwrap(),
            correlation_id: CorrelationId::new(),
            causation_id: CausationId::new(),
        }
    }

    pub fn new_event(n: u64) -> NewEvent {
        NewEvent {
            event_type: "node_added".parse().unwrap(),
            schema_version: 1,
            payload: serde_json::json!({"node_id": format!("n{n}"), "props": {"b": 1, "a": [n, null, true]}}),
        }
    }

    #[test]
    fn serde_round_trip_is_lossless() {
        let events = EventEnvelope::seal_all(&context(), (1..=3).map(new_event), 1, EventHash::GENESIS, Utc::now());
        for e in &events {
            let json = serde_json::to_string(e).unwrap();
            let back: EventEnvelope = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, e);
            assert_eq!(crate::chain::compute_hash(&back), e.hash);
        }
    }

    #[test]
    fn wire_form_uses_the_design_field_names_and_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456789Z").unwrap().to_utc();
        let e = EventEnvelope::seal(&context(), new_event(1), 1, EventHash::GENESIS, t);
        let v = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "event_id",
            "event_type",
            "schema_version",
            "domain",
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "occurred_at",
            "tenant_id",
            "actor",
            "correlation_id",
            "causation_id",
            "payload",
            "hash",
            "prev_hash",
        ] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(v["occurred_at"], "2026-11-26T10:00:00.123456Z");
        assert_eq!(v["domain"], "graph");
        assert_eq!(v["prev_hash"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn bad_fields_are_rejected_on_read() {
        let e = EventEnvelope::seal(&context(), new_event(1), 1, EventHash::GENESIS, Utc::now());
        let mut v = serde_json::to_value(&e).unwrap();
        v["aggregate_id"] = "nope".into();
        let err = serde_json::from_value::<EventEnvelope>(v).unwrap_err().to_string();
        assert!(err.contains("aggregate id"), "{err}");
        let mut v = serde_json::to_value(&e).unwrap();
        v["surprise"] = 1.into();
        assert!(serde_json::from_value::<EventEnvelope>(v).is_err());
    }
}
