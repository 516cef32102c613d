//! Metric names of the agent service (commands are counted by the kit's
//! `cim_commands_total{service="agent"}`, with a `command` label per agent and task command).

use crate::agent::AgentState;

/// Routing decisions, by outcome: `routed` (an agent can take the task now) or `no_agent`.
pub const ROUTE_DECISIONS_TOTAL: &str = "cim_agent_route_decisions_total";
/// Submissions and routes refused because no agent of the tenant declares a required
/// capability: a typo in a submitter, or a pool of agents that is not deployed.
pub const UNKNOWN_CAPABILITIES_TOTAL: &str = "cim_agent_unknown_capabilities_total";
/// Worker streams open in this process.
pub const CONNECTED_WORKERS: &str = "cim_agent_connected_workers";
/// Tasks this process assigned, by `at`: `submit` (written with the submission, no pass) or
/// `dispatcher` (by a dispatch pass, from the queue).
pub const TASKS_ASSIGNED_TOTAL: &str = "cim_agent_tasks_assigned_total";
/// The values of `TASKS_ASSIGNED_TOTAL`'s `at` label.
pub const ASSIGNED_AT: &[&str] = &[AT_SUBMIT, AT_DISPATCHER];
pub const AT_SUBMIT: &str = "submit";
pub const AT_DISPATCHER: &str = "dispatcher";
/// How long a task waited (since its submission or requeue) until its assignment committed: a
/// task assigned with its submission waits for that write, a queued one for a dispatch pass.
pub const DISPATCH_LATENCY_SECONDS: &str = "cim_agent_dispatch_latency_seconds";
/// Leases that lapsed, their tasks put back in the queue (a worker died or went silent).
pub const LEASE_EXPIRIES_TOTAL: &str = "cim_agent_lease_expiries_total";
/// Tasks timed out by their deadline.
pub const TASKS_TIMED_OUT_TOTAL: &str = "cim_agent_tasks_timed_out_total";
/// Unfinished tasks of every tenant, by state (`queued`, `assigned`), counted by the sweeper.
pub const TASKS: &str = "cim_agent_tasks";
/// Agents of every tenant, by state, counted by the sweeper.
pub const AGENTS: &str = "cim_agent_agents";

pub fn describe() {
    metrics::describe_counter!(ROUTE_DECISIONS_TOTAL, "Capability routing decisions, by outcome (routed, no_agent)");
    metrics::describe_counter!(
        UNKNOWN_CAPABILITIES_TOTAL,
        "Tasks refused because no agent of the tenant declares a required capability"
    );
    metrics::describe_gauge!(CONNECTED_WORKERS, "Worker streams open in this process");
    metrics::describe_counter!(
        TASKS_ASSIGNED_TOTAL,
        "Tasks assigned by this process, by at (submit: with the submission; dispatcher: from the queue)"
    );
    metrics::describe_histogram!(
        DISPATCH_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Time from a task's submission or requeue until its assignment committed"
    );
    metrics::describe_counter!(LEASE_EXPIRIES_TOTAL, "Leases that lapsed; their tasks went back to the queue");
    metrics::describe_counter!(TASKS_TIMED_OUT_TOTAL, "Tasks timed out by their deadline");
    metrics::describe_gauge!(TASKS, "Unfinished tasks of every tenant, by state (queued, assigned)");
    metrics::describe_gauge!(AGENTS, "Agents of every tenant, by state");
    // Exported at zero from the start, so dashboards and alerts see the series before the first
    // decision.
    for outcome in ["routed", "no_agent"] {
        metrics::counter!(ROUTE_DECISIONS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(UNKNOWN_CAPABILITIES_TOTAL).increment(0);
    metrics::gauge!(CONNECTED_WORKERS).increment(0.0);
    for at in ASSIGNED_AT {
        metrics::counter!(TASKS_ASSIGNED_TOTAL, "at" => *at).increment(0);
    }
    for counter in [LEASE_EXPIRIES_TOTAL, TASKS_TIMED_OUT_TOTAL] {
        metrics::counter!(counter).increment(0);
    }
    for state in ["queued", "assigned"] {
        metrics::gauge!(TASKS, "state" => state).set(0.0);
    }
    for state in AgentState::NAMES {
        metrics::gauge!(AGENTS, "state" => *state).set(0.0);
    }
}
