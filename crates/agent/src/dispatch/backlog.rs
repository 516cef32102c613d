//! What this process knows of each tenant's queue: whether the last pass found every queued task
//! that a free agent connected here could take (it asked for more than it got). Only then may a
//! submission go straight to an agent, submitted and assigned in one write: nothing it could
//! overtake is waiting.
//!
//! Anything that may queue such a task moves the tenant's generation on, and a pass's finding
//! counts only for the generation it started reading at: a submission that waits, a requeue, a
//! submission or requeue through another replica (the feed), an agent that changed or
//! connected, an assignment that failed. A freed slot counts too when the pass saw a full agent
//! (a task may wait for that agent alone).

use std::collections::HashMap;
use std::sync::Mutex;

use cim_core::TenantId;

#[derive(Debug, Clone, Copy)]
struct Known {
    generation: u64,
    /// Whether a pass found the queue drained at this generation, and saw a full agent then.
    drained: Option<bool>,
}

#[derive(Debug, Default)]
struct Inner {
    tenants: HashMap<TenantId, Known>,
    /// Generations come from one counter, so a number is never reused, even for a tenant
    /// forgotten and seen again.
    next: u64,
}

impl Inner {
    fn renew(&mut self, tenant: TenantId) -> u64 {
        self.next += 1;
        self.tenants.insert(tenant, Known { generation: self.next, drained: None });
        self.next
    }
}

#[derive(Debug, Default)]
pub(super) struct Backlogs(Mutex<Inner>);

impl Backlogs {
    /// Past this many tenants the map starts over: its only cost is a pass before the next
    /// submission goes straight to an agent.
    const MAX: usize = 100_000;

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The generation a pass reads `tenant`'s queue at (taken before the read).
    pub fn generation(&self, tenant: TenantId) -> u64 {
        let mut inner = self.inner();
        if let Some(known) = inner.tenants.get(&tenant) {
            return known.generation;
        }
        if inner.tenants.len() >= Self::MAX {
            inner.tenants.clear();
        }
        inner.renew(tenant)
    }

    /// A pass that started at `generation` found no more of `tenant`'s queue than it could plan;
    /// `saw_full`: some active agent of the tenant here had no free slot.
    pub fn drained(&self, tenant: TenantId, generation: u64, saw_full: bool) {
        if let Some(known) = self.inner().tenants.get_mut(&tenant)
            && known.generation == generation
        {
            known.drained = Some(saw_full);
        }
    }

    /// A task of `tenant` may be waiting that a pass has not seen. (A tenant not known here has
    /// no pass reading its queue, which takes a generation first, and nothing known drained.)
    pub fn changed(&self, tenant: TenantId) {
        let mut inner = self.inner();
        if inner.tenants.contains_key(&tenant) {
            inner.renew(tenant);
        }
    }

    /// An agent of `tenant` has a slot free again: a task that only it covers may wait for it.
    pub fn slot_freed(&self, tenant: TenantId) {
        let mut inner = self.inner();
        if inner.tenants.get(&tenant).is_some_and(|k| k.drained == Some(true)) {
            inner.renew(tenant);
        }
    }

    /// Whether a submission may skip the queue.
    pub fn is_drained(&self, tenant: TenantId) -> bool {
        self.inner().tenants.get(&tenant).is_some_and(|k| k.drained.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_counts_only_for_the_generation_it_was_read_at() {
        let backlogs = Backlogs::default();
        let tenant = TenantId::new();
        assert!(!backlogs.is_drained(tenant), "nothing known before a pass");
        let at = backlogs.generation(tenant);
        backlogs.drained(tenant, at, false);
        assert!(backlogs.is_drained(tenant));

        // A task queued while a pass reads: that pass's finding is stale.
        let at = backlogs.generation(tenant);
        backlogs.changed(tenant);
        backlogs.drained(tenant, at, false);
        assert!(!backlogs.is_drained(tenant));
        backlogs.drained(tenant, backlogs.generation(tenant), false);
        assert!(backlogs.is_drained(tenant));
        assert!(!backlogs.is_drained(TenantId::new()), "per tenant");
    }

    #[test]
    fn a_freed_slot_matters_only_when_the_pass_saw_a_full_agent() {
        let backlogs = Backlogs::default();
        let tenant = TenantId::new();
        backlogs.drained(tenant, backlogs.generation(tenant), false);
        backlogs.slot_freed(tenant);
        assert!(backlogs.is_drained(tenant), "every agent had room: nothing waited for this one");
        backlogs.drained(tenant, backlogs.generation(tenant), true);
        backlogs.slot_freed(tenant);
        assert!(!backlogs.is_drained(tenant), "a task may have waited for the full agent");
    }
}
