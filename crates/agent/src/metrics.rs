//! Metric names of the agent service (commands are counted by the kit's
//! `cim_commands_total{service="agent"}`, with a `command` label per agent and task command).

/// Routing decisions, by outcome: `routed` (an agent can take the task now) or `no_agent`.
pub const ROUTE_DECISIONS_TOTAL: &str = "cim_agent_route_decisions_total";
/// Submissions and routes refused because no agent of the tenant declares a required
/// capability: a typo in a submitter, or a pool of agents that is not deployed.
pub const UNKNOWN_CAPABILITIES_TOTAL: &str = "cim_agent_unknown_capabilities_total";

pub fn describe() {
    metrics::describe_counter!(ROUTE_DECISIONS_TOTAL, "Capability routing decisions, by outcome (routed, no_agent)");
    metrics::describe_counter!(
        UNKNOWN_CAPABILITIES_TOTAL,
        "Tasks refused because no agent of the tenant declares a required capability"
    );
    // Exported at zero from the start, so dashboards and alerts see the series before the first
    // decision.
    for outcome in ["routed", "no_agent"] {
        metrics::counter!(ROUTE_DECISIONS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(UNKNOWN_CAPABILITIES_TOTAL).increment(0);
}
