//! What every JetStream user shares, without the event store (no Postgres): the streams a
//! domain service creates and owns, dead-lettering, and the metrics every consumer exports.
//! The edges (gateway, websocket) depend on this, not on `cim-eventstore`.
//!
//! - [`streams`]: a domain's event stream and the dead-letter stream, created or updated at the
//!   owning service's start (edges only bind to them).
//! - [`dead_letter`]: copying a message that cannot be handled to `<prefix>.dlq.<consumer>`.
//! - [`metrics`]: `cim_consumer_*`, one handle set per durable consumer.
//! - [`pull`]: the consuming loop (bind, handle, bind again after an interruption).

pub mod dead_letter;
pub mod metrics;
pub mod pull;
pub mod streams;

pub use dead_letter::{dead_letter_or_retry, publish_dead_letter, publish_dead_letter_of};
pub use metrics::ConsumerMetrics;
pub use pull::{Binding, Bound, PullLoop};

/// A JetStream operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("invalid: {0}")]
    Invalid(String),
}
