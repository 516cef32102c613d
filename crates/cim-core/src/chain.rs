//! The per-aggregate hash chain: each event's hash covers its own canonical form and the previous
//! event's hash, so a changed, removed, inserted or reordered event breaks the chain at that point.
//!
//! docs/design.md#hash-chain says "canonical payload and previous hash". We hash every stored field except
//! `hash` itself, because an attacker (or a bad migration) that rewrites `actor` or
//! `occurred_at` should be caught just like one that rewrites the payload.

use chrono::{DateTime, Utc};

use crate::envelope::{EventContext, EventEnvelope, NewEvent, truncate_to_micros};
pub use crate::hash::EventHash;
use crate::ids::EventId;

/// Writes JSON with object keys sorted and no whitespace, so equal documents hash equally no
/// matter how a map was ordered when it was built.
pub fn canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                canonical_json(v, out);
            }
            out.push(b'}');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &serde_json::Value, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail.
    serde_json::to_writer(&mut *out, value).unwrap_or_default();
}

/// The canonical text of a payload: what the store writes and what the hash covers.
pub fn canonical_text(value: &serde_json::Value) -> String {
    let mut out = Vec::with_capacity(256);
    canonical_json(value, &mut out);
    // serde_json writes UTF-8 only; the fallback is unreachable.
    String::from_utf8(out).unwrap_or_default()
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The hash an event must carry, given its `prev_hash`: over its payload's canonical text.
pub fn compute_hash(e: &EventEnvelope) -> EventHash {
    hash_with_payload(e, canonical_text(&e.payload).as_bytes())
}

/// The hash of `e` with `payload_json` standing for its payload: the exact bytes that were
/// stored. Verification hashes what was stored, never a re-serialization of what a parser made
/// of it, so a number read back one bit off can never look like tampering.
pub fn hash_with_payload(e: &EventEnvelope, payload_json: &[u8]) -> EventHash {
    let mut h = blake3::Hasher::new();
    h.update(b"cim.event.v1\0");
    h.update(e.prev_hash.as_bytes());
    field(&mut h, e.event_id.as_uuid().as_bytes());
    field(&mut h, e.event_type.as_str().as_bytes());
    field(&mut h, &e.schema_version.to_le_bytes());
    field(&mut h, e.domain.as_str().as_bytes());
    field(&mut h, e.aggregate_type.as_str().as_bytes());
    field(&mut h, e.aggregate_id.as_uuid().as_bytes());
    field(&mut h, &e.sequence.to_le_bytes());
    field(&mut h, &e.occurred_at.timestamp_micros().to_le_bytes());
    field(&mut h, e.tenant_id.as_uuid().as_bytes());
    field(&mut h, e.actor.as_str().as_bytes());
    field(&mut h, e.correlation_id.as_uuid().as_bytes());
    field(&mut h, e.causation_id.as_uuid().as_bytes());
    field(&mut h, payload_json);
    EventHash(*h.finalize().as_bytes())
}

/// Sealing: an event gets its identity, position and place in the aggregate's chain here, so
/// the envelope module (plain data) depends on nothing that hashes it.
impl EventEnvelope {
    /// Gives a decided event its id, position and place in the aggregate's hash chain.
    pub fn seal(
        ctx: &EventContext,
        event: NewEvent,
        sequence: u64,
        prev_hash: EventHash,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        let mut envelope = EventEnvelope {
            event_id: EventId::new(),
            event_type: event.event_type,
            schema_version: event.schema_version,
            domain: ctx.domain,
            aggregate_type: ctx.aggregate_type.clone(),
            aggregate_id: ctx.aggregate_id,
            sequence,
            occurred_at: truncate_to_micros(occurred_at),
            tenant_id: ctx.tenant_id,
            actor: ctx.actor.clone(),
            correlation_id: ctx.correlation_id,
            causation_id: ctx.causation_id,
            payload: event.payload,
            hash: EventHash::GENESIS,
            prev_hash,
        };
        envelope.hash = compute_hash(&envelope);
        envelope
    }

    /// Seals a batch in order, chaining each event to the one before.
    pub fn seal_all(
        ctx: &EventContext,
        events: impl IntoIterator<Item = NewEvent>,
        first_sequence: u64,
        mut prev_hash: EventHash,
        occurred_at: DateTime<Utc>,
    ) -> Vec<Self> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let sealed = Self::seal(ctx, e, first_sequence + i as u64, prev_hash, occurred_at);
                prev_hash = sealed.hash;
                sealed
            })
            .collect()
    }
}

/// An event as it was read from the store: its envelope, and the payload exactly as stored,
/// which is what its hash covers.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub envelope: EventEnvelope,
    pub payload_json: String,
}

/// One link of a hash chain: an event and the payload bytes its hash is checked against.
pub trait ChainLink {
    fn envelope(&self) -> &EventEnvelope;
    fn hash_matches(&self) -> bool;
}

/// An event built in memory: its payload's canonical text is what a writer stores.
impl ChainLink for EventEnvelope {
    fn envelope(&self) -> &EventEnvelope {
        self
    }

    fn hash_matches(&self) -> bool {
        compute_hash(self) == self.hash
    }
}

impl ChainLink for StoredEvent {
    fn envelope(&self) -> &EventEnvelope {
        &self.envelope
    }

    fn hash_matches(&self) -> bool {
        hash_with_payload(&self.envelope, self.payload_json.as_bytes()) == self.envelope.hash
    }
}

/// The first place a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("hash chain broken at index {index} (sequence {sequence}, event {event_id}): {kind}")]
pub struct ChainBreak {
    pub index: usize,
    pub sequence: u64,
    pub event_id: String,
    pub kind: ChainBreakKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreakKind {
    #[error("event belongs to another aggregate")]
    ForeignAggregate,
    #[error("expected sequence {expected}, found {found} (an event is missing or out of order)")]
    SequenceGap { expected: u64, found: u64 },
    #[error("prev_hash does not match the previous event's hash (an event was removed or inserted)")]
    PrevHashMismatch,
    #[error("hash does not match the event's content (the event was changed)")]
    HashMismatch,
}

/// Verifies a whole aggregate history, which must start at sequence 1.
pub fn verify_chain<L: ChainLink>(events: &[L]) -> Result<(), ChainBreak> {
    verify_chain_from(0, EventHash::GENESIS, events)
}

/// Verifies events that continue a chain whose last checked event had `after_sequence` and
/// `after_hash` (0 and GENESIS for a chain from the start).
pub fn verify_chain_from<L: ChainLink>(
    after_sequence: u64,
    after_hash: EventHash,
    events: &[L],
) -> Result<(), ChainBreak> {
    let Some(first) = events.first() else { return Ok(()) };
    let aggregate = first.envelope().aggregate_id;
    let mut prev = after_hash;
    for (expected_sequence, (index, link)) in (after_sequence + 1..).zip(events.iter().enumerate()) {
        let e = link.envelope();
        let brk = |kind| ChainBreak { index, sequence: e.sequence, event_id: e.event_id.to_string(), kind };
        if e.aggregate_id != aggregate {
            return Err(brk(ChainBreakKind::ForeignAggregate));
        }
        if e.sequence != expected_sequence {
            return Err(brk(ChainBreakKind::SequenceGap { expected: expected_sequence, found: e.sequence }));
        }
        if e.prev_hash != prev {
            return Err(brk(ChainBreakKind::PrevHashMismatch));
        }
        if !link.hash_matches() {
            return Err(brk(ChainBreakKind::HashMismatch));
        }
        prev = e.hash;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::{context, new_event};
    use chrono::Utc;

    fn history(n: u64) -> Vec<EventEnvelope> {
        EventEnvelope::seal_all(&context(), (1..=n).map(new_event), 1, EventHash::GENESIS, Utc::now())
    }

    #[test]
    fn an_untouched_history_verifies() {
        assert_eq!(verify_chain(&history(10)), Ok(()));
        assert_eq!(verify_chain::<EventEnvelope>(&[]), Ok(()));
    }

    #[test]
    fn a_changed_payload_is_detected_at_that_event() {
        let mut events = history(10);
        events[4].payload["props"]["b"] = 2.into();
        let brk = verify_chain(&events).unwrap_err();
        assert_eq!(brk.index, 4);
        assert_eq!(brk.sequence, 5);
        assert_eq!(brk.kind, ChainBreakKind::HashMismatch);
    }

    #[test]
    fn a_changed_actor_is_detected() {
        let mut events = history(3);
        events[1].actor = "user:mallory".parse().unwrap();
        assert_eq!(verify_chain(&events).unwrap_err().kind, ChainBreakKind::HashMismatch);
    }

    #[test]
    fn a_removed_event_is_detected() {
        let mut events = history(10);
        events.remove(6);
        let brk = verify_chain(&events).unwrap_err();
        assert_eq!(brk.index, 6);
        assert_eq!(brk.kind, ChainBreakKind::SequenceGap { expected: 7, found: 8 });
    }

    #[test]
    fn a_removed_and_renumbered_event_is_detected() {
        let mut events = history(5);
        events.remove(2);
        for (i, e) in events.iter_mut().enumerate() {
            e.sequence = i as u64 + 1;
        }
        let brk = verify_chain(&events).unwrap_err();
        assert_eq!(brk.index, 2);
        assert_eq!(brk.kind, ChainBreakKind::PrevHashMismatch);
    }

    #[test]
    fn a_removed_first_event_is_detected() {
        let mut events = history(3);
        events.remove(0);
        assert_eq!(verify_chain(&events).unwrap_err().kind, ChainBreakKind::SequenceGap { expected: 1, found: 2 });
    }

    #[test]
    fn a_tail_verifies_from_its_anchor() {
        let events = history(6);
        assert_eq!(verify_chain_from(3, events[2].hash, &events[3..]), Ok(()));
        assert!(verify_chain_from(3, EventHash::GENESIS, &events[3..]).is_err());
    }

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"é\n"}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":"é\n","y":[1,2]},"b":1}"#).unwrap();
        let (mut ca, mut cb) = (Vec::new(), Vec::new());
        canonical_json(&a, &mut ca);
        canonical_json(&b, &mut cb);
        assert_eq!(ca, cb);
        assert_eq!(String::from_utf8(ca).unwrap(), r#"{"a":{"x":"é\n","y":[1,2]},"b":1}"#);
    }

    fn stored(e: &EventEnvelope) -> StoredEvent {
        StoredEvent { envelope: e.clone(), payload_json: canonical_text(&e.payload) }
    }

    #[test]
    fn a_stored_chain_verifies_on_the_stored_text() {
        let events: Vec<StoredEvent> = history(5).iter().map(stored).collect();
        assert_eq!(verify_chain(&events), Ok(()));
        // The text is what counts: a stored payload that differs from what was hashed is caught
        // even when it parses to the same value (here: a trailing zero).
        let mut events = events;
        let e = &mut events[2];
        let value: serde_json::Value = serde_json::from_str(&e.payload_json).unwrap();
        e.payload_json = e.payload_json.replacen("1", "1.0", 1);
        assert_ne!(e.payload_json, canonical_text(&value));
        assert_eq!(verify_chain(&events).unwrap_err().kind, ChainBreakKind::HashMismatch);
    }

    #[test]
    fn doubles_that_a_rounding_parser_misreads_verify() {
        // Without exact float parsing this value came back as ...978e-163 and its event then
        // failed verification. The stored text is hashed, and the value reads back exactly.
        let mut events = history(1);
        events[0].payload = serde_json::json!({"x": 2.7715077941825975e-163, "y": 5e-324, "z": 1.7976931348623157e308});
        events[0].hash = compute_hash(&events[0]);
        let link = stored(&events[0]);
        assert_eq!(verify_chain(std::slice::from_ref(&link)), Ok(()));
        let back: serde_json::Value = serde_json::from_str(&link.payload_json).unwrap();
        assert_eq!(back, events[0].payload);
        assert_eq!(back["x"].as_f64().unwrap().to_bits(), 2.7715077941825975e-163f64.to_bits());
        assert_eq!(canonical_text(&back), link.payload_json);
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = history(1)[0].hash;
        assert_eq!(EventHash::from_hex(&h.to_hex()).unwrap(), h);
        assert!(EventHash::from_hex("zz").is_err());
        assert!(EventHash::from_slice(&[0; 31]).is_err());
    }
}
