//! Metric names this crate exports, and handles resolved once so the per-frame path does not
//! look metrics up by name.

use metrics::{Counter, Gauge, Histogram};

pub const CONNECTED_CLIENTS: &str = "cim_websocket_connected_clients";
pub const SUBSCRIPTIONS: &str = "cim_websocket_subscriptions";
pub const FRAMES_SENT_TOTAL: &str = "cim_websocket_frames_sent_total";
pub const LAGGING_CLIENTS_CLOSED_TOTAL: &str = "cim_websocket_lagging_clients_closed_total";
pub const DELIVERY_LATENCY_SECONDS: &str = "cim_websocket_delivery_latency_seconds";
pub const REJECTED_TOTAL: &str = "cim_websocket_rejected_total";
pub const BAD_FRAMES_TOTAL: &str = "cim_websocket_bad_frames_total";
pub const FEED_POSITION: &str = "cim_websocket_feed_position";
pub const SKIPPED_EVENTS_TOTAL: &str = "cim_websocket_skipped_events_total";
pub const CATCHUP_EVENTS_TOTAL: &str = "cim_websocket_catchup_events_total";
pub const FEED_DELAY_SECONDS: &str = "cim_websocket_feed_delay_seconds";

pub fn describe() {
    metrics::describe_gauge!(CONNECTED_CLIENTS, "Open websocket connections");
    metrics::describe_gauge!(SUBSCRIPTIONS, "Active subscriptions over all connections");
    metrics::describe_counter!(FRAMES_SENT_TOTAL, "Event frames written to clients");
    metrics::describe_counter!(
        LAGGING_CLIENTS_CLOSED_TOTAL,
        "Clients closed with 4008 because their queue exceeded CIM_WEBSOCKET_CLIENT_QUEUE"
    );
    metrics::describe_histogram!(
        DELIVERY_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "From an event's occurred_at to its frame written to the client's socket"
    );
    metrics::describe_counter!(
        REJECTED_TOTAL,
        "Connections refused, by reason (max_connections, unauthenticated, forbidden)"
    );
    metrics::describe_counter!(BAD_FRAMES_TOTAL, "Client frames answered with an error (bad JSON, unknown type, ...)");
    metrics::describe_gauge!(FEED_POSITION, "Last stream position the live feed dispatched, by domain");
    metrics::describe_counter!(SKIPPED_EVENTS_TOTAL, "Stream messages that were not a readable event, by domain");
    metrics::describe_counter!(CATCHUP_EVENTS_TOTAL, "Events sent from the stream to resuming subscriptions");
    metrics::describe_histogram!(
        FEED_DELAY_SECONDS,
        metrics::Unit::Seconds,
        "From an event's occurred_at to the live feed dispatching it (commit, relay and JetStream)"
    );
}

/// Handles shared by every connection of the process.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub connected: Gauge,
    pub subscriptions: Gauge,
    pub frames_sent: Counter,
    pub lagging_closed: Counter,
    pub latency: Histogram,
    pub bad_frames: Counter,
    pub catchup_events: Counter,
    pub feed_delay: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        // The recorder must exist before handles are taken, or they bind to the no-op recorder.
        let _ = cim_runtime::metrics::handle();
        describe();
        Self {
            connected: metrics::gauge!(CONNECTED_CLIENTS),
            subscriptions: metrics::gauge!(SUBSCRIPTIONS),
            frames_sent: metrics::counter!(FRAMES_SENT_TOTAL),
            lagging_closed: metrics::counter!(LAGGING_CLIENTS_CLOSED_TOTAL),
            latency: metrics::histogram!(DELIVERY_LATENCY_SECONDS),
            bad_frames: metrics::counter!(BAD_FRAMES_TOTAL),
            catchup_events: metrics::counter!(CATCHUP_EVENTS_TOTAL),
            feed_delay: metrics::histogram!(FEED_DELAY_SECONDS),
        }
    }

    pub fn rejected(&self, reason: &'static str) {
        metrics::counter!(REJECTED_TOTAL, "reason" => reason).increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
