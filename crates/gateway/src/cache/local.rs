//! The first level, in this instance's memory: one per cached domain.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// Responses validated by per-aggregate generations that this instance bumps itself, from its
/// own ordered subscription to the domain's events and its own writes. Filled only with
/// responses computed here (never from Redis, which may lag this instance's subscription), so an
/// entry is never older than an event this instance has seen. Each entry also keeps the shared
/// (Redis) generation it was computed under: another gateway's write bumps that one before its
/// response leaves, while this instance hears of it only when the event arrives, so a hit is
/// served only after a check that the shared generation has not moved (one small `HGET`; the
/// body stays here).
#[derive(Debug, Default)]
pub struct Local {
    inner: Mutex<LocalInner>,
    /// Whether the subscription is bound: events missed while it is not would leave entries
    /// stale, so they are neither read nor written then.
    live: AtomicBool,
}

#[derive(Debug, Default)]
struct LocalInner {
    gens: HashMap<String, u64>,
    /// (local generation, shared generation, body)
    entries: HashMap<(String, String), (u64, i64, Bytes)>,
}

const LOCAL_ENTRIES: usize = 10_000;
const LOCAL_AGGREGATES: usize = 100_000;

impl Local {
    fn lock(&self) -> MutexGuard<'_, LocalInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Bound (`true`) or lost (`false`). Events may have been missed while the subscription was
    /// down: what was cached before is dropped when it is back.
    pub(super) fn set_live(&self, bound: bool) {
        if bound {
            self.lock().entries.clear();
        }
        self.live.store(bound, Ordering::Release);
    }

    pub(super) fn generation(&self, aggregate: &str) -> u64 {
        self.lock().gens.get(aggregate).copied().unwrap_or(0)
    }

    /// The body and the shared generation it was computed under, if no event or write seen here
    /// made it stale.
    pub(super) fn get(&self, aggregate: &str, field: &str) -> Option<(i64, Bytes)> {
        let inner = self.lock();
        let current = inner.gens.get(aggregate).copied().unwrap_or(0);
        let (generation, shared, body) = inner.entries.get(&(aggregate.to_owned(), field.to_owned()))?;
        (*generation == current).then(|| (*shared, body.clone()))
    }

    /// Keeps `body` unless `aggregate` moved past `generation` while it was computed.
    pub(super) fn put(&self, aggregate: &str, field: &str, generation: u64, shared: i64, body: Bytes) {
        let mut inner = self.lock();
        if inner.gens.get(aggregate).copied().unwrap_or(0) != generation {
            return;
        }
        if inner.entries.len() >= LOCAL_ENTRIES {
            inner.entries.clear();
        }
        inner.entries.insert((aggregate.to_owned(), field.to_owned()), (generation, shared, body));
    }

    /// Makes this instance's cached responses of `aggregate` stale.
    pub fn bump(&self, aggregate: &str) {
        let mut inner = self.lock();
        if inner.gens.len() >= LOCAL_AGGREGATES {
            // Forgetting generations would revive old entries: forget those too.
            inner.gens.clear();
            inner.entries.clear();
        }
        *inner.gens.entry(aggregate.to_owned()).or_default() += 1;
    }
}
