//! CIM's shared vocabulary. Every service speaks these types; none of them does I/O.
//!
//! - [`ids`]: UUIDv7 identifiers as newtypes that parse rather than validate.
//! - [`envelope`]: the event envelope (docs/design.md#event-envelope), plain data.
//! - [`hash`]: `EventHash`; [`chain`]: sealing events into the per-aggregate BLAKE3 hash chain
//!   and verifying it (chain depends on envelope, never the reverse).
//! - [`events`]: each domain's events (`domain_events!`); [`document`]: the stored-JSON rules.
//! - [`subject`]: NATS subject grammar (docs/design.md#subjects-streams-and-headers).
//! - [`error`]: the one error-code table mapped to gRPC and HTTP.
//! - [`upcast`]: converting stored events of an older schema version on read.

pub mod chain;
pub mod document;
pub mod envelope;
pub mod error;
pub mod events;
pub mod hash;
pub mod ids;
pub mod names;
pub mod subject;
pub mod upcast;

pub use chain::{ChainBreak, ChainBreakKind, ChainLink, EventHash, StoredEvent, verify_chain};
pub use envelope::{EventContext, EventEnvelope, NewEvent};
pub use error::{ErrorCode, FieldViolation};
pub use ids::{AggregateId, CausationId, CommandId, CorrelationId, EventId, IdError, TenantId};
pub use names::{Actor, AggregateType, Domain, EventType, NameError, TypeName};
pub use subject::{EventSubject, SubjectError, SubjectPrefix, headers};
pub use upcast::{UpcastError, Upcasters};

/// What [`domain_events!`] expands to needs, whatever the calling crate depends on.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use serde_json;
}
