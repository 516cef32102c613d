//! The append-only event store of one service schema.
//!
//! Append is one SQL statement (events + outbox + idempotency key, via data-modifying CTEs), so
//! the common case costs one round trip, like a plain insert. When the caller has projection
//! statements, the same statement runs inside a transaction with them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use cim_core::chain::{StoredEvent, verify_chain_from};
use cim_core::{AggregateId, Domain, EventContext, EventEnvelope, EventHash, EventId, NewEvent, TenantId, Upcasters};
use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use tokio::sync::Notify;

mod append;
mod batch;
mod group;
mod read;
mod sql;

use batch::Batch;
pub use group::SealedAppend;
pub use sql::guarded_append_many_sql;
use sql::{APPEND_SQL, APPEND_SQL_NO_KEY};
pub(crate) use sql::{EVENT_COLUMNS, envelope_from_row, stored_from_row};

use crate::error::StoreError;
use crate::metrics::{APPEND_CONFLICTS_TOTAL, APPEND_DURATION_SECONDS, EVENTS_APPENDED_TOTAL};

/// What the writer believes the aggregate's version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Append after whatever is there (the store reads the head; retried on a race).
    Any,
    /// The aggregate must not exist yet.
    NoStream,
    /// The aggregate must be exactly at this version (the store reads that event's hash).
    Version(u64),
    /// The aggregate must be at the head a load or an append returned (or a projection written
    /// in the same transaction as the events recorded). The fast path: no read before the write.
    Head(HeadToken),
}

/// An aggregate's head — version and the hash of the event at that version — as the store
/// reported it. Not constructible from arbitrary values (except [`HeadToken::from_projection`]),
/// because a wrong hash would be chained into the next event and break `verify` for good; the
/// store trusts a token without a lookup, which keeps an append to one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadToken {
    version: u64,
    hash: EventHash,
}

impl HeadToken {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn hash(&self) -> EventHash {
        self.hash
    }

    /// A head kept in a projection row that is written in the same transaction as the
    /// aggregate's events and read under that row's lock, scoped to the caller's tenant.
    pub fn from_projection(version: u64, hash: EventHash) -> Self {
        Self { version, hash }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Any => f.write_str("any"),
            Expected::NoStream => f.write_str("0 (new)"),
            Expected::Version(v) => write!(f, "{v}"),
            Expected::Head(h) => write!(f, "{}", h.version),
        }
    }
}

/// One command's worth of events for one aggregate.
#[derive(Debug, Clone)]
pub struct Append {
    pub context: EventContext,
    pub expected: Expected,
    pub events: Vec<NewEvent>,
    /// Scoped by tenant. A repeated key returns the first result and appends nothing.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    pub aggregate_id: AggregateId,
    /// The aggregate's version after the command.
    pub version: u64,
    /// The hash of the event at `version`: with `version`, the next `Expected::Head`.
    pub head: EventHash,
    pub event_ids: Vec<EventId>,
    /// The sealed events; on a replay, the events the first attempt appended.
    pub events: Vec<EventEnvelope>,
    /// True when the idempotency key had been seen: nothing was appended this time.
    pub replayed: bool,
}

/// What [`EventStore::verify_all`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VerifyReport {
    pub aggregates: usize,
    /// Events checked in aggregates whose chain holds.
    pub events: usize,
    pub broken: Vec<BrokenChain>,
}

/// An aggregate whose history does not verify, and the first reason.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokenChain {
    pub tenant: TenantId,
    pub aggregate: AggregateId,
    pub why: String,
}

/// Extra statements that must commit atomically with the events (projections).
pub trait Projector: Send + Sync {
    fn project<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [EventEnvelope],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// State folded from an aggregate's events; snapshots store it as JSON.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    const AGGREGATE_TYPE: &'static str;
    /// Bump when the state's shape changes: older snapshots are then ignored and rebuilt.
    const SNAPSHOT_VERSION: u32 = 1;
    fn apply(&mut self, event: &EventEnvelope) -> Result<(), String>;
}

#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub version: u64,
    pub head: EventHash,
    /// The snapshot's version the load started from, if any.
    pub snapshot_version: Option<u64>,
}

impl Appended {
    /// The expectation for the next append to the same aggregate.
    pub fn expected(&self) -> Expected {
        Expected::Head(self.head_token())
    }

    /// The aggregate's head after this append.
    pub fn head_token(&self) -> HeadToken {
        HeadToken { version: self.version, hash: self.head }
    }
}

impl<A> Loaded<A> {
    /// The expectation to append with after deciding on this state.
    pub fn expected(&self) -> Expected {
        Expected::Head(HeadToken { version: self.version, hash: self.head })
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub domain: Domain,
    /// The service's Postgres schema; the pool's `search_path` must point at it.
    pub schema: String,
    /// Take a snapshot when a load folded at least this many events after the last one.
    pub snapshot_every: u64,
    pub upcasters: Upcasters,
}

#[derive(Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    config: StoreConfig,
    /// Wakes this process's relay right after a commit.
    pub(crate) wake: Notify,
    /// Whether this process's relay holds the schema's relay lock. If not, commits are announced
    /// with NOTIFY so the leader in another process wakes at once.
    pub(crate) local_leader: AtomicBool,
    /// Wakes the announcer task. A NOTIFY inside each append transaction would serialize all
    /// commits on Postgres' notify lock; instead one task sends at most one NOTIFY at a time,
    /// after commits, coalescing bursts.
    announce: Notify,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").field("schema", &self.inner.config.schema).finish_non_exhaustive()
    }
}

/// The migrations every service applies to its schema.
pub fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./migrations")
}

const MAX_EVENTS_PER_APPEND: usize = 10_000;
/// Leaves room for the envelope within NATS' default 1 MiB `max_payload`.
pub const MAX_PAYLOAD_BYTES: usize = 768 * 1024;

fn is_constraint(e: &sqlx::Error, name: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.constraint() == Some(name))
}

/// Relay lock key and NOTIFY channel derive from the schema name.
pub(crate) fn notify_channel(schema: &str) -> String {
    format!("cim_outbox_{schema}")
}

#[derive(Debug)]
struct Head {
    version: u64,
    hash: EventHash,
}

/// Sends `NOTIFY` for commits made while another process leads the relay. Ends with the store.
async fn announcer(inner: std::sync::Weak<Inner>, channel: String) {
    loop {
        let (pool, announced) = {
            let Some(inner) = inner.upgrade() else { return };
            (
                inner.pool.clone(),
                tokio::time::timeout(std::time::Duration::from_secs(1), inner.announce.notified()).await,
            )
        };
        if announced.is_ok()
            && let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(&channel).execute(&pool).await
        {
            tracing::debug!(error = %e, "outbox NOTIFY failed; the leader's timer will catch up");
        }
    }
}

impl EventStore {
    /// Opens the store over a pool whose `search_path` is `config.schema`, applying migrations.
    pub async fn open(pool: PgPool, config: StoreConfig) -> Result<Self, StoreError> {
        cim_runtime::postgres::migrate(&pool, &config.schema, migrator())
            .await
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        crate::metrics::describe();
        let channel = notify_channel(&config.schema);
        let inner = Arc::new(Inner {
            pool,
            config,
            wake: Notify::new(),
            local_leader: AtomicBool::new(false),
            announce: Notify::new(),
        });
        tokio::spawn(announcer(Arc::downgrade(&inner), channel));
        Ok(Self { inner })
    }

    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub fn domain(&self) -> Domain {
        self.inner.config.domain
    }

    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    pub(crate) fn wake(&self) -> &Notify {
        &self.inner.wake
    }

    pub(crate) fn set_local_leader(&self, leader: bool) {
        self.inner.local_leader.store(leader, Ordering::Release);
    }
}
