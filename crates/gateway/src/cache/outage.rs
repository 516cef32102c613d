//! After Redis was away. What Redis kept may be older than writes acknowledged meanwhile: a
//! write's bump that could not reach it is lost, yet Redis comes back with its generations and
//! bodies (a dropped connection, or a restart from its append-only file). So once this
//! instance saw Redis unreachable ([`cim_runtime::redis::Pool::outages`]) or a bump fail, it
//! serves nothing cached until every entry has been bumped once since, by a sweep it starts
//! itself. The other gateways saw the same outage (their rate limiter flushes every 100 ms), so
//! they sweep too; only a blip shorter than that, seen by one instance's failed bump alone,
//! leaves the others serving until that instance's sweep, which it retries at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cim_runtime::redis::Pool;

use super::Bumps;

/// How soon a sweep that could not reach Redis is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// The outages a complete sweep covers, and whether one is running.
#[derive(Debug, Default)]
pub struct Outages {
    /// The pool's outage count when the last successful sweep started.
    swept: AtomicU64,
    sweeping: AtomicBool,
}

impl Outages {
    /// Whether what Redis holds may be served: no outage since the last sweep. When there was
    /// one, a sweep is started (one at a time) and the answer is no.
    pub fn trusted(self: &Arc<Self>, redis: &Pool, bumps: &Bumps) -> bool {
        if self.swept.load(Ordering::Acquire) >= redis.outages() {
            return true;
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            let (outages, redis, bumps) = (self.clone(), redis.clone(), bumps.clone());
            tokio::spawn(async move { outages.sweep(&redis, &bumps).await });
        }
        false
    }

    /// A write's bump that did not reach Redis: Redis may still hold what the write changed, so
    /// it counts as an outage and the sweep starts now rather than at the next read.
    pub fn bump_lost(self: &Arc<Self>, redis: &Pool, bumps: &Bumps) {
        redis.note_outage();
        self.trusted(redis, bumps);
    }

    async fn sweep(&self, redis: &Pool, bumps: &Bumps) {
        loop {
            let covered = redis.outages();
            match bumps.bump_every_entry().await {
                Ok(bumped) => {
                    self.swept.fetch_max(covered, Ordering::AcqRel);
                    tracing::info!(bumped, "cache: every entry bumped after redis was unreachable");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cache sweep not done: redis unavailable");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        self.sweeping.store(false, Ordering::Release);
    }
}
