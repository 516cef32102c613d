//! The one-round-trip write: a command decided on facts assumed instead of read.
//!
//! The locked path costs six round trips (BEGIN, lock, read facts, append, project, COMMIT;
//! four for a create, which reads nothing). When this process knows an aggregate's head from
//! its own last write or locked read, or the command creates it, a domain may decide a command
//! on assumed facts and send one guarded statement (grouped with
//! other aggregates' commands, [`crate::group_commit`]) that checks the head and every
//! assumption, appends and projects. If anything differs (another process wrote, a fact did not
//! hold) nothing is written and the executor takes the locked path, which reports the real
//! outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cim_eventstore::{Append, Appended, EventStore};

use crate::group_commit::{GroupCommit, GroupStatement};
use crate::{Aggregate, ExecutorError};

/// One-statement writes tried, by service: `hit` (written) or `miss` (took the locked path).
pub const ONE_STATEMENT_WRITES_TOTAL: &str = "cim_one_statement_writes_total";

/// A domain's assumed-facts decision and the statement that checks it.
pub trait OneStatement<A: Aggregate>: GroupStatement {
    /// The events `command` causes if the facts it depends on are as assumed, with the rows
    /// that state those assumptions for the statement; `None` when it must be decided on read
    /// facts. A command decided here never closes the aggregate ([`OneStatement::open`]).
    ///
    /// A command that creates ([`Aggregate::creates`], without an idempotency key) comes here
    /// too, with no head: its `cmd` row has version 0, and the guard must let it through only
    /// while the aggregate is absent. A domain whose guard does not check that returns `None`
    /// for creates.
    fn decide_assuming(&self, command: &A::Command, services: &A::Services) -> Option<(Vec<A::Event>, Self::Rows)>;

    /// Whether an aggregate in `state` still takes one-statement writes.
    fn open(&self, state: &A) -> bool;
}

/// What a one-statement try came to.
pub(crate) enum Tried {
    /// The command needs read facts.
    Ineligible,
    /// The head or an assumption did not hold: nothing was written.
    Missed,
    Written(Appended),
}

pub(crate) type Seal<'a, A> =
    Box<dyn FnOnce(&[<A as Aggregate>::Event]) -> Result<Append, ExecutorError<<A as Aggregate>::Error>> + Send + 'a>;
type TryFuture<'a, A> =
    Pin<Box<dyn Future<Output = Result<Tried, ExecutorError<<A as Aggregate>::Error>>> + Send + 'a>>;

/// [`OneStatement`] with its group writer, behind a trait object so the executor stays
/// generic over the aggregate only.
pub(crate) trait Assuming<A: Aggregate>: Send + Sync {
    fn try_write<'a>(
        &'a self,
        command: &'a A::Command,
        services: &'a A::Services,
        seal: Seal<'a, A>,
    ) -> TryFuture<'a, A>;
    fn open(&self, state: &A) -> bool;
}

pub(crate) struct Writer<S: GroupStatement> {
    statement: Arc<S>,
    group: GroupCommit<S>,
}

impl<S: GroupStatement> Writer<S> {
    pub(crate) fn start(store: EventStore, statement: S, service: &'static str) -> Self {
        let statement = Arc::new(statement);
        Self { group: GroupCommit::start(store, statement.clone(), service), statement }
    }
}

impl<A: Aggregate, S: OneStatement<A>> Assuming<A> for Writer<S> {
    fn try_write<'a>(
        &'a self,
        command: &'a A::Command,
        services: &'a A::Services,
        seal: Seal<'a, A>,
    ) -> TryFuture<'a, A> {
        Box::pin(async move {
            let Some((events, rows)) = self.statement.decide_assuming(command, services) else {
                return Ok(Tried::Ineligible);
            };
            let append = seal(&events)?;
            Ok(match self.group.append(&append, rows).await? {
                Some(done) => Tried::Written(done),
                None => Tried::Missed,
            })
        })
    }

    fn open(&self, state: &A) -> bool {
        self.statement.open(state)
    }
}
