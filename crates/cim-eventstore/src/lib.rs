//! The kernel every domain service uses. Its promise: an acknowledged command is never lost, and
//! no event is applied twice.
//!
//! - [`store`]: append with optimistic concurrency, idempotency keys and same-transaction
//!   projections; load with snapshots and upcasting; hash-chain verification.
//! - [`relay`]: outbox → JetStream, one leader per schema, per-aggregate order.
//! - [`consumer`]: durable pull consumers with an inbox and a dead-letter stream.
//!
//! - [`archive`]: a schema's history exported and imported (backups), projections replayed,
//!   events published again to a stream that lost them.
//!
//! Streams, dead letters and consumer metrics, which need no Postgres, are in `cim-streams`.

pub mod archive;
pub mod consumer;
pub mod error;
pub mod metrics;
pub mod relay;
pub mod store;

pub use consumer::{Consumer, ConsumerConfig, EventHandler};
pub use error::StoreError;
pub use relay::{Relay, RelayConfig};
pub use store::{
    Aggregate, Append, Appended, BrokenChain, EventStore, Expected, HeadToken, Loaded, Projector, SealedAppend,
    StoreConfig, VerifyReport, guarded_append_many_sql, migrator,
};
