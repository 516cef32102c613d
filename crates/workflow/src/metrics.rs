//! The workflow service's own metric names (the runtime's RED, event-store and command metrics
//! come from the kit).

/// Instances the engine looked at, by outcome: `advanced` (it wrote events), `idle` (nothing was
/// due yet), `moved` (another writer came first; the instance is looked at again), `error`.
pub const ADVANCES_TOTAL: &str = "cim_workflow_advances_total";
/// How long after its time each timer fired.
pub const TIMER_LATENESS: &str = "cim_workflow_timer_lateness_seconds";

/// Described once at start.
pub fn describe() {
    metrics::describe_counter!(ADVANCES_TOTAL, "workflow instances the engine looked at, by outcome");
    metrics::describe_histogram!(TIMER_LATENESS, metrics::Unit::Seconds, "how long after its time a timer fired");
}
