//! Metric names of the event store and relay; every series has a `schema` label (the service's
//! schema). Consumers export `cim_streams::metrics`.

pub const APPEND_DURATION_SECONDS: &str = "cim_eventstore_append_duration_seconds";
pub const EVENTS_APPENDED_TOTAL: &str = "cim_eventstore_events_appended_total";
pub const APPEND_CONFLICTS_TOTAL: &str = "cim_eventstore_append_conflicts_total";
pub const OUTBOX_BACKLOG: &str = "cim_outbox_backlog_events";
pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "cim_outbox_oldest_age_seconds";
pub const RELAY_PUBLISHED_TOTAL: &str = "cim_relay_published_total";
pub const RELAY_ERRORS_TOTAL: &str = "cim_relay_errors_total";
pub const RELAY_LEADER: &str = "cim_relay_leader";
/// When the newest completed `cim backup` of the schema finished (Unix seconds; 0: never).
pub const BACKUP_LAST_SUCCESS: &str = "cim_backup_last_success_timestamp_seconds";

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
    describe_gauge!(
        BACKUP_LAST_SUCCESS,
        Unit::Seconds,
        "When the newest completed cim backup of the schema finished, Unix time (0: never), by schema"
    );
}
