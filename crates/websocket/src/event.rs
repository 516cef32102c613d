//! One event from a domain stream as the websocket server handles it: decoded once (only the
//! fields routing needs), the envelope passed through exactly as published. The feed produces
//! these and the client queues carry them; neither depends on the other for it.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, AggregateType, EventType, TenantId, headers};
use serde::Deserialize;

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
    })
}

pub(crate) fn decode_message(position: u64, message: &async_nats::Message) -> Result<FeedEvent, String> {
    let tenant = message.headers.as_ref().and_then(|h| h.get(headers::TENANT_ID)).map(|v| v.as_str());
    decode(position, &message.payload, tenant)
}
