//! One event from a domain stream as the websocket server handles it: decoded once (only the
//! fields routing needs), the envelope passed through exactly as published. The feed produces
//! these and the client queues carry them; neither depends on the other for it.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, AggregateType, EventType, TenantId, headers};
use serde::Deserialize;

use crate::protocol::FrameCache;

/// One event as the feed dispatches it: decoded once, shared by every recipient.
#[derive(Debug)]
pub struct FeedEvent {
    pub position: u64,
    pub tenant: TenantId,
    pub aggregate_type: AggregateType,
    pub aggregate_id: AggregateId,
    pub event_type: EventType,
    pub occurred_at: SystemTime,
    /// The envelope exactly as published.
    pub envelope: Box<str>,
    /// The W3C trace context the event frame carries: the live feed's dispatch span's, or for
    /// a catch-up read the publish's from the message headers.
    pub traceparent: Option<Box<str>>,
    /// This event's frames, formatted once per subscription id for all its recipients.
    pub frames: FrameCache,
}

/// The envelope fields routing needs; the rest is passed through untouched.
#[derive(Deserialize)]
struct Routing {
    tenant_id: TenantId,
    aggregate_type: AggregateType,
    aggregate_id: AggregateId,
    event_type: EventType,
    occurred_at: DateTime<Utc>,
}

/// Decodes a stream message. The tenant in the header (if any) must agree with the envelope's,
/// since either could be what a future reader trusts.
pub fn decode(position: u64, payload: &[u8], tenant_header: Option<&str>) -> Result<FeedEvent, String> {
    let envelope = std::str::from_utf8(payload).map_err(|e| format!("not UTF-8: {e}"))?;
    let r: Routing = serde_json::from_str(envelope).map_err(|e| format!("not an event envelope: {e}"))?;
    if let Some(h) = tenant_header
        && h != r.tenant_id.to_string()
    {
        return Err(format!("{} header {h} differs from the envelope's tenant {}", headers::TENANT_ID, r.tenant_id));
    }
    Ok(FeedEvent {
        position,
        tenant: r.tenant_id,
        aggregate_type: r.aggregate_type,
        aggregate_id: r.aggregate_id,
        event_type: r.event_type,
        occurred_at: r.occurred_at.into(),
        envelope: envelope.into(),
        traceparent: None,
        frames: FrameCache::default(),
    })
}

pub(crate) fn decode_message(position: u64, message: &async_nats::Message) -> Result<FeedEvent, String> {
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
    let mut event = decode(position, &message.payload, header(headers::TENANT_ID))?;
    event.traceparent = header(headers::TRACEPARENT).map(Box::from);
    Ok(event)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use cim_core::{Domain, EventContext, EventEnvelope, EventHash, NewEvent};

    pub(crate) fn envelope(tenant: TenantId) -> EventEnvelope {
        let ctx = EventContext {
            domain: Domain::Graph,
            aggregate_type: "graph".parse().unwrap(),
            aggregate_id: AggregateId::new(),
            tenant_id: tenant,
            actor: "user:a".parse().unwrap(),
            correlation_id: cim_core::CorrelationId::new(),
            causation_id: cim_core::CausationId::new(),
        };
        let new =
            NewEvent { event_type: "node_added".parse().unwrap(), schema_version: 1, payload: serde_json::json!({}) };
        EventEnvelope::seal(&ctx, new, 1, EventHash::GENESIS, Utc::now())
    }

    #[test]
    fn decoding_keeps_the_envelope_and_checks_the_tenant_header() {
        let tenant = TenantId::new();
        let body = serde_json::to_vec(&envelope(tenant)).unwrap();
        let e = decode(5, &body, Some(&tenant.to_string())).unwrap();
        assert_eq!((e.position, e.tenant), (5, tenant));
        assert_eq!(e.envelope.as_bytes(), body.as_slice());
        let err = decode(5, &body, Some(&TenantId::new().to_string())).unwrap_err();
        assert!(err.contains("differs"), "{err}");
        assert!(decode(5, b"{}", None).is_err());
        assert!(decode(5, &[0xff], None).is_err());
    }
}
