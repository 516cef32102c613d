//! The workflow service's own metric names (the runtime's RED, event-store and command metrics
//! come from the kit).

/// Instances the engine looked at, by outcome: `advanced` (it wrote events), `idle` (nothing was
/// due yet), `moved` (another writer came first; the instance is looked at again), `error`.
pub const ADVANCES_TOTAL: &str = "cim_workflow_advances_total";
/// How long after its time each timer fired.
pub const TIMER_LATENESS: &str = "cim_workflow_timer_lateness_seconds";

/// How long each step attempt ran, by step kind and outcome (`completed`, `failed`, `cancelled`
/// with its run): from the attempt's start as the engine decided it to the commit of its end. A
/// step the service runs itself (automated, decision, parallel) ends in the write that starts
/// it; timers, people and other services make the long ones (buckets up to a day,
/// `cim_runtime::metrics`).
pub const STEP_DURATION: &str = "cim_workflow_step_duration_seconds";
/// Retries scheduled for failed step attempts, by step kind.
pub const RETRIES_TOTAL: &str = "cim_workflow_retries_total";

/// Steps' calls of other services (and child starts), by kind and outcome: `sent`, `refused`
/// (the attempt fails), `retry` (unreachable or busy: sent again later).
pub const OUTREACH_TOTAL: &str = "cim_workflow_outreach_total";
/// Events handed to waiting steps, by outcome: `taken`, `already` (a redelivery), `refused`.
pub const DELIVERIES_TOTAL: &str = "cim_workflow_deliveries_total";
/// Instances started by triggers, by outcome (as deliveries).
pub const TRIGGERED_TOTAL: &str = "cim_workflow_triggered_total";
/// Tasks and children cancelled because their step ended another way, by kind and outcome.
pub const WITHDRAWALS_TOTAL: &str = "cim_workflow_withdrawals_total";

/// Unfinished instances by status (`draft`, `running`, `paused`), counted every
/// [`GAUGES_EVERY`] by each replica's engine (every replica reports the same totals: take the
/// max across replicas, not the sum).
pub const INSTANCES: &str = "cim_workflow_instances";
/// Running instances waiting on time (a timer, a retry's backoff or a timeout), counted likewise.
pub const WAITING_ON_TIME: &str = "cim_workflow_instances_waiting_on_time";
pub const GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Described once at start.
pub fn describe() {
    metrics::describe_counter!(ADVANCES_TOTAL, "workflow instances the engine looked at, by outcome");
    metrics::describe_histogram!(TIMER_LATENESS, metrics::Unit::Seconds, "how long after its time a timer fired");
    metrics::describe_histogram!(
        STEP_DURATION,
        metrics::Unit::Seconds,
        "how long workflow step attempts ran until they ended, by kind and outcome"
    );
    metrics::describe_counter!(RETRIES_TOTAL, "retries scheduled for failed workflow step attempts, by kind");
    metrics::describe_gauge!(INSTANCES, "unfinished workflow instances by status");
    metrics::describe_gauge!(WAITING_ON_TIME, "running workflow instances waiting for a timer, retry or timeout");
    metrics::describe_counter!(OUTREACH_TOTAL, "calls of other services and child starts by workflow steps");
    metrics::describe_counter!(DELIVERIES_TOTAL, "events handed to waiting workflow steps, by outcome");
    metrics::describe_counter!(TRIGGERED_TOTAL, "workflow instances started by triggers, by outcome");
    metrics::describe_counter!(
        WITHDRAWALS_TOTAL,
        "tasks and child workflows cancelled when their step ended another way"
    );
}
