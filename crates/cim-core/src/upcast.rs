//! Old event versions are converted on read; stored events are never rewritten (docs/design.md#upcasting).
//! Each registered step turns `(event_type, v)` into `v + 1`; reading applies steps until the
//! current version. The hash chain is verified on the stored form, before upcasting.

use std::collections::HashMap;

use crate::envelope::EventEnvelope;

pub type UpcastStep = fn(serde_json::Value) -> Result<serde_json::Value, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error("event {event_type} v{from}: no upcaster to v{}", from + 1)]
    MissingStep { event_type: String, from: u32 },
    #[error("event {event_type} v{from} -> v{}: {reason}", from + 1)]
    Failed { event_type: String, from: u32, reason: String },
    #[error("event {event_type}: stored v{stored} is newer than this build's v{current}; upgrade the service")]
    FromTheFuture { event_type: String, stored: u32, current: u32 },
}

/// The upcasters of one domain. Event types not registered are at version 1.
#[derive(Debug, Default, Clone)]
pub struct Upcasters {
    current: HashMap<String, u32>,
    steps: HashMap<(String, u32), UpcastStep>,
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from `from` to `from + 1`; the current version becomes at least
    /// `from + 1`.
    pub fn register(mut self, event_type: &str, from: u32, step: UpcastStep) -> Self {
        self.steps.insert((event_type.to_owned(), from), step);
        let current = self.current.entry(event_type.to_owned()).or_insert(1);
        *current = (*current).max(from + 1);
        self
    }

    pub fn current_version(&self, event_type: &str) -> u32 {
        self.current.get(event_type).copied().unwrap_or(1)
    }

    /// Brings a stored event to the current version of its type.
    pub fn upcast(&self, mut event: EventEnvelope) -> Result<EventEnvelope, UpcastError> {
        let event_type = event.event_type.as_str().to_owned();
        let current = self.current_version(&event_type);
        if event.schema_version > current {
            return Err(UpcastError::FromTheFuture { event_type, stored: event.schema_version, current });
        }
        while event.schema_version < current {
            let from = event.schema_version;
            let step = self
                .steps
                .get(&(event_type.clone(), from))
                .ok_or_else(|| UpcastError::MissingStep { event_type: event_type.clone(), from })?;
            event.payload = step(event.payload).map_err(|reason| UpcastError::Failed {
                event_type: event_type.clone(),
                from,
                reason,
            })?;
            event.schema_version = from + 1;
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{EventHash, verify_chain};
    use crate::envelope::tests::{context, new_event};
    use chrono::Utc;
    use serde_json::json;

    fn v1_to_v2(mut p: serde_json::Value) -> Result<serde_json::Value, String> {
        let id = p.get("node_id").cloned().ok_or("no node_id")?;
        p["id"] = id;
        p.as_object_mut().ok_or("not an object")?.remove("node_id");
        Ok(p)
    }

    fn v2_to_v3(mut p: serde_json::Value) -> Result<serde_json::Value, String> {
        p["labels"] = json!([]);
        Ok(p)
    }

    #[test]
    fn an_old_event_is_converted_step_by_step_and_its_chain_still_verifies() {
        let upcasters = Upcasters::new().register("node_added", 1, v1_to_v2).register("node_added", 2, v2_to_v3);
        assert_eq!(upcasters.current_version("node_added"), 3);
        let stored = EventEnvelope::seal(&context(), new_event(7), 1, EventHash::GENESIS, Utc::now());
        let read = upcasters.upcast(stored.clone()).unwrap();
        assert_eq!(read.schema_version, 3);
        assert_eq!(read.payload["id"], "n7");
        assert_eq!(read.payload["labels"], json!([]));
        assert!(read.payload.get("node_id").is_none());
        // The stored form is what the chain covers.
        assert_eq!(verify_chain(&[stored]), Ok(()));
    }

    #[test]
    fn current_events_and_unknown_types_pass_through() {
        let upcasters = Upcasters::new();
        let e = EventEnvelope::seal(&context(), new_event(1), 1, EventHash::GENESIS, Utc::now());
        assert_eq!(upcasters.upcast(e.clone()).unwrap(), e);
    }

    #[test]
    fn gaps_failures_and_future_versions_are_errors() {
        let gap = Upcasters::new().register("node_added", 2, v2_to_v3);
        let e = EventEnvelope::seal(&context(), new_event(1), 1, EventHash::GENESIS, Utc::now());
        assert_eq!(
            gap.upcast(e.clone()).unwrap_err(),
            UpcastError::MissingStep { event_type: "node_added".into(), from: 1 }
        );
        let failing = Upcasters::new().register("node_added", 1, |_| Err("boom".into()));
        assert!(failing.upcast(e.clone()).unwrap_err().to_string().contains("boom"));
        let mut future = e;
        future.schema_version = 9;
        assert!(matches!(Upcasters::new().upcast(future), Err(UpcastError::FromTheFuture { .. })));
    }
}
