//! The parts of a definition that reach outside the instance: a call of another service's
//! method (`integration`), an agent task (`agent_task`), waiting for an event (`wait_event`), a
//! child workflow (`workflow`), and the events that start a definition (`triggers`). Values
//! computed from the context are CEL expressions (a map literal for a request), checked here and
//! evaluated when the step starts, so the request a step sends is recorded in its history.

use cim_core::{AggregateId, Domain};
use serde::{Deserialize, Serialize};

use super::{SpecError, refuse};
use crate::calls;
use crate::expr::Expr;

const CAPABILITIES_MAX: usize = 32;
const PRIORITY_MAX: u32 = 1_000;

/// integration: one unary method of another CIM service, e.g. graph's `AddNode`. Commands get
/// an idempotency key derived from the instance, step and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// `graph`, `document`, `agent` or `workflow`.
    pub service: String,
    /// The RPC name as in the service's proto, e.g. `AddNode`.
    pub method: String,
    /// A CEL map literal over the context: the request as proto JSON.
    pub request: String,
}

/// agent_task: a task for the agent service's dispatcher; the step completes with its result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// A CEL map literal over the context: what the agent works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default)]
    pub priority: u32,
}

/// wait_event, and a definition's trigger: events of one domain whose subject matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// A NATS-style filter over `<domain>.evt.<aggregate_type>.<aggregate_id>.<event_type>`
    /// (`*` one token, `>` the rest), e.g. `document.evt.document.*.document_state_changed`.
    pub subject: String,
    /// wait_event only: a CEL expression over the context naming the one aggregate to watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<String>,
    /// A CEL bool over `event` (`event.event_type`, `event.aggregate_id`, `event.payload`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// workflow: a child instance of another definition's current version; the step completes when
/// the child does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSpec {
    pub definition_id: AggregateId,
    /// A CEL map literal over the context: the child's starting context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

impl CallSpec {
    pub(super) fn check(&self, at: &str) -> Result<(), SpecError> {
        calls::method(&self.service, &self.method).map_err(|e| refuse(format!("{at}.call"), e))?;
        Expr::parse(&self.request).map_err(|e| refuse(format!("{at}.call.request"), e))?;
        Ok(())
    }
}

impl TaskSpec {
    pub(super) fn check(&self, at: &str) -> Result<(), SpecError> {
        if self.capabilities.len() > CAPABILITIES_MAX {
            return Err(refuse(format!("{at}.task.capabilities"), format!("at most {CAPABILITIES_MAX}")));
        }
        if self.priority > PRIORITY_MAX {
            return Err(refuse(format!("{at}.task.priority"), format!("0 to {PRIORITY_MAX}")));
        }
        if let Some(source) = &self.payload {
            Expr::parse(source).map_err(|e| refuse(format!("{at}.task.payload"), e))?;
        }
        Ok(())
    }
}

/// The domains whose streams the workflow listener consumes: a wait or trigger names one of
/// these, or it would never hear its event.
pub const LISTENED: [Domain; 4] = [Domain::Graph, Domain::Document, Domain::Agent, Domain::Workflow];

impl EventFilter {
    /// `waits`: a step's filter (may name one aggregate); else a trigger's.
    pub(super) fn check(&self, at: &str, waits: bool) -> Result<(), SpecError> {
        let domain = subject_domain(&self.subject).map_err(|e| refuse(format!("{at}.subject"), e))?;
        if !LISTENED.contains(&domain) {
            return Err(refuse(
                format!("{at}.subject"),
                format!(
                    "{domain} events are not listened to: a filter names graph, document, agent or workflow events"
                ),
            ));
        }
        if !waits && domain == Domain::Workflow {
            return Err(refuse(
                format!("{at}.subject"),
                "a trigger watches graph, document or agent events (workflow events would start workflows \
                 that start workflows; use a `workflow` step for a child)",
            ));
        }
        if let Some(source) = &self.aggregate_id {
            if !waits {
                return Err(refuse(format!("{at}.aggregate_id"), "only for wait_event steps"));
            }
            Expr::parse(source).map_err(|e| refuse(format!("{at}.aggregate_id"), e))?;
        }
        if let Some(source) = &self.condition {
            Expr::parse(source).map_err(|e| refuse(format!("{at}.condition"), e))?;
        }
        Ok(())
    }

    pub fn domain(&self) -> Domain {
        subject_domain(&self.subject).unwrap_or(Domain::Workflow)
    }
}

impl ChildSpec {
    pub(super) fn check(&self, at: &str) -> Result<(), SpecError> {
        if let Some(source) = &self.context {
            Expr::parse(source).map_err(|e| refuse(format!("{at}.child.context"), e))?;
        }
        Ok(())
    }
}

/// The subject filter grammar is cim-core's (webhook subscriptions use it too).
pub use cim_core::subject::{filter_domain as subject_domain, filter_matches as subject_matches};
