//! Assignment at submission: when nothing waits in the tenant's queue that an agent here could
//! take ([`super::backlog`]) and a free connected agent covers the task, the submission is
//! written together with its assignment (`TaskSubmitted` and `TaskAssigned` in one transaction,
//! [`crate::task::TaskCommand::SubmitAndAssign`]), and the worker is told after the commit. That
//! saves the task a pass and a second write: the submitter's commit is the dispatch.
//!
//! Routing is the dispatcher's own ([`crate::routing`]) over the agents connected here, on the
//! state and capabilities the last pass read of each (forgotten when an event of the agent is
//! written here or seen on the feed); the slot is held before the write, as a pass holds it.

use chrono::{DateTime, Utc};
use cim_core::{AggregateId, TenantId};

use super::Dispatcher;
use super::queue::QueuedTask;
use crate::metrics::AT_SUBMIT;
use crate::routing::{self, Candidate};
use crate::task::Submission;

/// A slot held for a task being submitted.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub agent: AggregateId,
    pub lease_until: DateTime<Utc>,
}

impl Dispatcher {
    /// An agent connected here to assign `task` to as it is submitted at `now`, its slot held;
    /// `None`: the task goes to the queue.
    pub fn claim(
        &self,
        tenant: TenantId,
        task: AggregateId,
        submission: &Submission,
        now: DateTime<Utc>,
    ) -> Option<Claim> {
        if !self.backlogs.is_drained(tenant) {
            return None;
        }
        let sessions: Vec<_> = self.all_sessions().into_iter().filter(|s| s.tenant == tenant).collect();
        let mut candidates: Vec<Candidate> = sessions
            .iter()
            .filter_map(|s| {
                let profile = s.profile()?;
                Some(Candidate {
                    agent: s.agent,
                    state: profile.state,
                    capabilities: profile.capabilities,
                    running: s.held_count(),
                    limit: s.capacity(),
                })
            })
            .collect();
        let lease_until = now + self.options.lease;
        // The best agent whose slot is still free when held (another submission or a pass may
        // take it meanwhile).
        loop {
            let agent = routing::route(&submission.required_capabilities, &candidates)?.agent;
            let session = sessions.iter().find(|s| s.agent == agent)?;
            if session.try_hold(task, lease_until) {
                return Some(Claim { agent, lease_until });
            }
            candidates.retain(|c| c.agent != agent);
        }
    }

    /// After the submission's write: the worker is told of a committed assignment; a claim whose
    /// write failed frees its slot; a task that went to the queue wakes the loop.
    pub fn after_submit(
        &self,
        tenant: TenantId,
        task: AggregateId,
        submission: &Submission,
        now: DateTime<Utc>,
        claim: Option<Claim>,
        committed: bool,
    ) {
        match (claim, committed) {
            (Some(claim), true) => {
                // The feed's copy of the submission changes nothing either.
                self.submitted_here.insert(task);
                let queued = QueuedTask {
                    id: task,
                    required_capabilities: submission.required_capabilities.clone(),
                    payload: submission.payload.clone(),
                    priority: submission.priority,
                    deadline: submission.deadline,
                    correlation: submission.correlation.clone(),
                    queued_since: now,
                    attempts: 0,
                };
                // Never queued, but not instant either: the submission's own write is the wait.
                let waited = (Utc::now() - now).to_std().unwrap_or_default();
                self.deliver(tenant, claim.agent, &queued, claim.lease_until, 1, AT_SUBMIT, waited);
            }
            (Some(claim), false) => {
                if let Some(session) = self.session(tenant, claim.agent)
                    && session.release(task)
                {
                    self.slot_freed(tenant);
                }
            }
            (None, true) => self.submitted(tenant, task),
            (None, false) => {}
        }
    }
}
