//! The versions this instance's writes have already invalidated in Redis, so that the shared
//! invalidator need not invalidate them again when their events arrive.
//!
//! A write through the gateway bumps its aggregate's shared generation after the command
//! committed and before the answer leaves (read-your-writes on every replica). When the answer
//! names the version the write left the aggregate at ([`Written`]), every event of that
//! aggregate up to that version committed before the bump: a response computed before any of
//! them can no longer be served. The event's own bump would change nothing, and costs a Redis
//! write per command; it is skipped. An event this instance does not know to be covered (a change
//! behind the gateway's back, another replica's write, a later version) is bumped as before.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// In a write's response extensions (set by the domain's handler): the version its command left
/// the path's aggregate at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
}

/// Per aggregate, the highest version whose write this instance has bumped in Redis.
#[derive(Debug, Default)]
pub struct WrittenVersions {
    versions: Mutex<HashMap<String, u64>>,
}

/// Forgetting only costs bumps: past this many aggregates the table starts again.
const MAX_AGGREGATES: usize = 100_000;

impl WrittenVersions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.versions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After the bump of a write that left `aggregate` at `version` went through.
    pub(super) fn record(&self, aggregate: &str, version: u64) {
        let mut versions = self.lock();
        if let Some(known) = versions.get_mut(aggregate) {
            *known = (*known).max(version);
            return;
        }
        if versions.len() >= MAX_AGGREGATES {
            versions.clear();
        }
        versions.insert(aggregate.to_owned(), version);
    }

    /// Whether the event at `sequence` of `aggregate` committed before a bump this instance
    /// made. The event of the recorded version itself is the last one expected: the entry goes
    /// with it (a redelivery is bumped again, which changes nothing).
    pub(super) fn covers(&self, aggregate: &str, sequence: u64) -> bool {
        let mut versions = self.lock();
        match versions.get(aggregate).copied() {
            Some(version) if sequence == version => {
                versions.remove(aggregate);
                true
            }
            Some(version) => sequence < version,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_covered_up_to_the_highest_version_written_and_no_further() {
        let written = WrittenVersions::default();
        assert!(!written.covers("a", 1), "nothing written");
        written.record("a", 3);
        written.record("a", 2);
        assert!(written.covers("a", 1));
        assert!(written.covers("a", 2));
        assert!(!written.covers("a", 4), "a later change, made elsewhere");
        assert!(!written.covers("b", 1), "another aggregate");
        assert!(written.covers("a", 3), "the write's own last event");
        assert!(!written.covers("a", 3), "forgotten after its last event: a redelivery is bumped");
    }
}
