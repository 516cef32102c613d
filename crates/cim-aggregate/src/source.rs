//! Where a command's state comes from when it is not replayed.
//!
//! Replaying (the latest snapshot and the events after it) is the executor's default: it needs
//! nothing from the domain. A domain whose projection already holds the facts a command needs,
//! and a row to lock for the aggregate (graph: a command on a graph of a million nodes reads
//! the three it touches), gives the executor a [`LockingSource`] instead: the executor then
//! decides, appends and projects inside the transaction that holds the lock, so commands on one
//! aggregate never race and are never decided twice.

use std::future::Future;
use std::pin::Pin;

use cim_core::{AggregateId, TenantId};
use cim_eventstore::{HeadToken, StoreError};
use sqlx::PgConnection;

use crate::Aggregate;

/// The state a command is decided on and the head it was read at.
#[derive(Debug, Clone)]
pub struct Current<A> {
    pub state: A,
    pub head: HeadToken,
}

pub type SourceFuture<'a, A> = Pin<Box<dyn Future<Output = Result<Option<Current<A>>, StoreError>> + Send + 'a>>;

/// Reads an aggregate's state from its projection under a row lock.
pub trait LockingSource<A: Aggregate>: Send + Sync + 'static {
    /// Locks the aggregate's row for the rest of `tx` and reads what deciding `command` needs;
    /// `None` when the aggregate does not exist for `tenant`. The head must be the one written
    /// with the row in the events' own transactions (see [`HeadToken::from_projection`]).
    fn read<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        tenant: TenantId,
        id: AggregateId,
        command: &'a A::Command,
    ) -> SourceFuture<'a, A>;
}
