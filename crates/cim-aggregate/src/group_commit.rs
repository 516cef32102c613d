//! Group commit of one-statement writes: commands of different aggregates that arrive while
//! earlier groups are being written go to Postgres together, one statement and one commit for
//! all. Under load that divides the per-statement costs (round trip, executor start-up, commit
//! and WAL flush) by the group size; alone, a command waits for nobody.
//!
//! The kit owns the queue, the writers and what happens when a group fails; a domain owns its
//! statement ([`GroupStatement`]): the guard that checks what each command assumed, and the
//! projection rows it writes (see [`cim_eventstore::guarded_append_many_sql`]).

use std::sync::Arc;

use cim_eventstore::{Append, Appended, EventStore, SealedAppend, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Commands written together by one statement, by service.
pub const WRITE_GROUP_SIZE: &str = "cim_write_group_size";

/// Groups written at once (each holds a pooled connection while it runs).
const WRITERS: usize = 4;
/// At most this many commands per statement; the rest wait for the next group.
const MAX_GROUP: usize = 64;

type Query = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A domain's guarded many-aggregate statement.
pub trait GroupStatement: Send + Sync + 'static {
    /// One command's projection rows and assumptions.
    type Rows: Send + 'static;
    /// The caller parameters (`$23..`) of a whole group, gathered command by command.
    type Params: Default + Send + 'static;

    /// The statement for this group (a domain may keep a cheaper one for common groups).
    fn sql(&self, group: &[&Self::Rows]) -> &'static str;

    /// Adds one command's rows, for the aggregate `aggregate`, to the group's parameters.
    fn add(&self, params: &mut Self::Params, aggregate: uuid::Uuid, rows: Self::Rows);

    /// Binds the gathered parameters after the store's own.
    fn bind(&self, params: Self::Params, query: Query) -> Query;
}

type Reply = oneshot::Sender<Result<Option<Appended>, StoreError>>;

struct Pending<R> {
    sealed: SealedAppend,
    rows: R,
    reply: Reply,
}

/// The queue in front of the group writers.
pub struct GroupCommit<S: GroupStatement> {
    store: EventStore,
    queue: mpsc::Sender<Pending<S::Rows>>,
}

impl<S: GroupStatement> std::fmt::Debug for GroupCommit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("store", &self.store).finish_non_exhaustive()
    }
}

impl<S: GroupStatement> Clone for GroupCommit<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), queue: self.queue.clone() }
    }
}

impl<S: GroupStatement> GroupCommit<S> {
    /// Starts the writers; they end when the last handle is dropped. `service` labels the
    /// group-size histogram.
    pub fn start(store: EventStore, statement: Arc<S>, service: &'static str) -> Self {
        metrics::describe_histogram!(WRITE_GROUP_SIZE, "Commands written together by one group-commit statement");
        let (queue, rx) = mpsc::channel(MAX_GROUP * WRITERS * 4);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(store.clone(), statement.clone(), rx.clone(), service));
        }
        Self { store, queue }
    }

    /// Appends `append` and writes `rows` with whichever other commands are waiting.
    /// `Ok(None)`: the head or an assumption did not hold (or the group's statement was refused)
    /// and nothing of this command was written.
    pub async fn append(&self, append: &Append, rows: S::Rows) -> Result<Option<Appended>, StoreError> {
        let span = self.store.append_span(append);
        async {
            // Sealed in the span: the outbox rows carry its trace context.
            let sealed = self.store.seal_guarded(append)?;
            let (reply, done) = oneshot::channel();
            if self.queue.send(Pending { sealed, rows, reply }).await.is_err() {
                return Ok(None);
            }
            done.await.unwrap_or(Ok(None))
        }
        .instrument(span)
        .await
    }
}

async fn writer<S: GroupStatement>(
    store: EventStore,
    statement: Arc<S>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending<S::Rows>>>>,
    service: &'static str,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            group.push(first);
            while group.len() < MAX_GROUP {
                let Ok(next) = queue.try_recv() else { break };
                group.push(next);
            }
        }
        write_group(&store, statement.as_ref(), group, service).await;
    }
}

/// Writes one group and answers each command.
async fn write_group<S: GroupStatement>(
    store: &EventStore,
    statement: &S,
    group: Vec<Pending<S::Rows>>,
    service: &'static str,
) {
    // An aggregate twice in one group (possible only after a cancelled request left its
    // command queued): the later one takes the locked path.
    let mut seen = std::collections::HashSet::with_capacity(group.len());
    let (group, repeated): (Vec<_>, Vec<_>) = group.into_iter().partition(|p| seen.insert(p.sealed.aggregate_id()));
    for p in repeated {
        let _ = p.reply.send(Ok(None));
    }
    metrics::histogram!(WRITE_GROUP_SIZE, "service" => service).record(group.len() as f64);
    let sql = statement.sql(&group.iter().map(|p| &p.rows).collect::<Vec<_>>());
    let mut params = S::Params::default();
    let mut sealed = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for p in group {
        statement.add(&mut params, p.sealed.aggregate_id().as_uuid(), p.rows);
        sealed.push(p.sealed);
        replies.push(p.reply);
    }
    match store.append_guarded_many(sql, sealed, |q| statement.bind(params, q)).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(e @ StoreError::Conflict { .. }) => {
            // A sequence taken under the group: a create whose id another statement wrote
            // meanwhile (the guard cannot lock a row that does not exist yet). Nothing was
            // written; each command takes the locked path, which names the one that lost.
            tracing::debug!(error = %e, commands = replies.len(), "group write lost a race; commands retry alone");
            for reply in replies {
                let _ = reply.send(Ok(None));
            }
        }
        Err(StoreError::Database(e @ sqlx::Error::Database(_))) if !cim_runtime::postgres::is_transient(&e) => {
            // Postgres refused the statement as a whole (nothing was written): one bad
            // command must not fail the others, so each takes the locked path on its own.
            // ("Not now" errors — a lost connection, a server shutting down — go to every
            // command instead: they are the clients' to retry.)
            tracing::warn!(error = %e, commands = replies.len(), "group write refused; commands retry alone");
            for reply in replies {
                let _ = reply.send(Ok(None));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.for_group()));
            }
        }
    }
}
