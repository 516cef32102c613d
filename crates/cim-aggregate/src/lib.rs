//! The domain kit's command path. A domain states its rules as an [`Aggregate`] (`decide` a
//! command into events, `apply` an event to the state); [`CommandExecutor`] does the rest for
//! every domain alike: the idempotency key, `expected_version`, create conflicts, optimistic
//! concurrency (a lost race is decided again on the new state), the append, the relay's wake-up,
//! `cim_commands_total{service,command,outcome}`, and the state as of any version.
//!
//! State comes from replaying the aggregate's history (from its latest snapshot), or from a
//! [`LockingSource`] that reads the facts a command needs from the projection under the
//! aggregate's row lock (graph). Commands on one aggregate queue in the process ([`heads`]); a
//! domain may add a one-round-trip write decided on assumed facts ([`OneStatement`]), whose
//! statements from many aggregates are committed together ([`group_commit`]).

mod error;
mod executor;
pub mod expr;
pub mod group_commit;
pub mod heads;
pub mod host;
mod one_statement;
pub mod projection;
pub mod service_error;
pub mod source;

pub use error::ExecutorError;
pub use executor::{AsOf, COMMANDS_TOTAL, CommandExecutor, CommandOptions, Executed};
pub use group_commit::GroupStatement;
pub use one_statement::{ONE_STATEMENT_WRITES_TOTAL, OneStatement};
pub use projection::{ByAggregateType, Projected, Projection};
pub use source::{Current, LockingSource};

use cim_core::Domain;
use cim_core::events::DomainEvent;
use cim_runtime::status::HasErrorCode;

/// A domain's consistency boundary: its state, the commands it takes and the events it emits.
pub trait Aggregate: Default + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    const DOMAIN: Domain;
    /// The envelope's `aggregate_type`, e.g. `document`.
    const AGGREGATE_TYPE: &'static str;
    /// Bump when the state's shape changes: older snapshots are then ignored and rebuilt.
    const SNAPSHOT_VERSION: u32 = 1;

    type Command: Send + Sync;
    /// The domain's event enum (written with `cim_core::domain_events!`).
    type Event: DomainEvent;
    /// A broken business rule or a bad command.
    type Error: HasErrorCode + Send;
    /// What `decide` consults besides the state, fixed for the executor's life (limits,
    /// settings): cqrs-es's `Services`. `()` when the rules need nothing else.
    type Services: Send + Sync + 'static;

    /// The command's name for metrics and logs (`create_document`, ...).
    fn command_name(command: &Self::Command) -> &'static str;

    /// Whether the command brings the aggregate into being (it must not exist yet).
    fn creates(command: &Self::Command) -> bool;

    /// The events the command causes on this state, or why it is refused. Pure.
    fn decide(&self, command: &Self::Command, services: &Self::Services) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `event`. Total: an event that was stored has happened.
    fn apply(&mut self, event: &Self::Event);

    /// Called once after `events`, decided on this state, were committed: never for an attempt
    /// that lost a race (decided again) nor for an idempotent replay. The place for metrics of
    /// what the events mean (`decide` may run several times for one write). The one-statement
    /// path decides on assumed facts without a state and does not call it.
    fn committed(&self, _events: &[Self::Event]) {}
}

/// The event store's view of an [`Aggregate`]: state folded from stored envelopes, kept in
/// snapshots as JSON.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Folded<A>(pub A);

impl<A: Aggregate> cim_eventstore::Aggregate for Folded<A> {
    const AGGREGATE_TYPE: &'static str = A::AGGREGATE_TYPE;
    const SNAPSHOT_VERSION: u32 = A::SNAPSHOT_VERSION;

    fn apply(&mut self, event: &cim_core::EventEnvelope) -> Result<(), String> {
        self.0.apply(&A::Event::from_envelope(event)?);
        Ok(())
    }
}
