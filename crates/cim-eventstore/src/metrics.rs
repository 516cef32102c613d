//! Metric names of the event store, relay and consumers. Every series has a `schema` label (the
//! service's schema) and consumers a `consumer` label.

pub const APPEND_DURATION_SECONDS: &str = "cim_eventstore_append_duration_seconds";
pub const EVENTS_APPENDED_TOTAL: &str = "cim_eventstore_events_appended_total";
pub const APPEND_CONFLICTS_TOTAL: &str = "cim_eventstore_append_conflicts_total";
pub const OUTBOX_BACKLOG: &str = "cim_outbox_backlog_events";
pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "cim_outbox_oldest_age_seconds";
pub const RELAY_PUBLISHED_TOTAL: &str = "cim_relay_published_total";
pub const RELAY_ERRORS_TOTAL: &str = "cim_relay_errors_total";
pub const RELAY_LEADER: &str = "cim_relay_leader";
pub const CONSUMER_HANDLED_TOTAL: &str = "cim_consumer_handled_total";
pub const CONSUMER_REDELIVERIES_TOTAL: &str = "cim_consumer_redeliveries_total";
pub const CONSUMER_DUPLICATES_TOTAL: &str = "cim_consumer_duplicates_total";
pub const CONSUMER_DEAD_LETTERS_TOTAL: &str = "cim_consumer_dead_letters_total";
pub const CONSUMER_LAG: &str = "cim_consumer_lag_messages";

pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(APPEND_DURATION_SECONDS, Unit::Seconds, "Time to append one command's events, by schema");
    describe_counter!(EVENTS_APPENDED_TOTAL, "Events committed, by schema");
    describe_counter!(APPEND_CONFLICTS_TOTAL, "Appends refused for a stale expected version, by schema");
    describe_gauge!(OUTBOX_BACKLOG, "Committed events not yet acknowledged by JetStream, by schema");
    describe_gauge!(OUTBOX_OLDEST_AGE_SECONDS, "Age of the oldest unpublished event, by schema");
    describe_counter!(RELAY_PUBLISHED_TOTAL, "Events the relay published and JetStream acknowledged, by schema");
    describe_counter!(RELAY_ERRORS_TOTAL, "Relay batches that failed (NATS or Postgres down), by schema");
    describe_gauge!(RELAY_LEADER, "1 on the instance whose relay holds the schema's lock");
    describe_counter!(CONSUMER_HANDLED_TOTAL, "Events a consumer applied, by consumer and outcome");
    describe_counter!(CONSUMER_REDELIVERIES_TOTAL, "Deliveries after the first, by consumer");
    describe_counter!(CONSUMER_DUPLICATES_TOTAL, "Deliveries of events already applied (acked, not re-applied)");
    describe_counter!(CONSUMER_DEAD_LETTERS_TOTAL, "Events sent to the dead-letter stream, by consumer");
    describe_gauge!(CONSUMER_LAG, "Messages the consumer has not yet received, by consumer");
}

/// One durable consumer's metrics, resolved once so the per-message path does not look them up
/// by name. Every CIM consumer uses it ([`crate::Consumer`], the gateway's cache invalidator), so
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
