//! The kernel every domain service uses. Its promise: an acknowledged command is never lost, and
//! no event is applied twice.
//!
//! - [`store`]: append with optimistic concurrency, idempotency keys and same-transaction
//!   projections; load with snapshots and upcasting; hash-chain verification.
//! - [`relay`]: outbox → JetStream, one leader per schema, per-aggregate order.
//! - [`consumer`]: durable pull consumers with an inbox and a dead-letter stream.
//! - [`streams`]: stream creation at start-up.

pub mod consumer;
pub mod error;
pub mod metrics;
pub mod relay;
pub mod store;
pub mod streams;

pub use consumer::{Consumer, ConsumerConfig, EventHandler, publish_dead_letter};
pub use error::StoreError;
pub use relay::{Relay, RelayConfig};
pub use store::{
    Aggregate, Append, Appended, BrokenChain, EventStore, Expected, HeadToken, Loaded, Projector, SealedAppend,
    StoreConfig, VerifyReport, guarded_append_many_sql, migrator,
};
