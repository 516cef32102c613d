//! Task ids the dispatcher's loop, its writes and its feed share: the tasks being assigned, and
//! those submitted here that the feed has not brought back yet.

use std::collections::HashSet;
use std::sync::Mutex;

use cim_core::AggregateId;

/// A set of task ids shared by the loop, its writes and the feed.
#[derive(Debug, Default)]
pub(super) struct IdSet(Mutex<HashSet<AggregateId>>);

impl IdSet {
    /// Past this many ids (submissions while the feed was down; tasks being assigned are at
    /// most the free slots) the set starts over: its only cost is an extra pass.
    const MAX: usize = 100_000;

    fn ids(&self) -> std::sync::MutexGuard<'_, HashSet<AggregateId>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn insert(&self, id: AggregateId) {
        let mut ids = self.ids();
        if ids.len() >= Self::MAX {
            ids.clear();
        }
        ids.insert(id);
    }

    /// Whether it was there.
    pub fn remove(&self, id: AggregateId) -> bool {
        self.ids().remove(&id)
    }

    pub fn snapshot(&self) -> Vec<AggregateId> {
        self.ids().iter().copied().collect()
    }
}
