//! The per-aggregate queue and the heads it remembers.
//!
//! Commands on one aggregate queue in this process ([`Heads::lock`]) instead of racing each
//! other to the store: they would queue on the row lock or lose the optimistic check anyway,
//! and queueing here means each one finds a fresh head. The slot also remembers the head this
//! process last wrote or read under a lock, which is what the one-statement path
//! ([`crate::FastPath`]) builds on without reading first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cim_core::{AggregateId, TenantId};
use cim_eventstore::HeadToken;
use tokio::sync::OwnedMutexGuard;

/// An aggregate's head as this process last wrote it or read it under a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownHead {
    pub tenant: TenantId,
    pub head: HeadToken,
    /// Whether the aggregate still takes one-statement writes (graph: not archived).
    pub open: bool,
}

type Slot = Arc<tokio::sync::Mutex<Option<KnownHead>>>;

/// Per-aggregate queues and known heads, bounded.
#[derive(Debug)]
pub struct Heads {
    slots: Mutex<HashMap<AggregateId, Slot>>,
    capacity: usize,
}

impl Heads {
    pub fn new(capacity: usize) -> Self {
        Self { slots: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// Waits for this process's other commands on `id`, then gives its known head.
    pub async fn lock(&self, id: AggregateId) -> OwnedMutexGuard<Option<KnownHead>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slots.len() >= self.capacity && !slots.contains_key(&id) {
                // Forget aggregates nobody is writing right now; they cost one full read later.
                slots.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            slots.entry(id).or_default().clone()
        };
        slot.lock_owned().await
    }
}
