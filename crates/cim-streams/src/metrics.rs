//! The metrics every durable consumer exports (`consumer` label), so one set of dashboards and
//! alerts covers them all.

pub const CONSUMER_HANDLED_TOTAL: &str = "cim_consumer_handled_total";
pub const CONSUMER_REDELIVERIES_TOTAL: &str = "cim_consumer_redeliveries_total";
pub const CONSUMER_DUPLICATES_TOTAL: &str = "cim_consumer_duplicates_total";
pub const CONSUMER_DEAD_LETTERS_TOTAL: &str = "cim_consumer_dead_letters_total";
pub const CONSUMER_LAG: &str = "cim_consumer_lag_messages";

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(CONSUMER_HANDLED_TOTAL, "Events a consumer applied, by consumer and outcome");
    describe_counter!(CONSUMER_REDELIVERIES_TOTAL, "Deliveries after the first, by consumer");
    describe_counter!(CONSUMER_DUPLICATES_TOTAL, "Deliveries of events already applied (acked, not re-applied)");
    describe_counter!(CONSUMER_DEAD_LETTERS_TOTAL, "Events sent to the dead-letter stream, by consumer");
    describe_gauge!(CONSUMER_LAG, "Messages the consumer has not yet received, by consumer");
}

/// One durable consumer's metrics, resolved once so the per-message path does not look them up
/// by name. Every CIM consumer uses it (the event store's `Consumer`, the gateway's cache invalidator), so
/// the consumer dashboards and alerts cover them all.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    pub applied: metrics::Counter,
    pub retried: metrics::Counter,
    pub duplicates: metrics::Counter,
    pub redeliveries: metrics::Counter,
    pub dead_letters: metrics::Counter,
    pub lag: metrics::Gauge,
}

impl ConsumerMetrics {
    pub fn new(consumer: &str) -> Self {
        describe();
        let c = consumer.to_owned();
        let m = ConsumerMetrics {
            applied: metrics::counter!(CONSUMER_HANDLED_TOTAL, "consumer" => c.clone(), "outcome" => "applied"),
            retried: metrics::counter!(CONSUMER_HANDLED_TOTAL, "consumer" => c.clone(), "outcome" => "retry"),
            duplicates: metrics::counter!(CONSUMER_DUPLICATES_TOTAL, "consumer" => c.clone()),
            redeliveries: metrics::counter!(CONSUMER_REDELIVERIES_TOTAL, "consumer" => c.clone()),
            dead_letters: metrics::counter!(CONSUMER_DEAD_LETTERS_TOTAL, "consumer" => c.clone()),
            lag: metrics::gauge!(CONSUMER_LAG, "consumer" => c),
        };
        // Exported from the start: "none yet" is 0, not a missing series the alerts cannot see.
        m.dead_letters.increment(0);
        m.retried.increment(0);
        m
    }
}
