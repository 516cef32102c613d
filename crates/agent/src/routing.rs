//! Capability routing: which agent a task goes to. A pure function over a snapshot of the
//! registry, so the dispatcher, the `RouteTask` dry run and the tests all decide alike.
//!
//! Among active agents with a free slot whose capabilities cover the task's requirements:
//! 1. the least over-provisioned (fewest capabilities beyond those required), so a specialist
//!    takes the work it is for and a generalist stays free for work only it can do;
//! 2. then the least loaded (running tasks relative to the agent's limit);
//! 3. then the lowest agent id, so equal candidates always resolve the same way (ids are
//!    UUIDv7: the longest-deployed agent).

use std::cmp::Ordering;

use cim_core::AggregateId;

use crate::agent::AgentState;
use crate::names::Names;

/// One agent as routing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub agent: AggregateId,
    pub state: AgentState,
    pub capabilities: Names,
    pub running: u32,
    pub limit: u32,
}

impl Candidate {
    fn eligible(&self, required: &Names) -> bool {
        self.state == AgentState::Active && self.running < self.limit && required.is_subset(&self.capabilities)
    }

    /// Capabilities beyond the required ones (the required are a subset once eligible).
    fn extra(&self, required: &Names) -> usize {
        self.capabilities.len() - required.len()
    }

    /// Compares `running / limit` exactly, without floats: a/b < c/d ⇔ a·d < c·b (limits > 0).
    fn load_cmp(&self, other: &Candidate) -> Ordering {
        (u64::from(self.running) * u64::from(other.limit)).cmp(&(u64::from(other.running) * u64::from(self.limit)))
    }
}

/// The agent `required` goes to now, if any can take it.
pub fn route<'a>(required: &Names, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
    candidates.iter().filter(|c| c.eligible(required)).min_by(|a, b| {
        a.extra(required).cmp(&b.extra(required)).then_with(|| a.load_cmp(b)).then_with(|| a.agent.cmp(&b.agent))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent as (capabilities, running, limit).
    type Spec<'a> = (&'a [&'a str], u32, u32);

    fn names(list: &[&str]) -> Names {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    /// Agents with ascending ids (created in order), all active unless changed.
    fn agents(specs: &[Spec<'_>]) -> Vec<Candidate> {
        specs
            .iter()
            .map(|(caps, running, limit)| Candidate {
                agent: AggregateId::new(),
                state: AgentState::Active,
                capabilities: names(caps),
                running: *running,
                limit: *limit,
            })
            .collect()
    }

    fn chosen(required: &[&str], candidates: &[Candidate]) -> Option<usize> {
        route(&names(required), candidates).map(|c| candidates.iter().position(|x| x.agent == c.agent).unwrap())
    }

    #[test]
    fn the_routing_table() {
        // (required, agents as (capabilities, running, limit), the index routing picks)
        let cases: &[(&[&str], &[Spec<'_>], Option<usize>)] = &[
            // Coverage: only agents holding every required capability.
            (&["ocr"], &[(&["translate"], 0, 1), (&["ocr"], 0, 1)], Some(1)),
            (&["ocr", "translate"], &[(&["ocr"], 0, 1), (&["translate"], 0, 1)], None),
            // The least over-provisioned wins, even when it is busier.
            (&["ocr"], &[(&["ocr", "translate", "summarize"], 0, 4), (&["ocr", "translate"], 3, 4)], Some(1)),
            // Equally provisioned: the least loaded, relative to its limit (1/4 < 1/2).
            (&["ocr"], &[(&["ocr"], 1, 2), (&["ocr"], 1, 4)], Some(1)),
            (&["ocr"], &[(&["ocr"], 2, 8), (&["ocr"], 1, 2)], Some(0)),
            // A full agent has no slot, however well it fits.
            (&["ocr"], &[(&["ocr"], 1, 1), (&["ocr", "translate"], 0, 1)], Some(1)),
            (&["ocr"], &[(&["ocr"], 2, 2)], None),
            // Ties go to the lowest id.
            (&["ocr"], &[(&["ocr"], 1, 2), (&["ocr"], 2, 4)], Some(0)),
            // No requirement: any agent, the one with fewest capabilities first.
            (&[], &[(&["ocr", "translate"], 0, 1), (&["ocr"], 0, 1)], Some(1)),
            (&["ocr"], &[], None),
        ];
        for (i, (required, specs, want)) in cases.iter().enumerate() {
            assert_eq!(chosen(required, &agents(specs)), *want, "case {i}: {required:?} over {specs:?}");
        }
    }

    #[test]
    fn only_active_agents_are_routed_to() {
        for state in [AgentState::Deployed, AgentState::Suspended, AgentState::Offline, AgentState::Decommissioned] {
            let mut all = agents(&[(&["ocr"], 0, 1), (&["ocr", "translate"], 0, 1)]);
            all[0].state = state;
            assert_eq!(chosen(&["ocr"], &all), Some(1), "{state:?}");
        }
    }

    #[test]
    fn the_choice_does_not_depend_on_the_order_agents_are_listed_in() {
        let all = agents(&[(&["ocr"], 1, 2), (&["ocr"], 2, 4), (&["ocr"], 3, 4), (&["ocr", "x"], 0, 4)]);
        let first = route(&names(&["ocr"]), &all).unwrap().agent;
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(route(&names(&["ocr"]), &reversed).unwrap().agent, first);
        assert_eq!(first, all[0].agent);
    }
}
