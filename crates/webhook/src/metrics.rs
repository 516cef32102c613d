//! Metric names of the webhook service (commands are counted by the kit's
//! `cim_commands_total{service="webhook"}`; the intake consumers export `cim_consumer_*` with
//! `consumer="webhook-intake-<domain>"`).

/// Calls by what their answer meant: `delivered`, `retried`, `throttled` (429/503 with
/// Retry-After), `gone` (410: the subscription was disabled), `dead` (the last attempt failed).
pub const DELIVERIES_TOTAL: &str = "cim_webhook_deliveries_total";
/// How long a call took, answer or not.
pub const DELIVERY_SECONDS: &str = "cim_webhook_delivery_duration_seconds";
/// Delivery rows the intake created (one per matching subscription and event).
pub const INTAKE_TOTAL: &str = "cim_webhook_intake_total";
/// Deliveries waiting, per subscription.
pub const PENDING: &str = "cim_webhook_pending_deliveries";
/// How long the oldest waiting delivery of a subscription has waited.
pub const LAG_SECONDS: &str = "cim_webhook_lag_seconds";

pub const OUTCOMES: [&str; 5] = ["delivered", "retried", "throttled", "gone", "dead"];

pub fn describe() {
    metrics::describe_counter!(
        DELIVERIES_TOTAL,
        "Webhook calls, by outcome (delivered, retried, throttled, gone, dead)"
    );
    metrics::describe_histogram!(DELIVERY_SECONDS, metrics::Unit::Seconds, "Duration of one webhook call");
    metrics::describe_counter!(INTAKE_TOTAL, "Webhook deliveries queued (one per matching subscription and event)");
    metrics::describe_gauge!(PENDING, "Webhook deliveries waiting, per subscription");
    metrics::describe_gauge!(LAG_SECONDS, "Age of the oldest waiting webhook delivery, per subscription");
    // Exported at zero from the start, so dashboards and alerts see the series before the first call.
    for outcome in OUTCOMES {
        metrics::counter!(DELIVERIES_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(INTAKE_TOTAL).increment(0);
}
