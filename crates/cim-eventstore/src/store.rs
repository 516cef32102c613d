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
        Expected::Head(HeadToken { version: self.version, hash: self.head })
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

/// The append statement; `$idem` is the idempotency CTE (or nothing) and `$filter` decides
/// whether the events are inserted.
macro_rules! append_sql {
    ($idem:literal, $filter:literal) => {
        concat!(
            "WITH ",
            $idem,
            "ins AS (
    INSERT INTO events (event_id, aggregate_id, sequence, aggregate_type, event_type, schema_version,
                        occurred_at, tenant_id, actor, correlation_id, causation_id, payload, hash, prev_hash)
    SELECT u.event_id, $1, u.sequence, $2, u.event_type, u.schema_version,
           $7, $8, $9, $10, $11, u.payload::json, u.hash, u.prev_hash
    FROM unnest($3::uuid[], $4::bigint[], $5::text[], $6::int[], $12::text[], $13::bytea[], $14::bytea[])
         AS u(event_id, sequence, event_type, schema_version, payload, hash, prev_hash)
    WHERE ",
            $filter,
            "
    RETURNING position
), ob AS (
    INSERT INTO outbox (position, traceparent) SELECT position, $17 FROM ins
)
SELECT (SELECT count(*) FROM ins) AS appended"
        )
    };
}

const APPEND_SQL: &str = append_sql!(
    "idem AS (
    INSERT INTO idempotency (tenant_id, key, aggregate_id, last_sequence, event_ids)
    SELECT $8, $15, $1, $16, $3
    WHERE $15::text IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING 1
), ",
    "$15::text IS NULL OR EXISTS (SELECT 1 FROM idem)"
);

/// [`APPEND_SQL`] for commands without an idempotency key: no `idempotency` insert to plan and
/// execute (it opens the table and its index even when it inserts nothing). `$15`/`$16` are
/// still referenced so both statements take the same parameters.
const APPEND_SQL_NO_KEY: &str = append_sql!("", "$15::text IS NULL AND $16::bigint > 0");

/// The statement for [`EventStore::append_guarded_many`]: several aggregates' commands in one
/// statement (group commit), each written only if the caller's guard accepts it.
///
/// The store defines the CTE `cmd` (one row per command: `aggregate_id`, `tenant_id`,
/// `version` and `head` it expects, `new_version`, `new_head`, `occurred_at`, `traceparent`).
/// `ctes` are the caller's CTEs, written after `cmd`; one of them must be `guard`, returning
/// the `aggregate_id` of each command that may be written, with whatever row it needs locked
/// (`FOR UPDATE`, in a fixed order so that concurrent statements never deadlock). Only those
/// commands' events go into `events` and `outbox`; `tail` (CTEs, each starting with a comma)
/// may write projections `FROM guard`. The statement returns the written aggregates' ids.
///
/// The guard runs to completion (taking its locks) before any event row is written: the insert
/// reads its result as one array (`= ANY (ARRAY(…))`, not a semi-join, which could reorder the
/// events; positions must follow each aggregate's sequence).
///
/// Parameters `$1..$14` are per event, `$15..$22` per command (the columns of `cmd`); the
/// caller's own start at `$23`.
pub fn guarded_append_many_sql(ctes: &str, tail: &str) -> String {
    format!(
        "WITH cmd AS (
    SELECT * FROM unnest($15::uuid[], $16::uuid[], $17::bigint[], $18::bytea[], $19::bigint[], $20::bytea[],
                         $21::timestamptz[], $22::text[])
        AS c(aggregate_id, tenant_id, version, head, new_version, new_head, occurred_at, traceparent)
), {ctes}, ins AS (
    INSERT INTO events (event_id, aggregate_id, sequence, aggregate_type, event_type, schema_version,
                        occurred_at, tenant_id, actor, correlation_id, causation_id, payload, hash, prev_hash)
    SELECT u.event_id, u.aggregate_id, u.sequence, u.aggregate_type, u.event_type, u.schema_version,
           u.occurred_at, u.tenant_id, u.actor, u.correlation_id, u.causation_id, u.payload::json, u.hash, u.prev_hash
    FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::int[], $7::timestamptz[],
                $8::uuid[], $9::text[], $10::uuid[], $11::uuid[], $12::text[], $13::bytea[], $14::bytea[])
         AS u(aggregate_id, aggregate_type, event_id, sequence, event_type, schema_version, occurred_at,
              tenant_id, actor, correlation_id, causation_id, payload, hash, prev_hash)
    WHERE u.aggregate_id = ANY (ARRAY(SELECT aggregate_id FROM guard))
    RETURNING position, aggregate_id
), ob AS (
    INSERT INTO outbox (position, traceparent) SELECT i.position, c.traceparent FROM ins i JOIN cmd c USING (aggregate_id)
){tail}
SELECT aggregate_id FROM guard"
    )
}

pub(crate) const EVENT_COLUMNS: &str = "e.event_id, e.aggregate_id, e.sequence, e.aggregate_type, e.event_type, \
    e.schema_version, e.occurred_at, e.tenant_id, e.actor, e.correlation_id, e.causation_id, e.payload::text AS payload, \
    e.hash, e.prev_hash";

/// Reads an event row selected with [`EVENT_COLUMNS`].
pub(crate) fn envelope_from_row(domain: Domain, row: &PgRow) -> Result<EventEnvelope, StoreError> {
    stored_from_row(domain, row).map(|stored| stored.envelope)
}

/// Reads an event row selected with [`EVENT_COLUMNS`], keeping the payload's stored text, which
/// is what its hash covers.
pub(crate) fn stored_from_row(domain: Domain, row: &PgRow) -> Result<StoredEvent, StoreError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{what}: {e}"));
    let uuid = |col: &str| row.try_get::<uuid::Uuid, _>(col).map_err(|e| corrupt(col, &e));
    let text = |col: &str| row.try_get::<String, _>(col).map_err(|e| corrupt(col, &e));
    let bytes = |col: &str| row.try_get::<Vec<u8>, _>(col).map_err(|e| corrupt(col, &e));
    let sequence: i64 = row.try_get("sequence").map_err(|e| corrupt("sequence", &e))?;
    let schema_version: i32 = row.try_get("schema_version").map_err(|e| corrupt("schema_version", &e))?;
    let occurred_at: DateTime<Utc> = row.try_get("occurred_at").map_err(|e| corrupt("occurred_at", &e))?;
    let payload_text = text("payload")?;
    let envelope = EventEnvelope {
        event_id: EventId::from_uuid(uuid("event_id")?).map_err(|e| corrupt("event_id", &e))?,
        event_type: text("event_type")?.parse().map_err(|e| corrupt("event_type", &e))?,
        schema_version: u32::try_from(schema_version).map_err(|e| corrupt("schema_version", &e))?,
        domain,
        aggregate_type: text("aggregate_type")?.parse().map_err(|e| corrupt("aggregate_type", &e))?,
        aggregate_id: AggregateId::from_uuid(uuid("aggregate_id")?).map_err(|e| corrupt("aggregate_id", &e))?,
        sequence: u64::try_from(sequence).map_err(|e| corrupt("sequence", &e))?,
        occurred_at,
        tenant_id: TenantId::from_uuid(uuid("tenant_id")?).map_err(|e| corrupt("tenant_id", &e))?,
        actor: text("actor")?.parse().map_err(|e| corrupt("actor", &e))?,
        correlation_id: uuid("correlation_id")?.try_into().map_err(|e| corrupt("correlation_id", &e))?,
        causation_id: uuid("causation_id")?.try_into().map_err(|e| corrupt("causation_id", &e))?,
        payload: serde_json::from_str(&payload_text).map_err(|e| corrupt("payload", &e))?,
        hash: EventHash::from_slice(&bytes("hash")?).map_err(|e| corrupt("hash", &e))?,
        prev_hash: EventHash::from_slice(&bytes("prev_hash")?).map_err(|e| corrupt("prev_hash", &e))?,
    };
    Ok(StoredEvent { envelope, payload_json: payload_text })
}

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

/// A command's events sealed on a head: the values an append statement binds as `$1..$17`.
#[derive(Debug)]
struct Batch {
    sealed: Vec<EventEnvelope>,
    ids: Vec<uuid::Uuid>,
    seqs: Vec<i64>,
    types: Vec<String>,
    versions: Vec<i32>,
    payloads: Vec<String>,
    hashes: Vec<Vec<u8>>,
    prevs: Vec<Vec<u8>>,
    last_sequence: u64,
    traceparent: Option<String>,
}

impl Batch {
    fn seal(cmd: &Append, head: &Head) -> Result<Self, StoreError> {
        let sealed =
            EventEnvelope::seal_all(&cmd.context, cmd.events.iter().cloned(), head.version + 1, head.hash, Utc::now());
        let n = sealed.len();
        let mut batch = Batch {
            ids: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            prevs: Vec::with_capacity(n),
            last_sequence: head.version + n as u64,
            traceparent: cim_runtime::telemetry::current_traceparent(),
            sealed: vec![],
        };
        for e in &sealed {
            batch.ids.push(e.event_id.as_uuid());
            batch.seqs.push(e.sequence as i64);
            batch.types.push(e.event_type.as_str().to_owned());
            batch.versions.push(e.schema_version as i32);
            // The canonical text, the very bytes the event's hash covers.
            let payload = cim_core::chain::canonical_text(&e.payload);
            // Every event must fit one NATS message (1 MiB by default) with its envelope, or the
            // relay could never publish it. Checked on the text that is stored, serialized once.
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(StoreError::Invalid(format!(
                    "event payload of {} bytes; at most {MAX_PAYLOAD_BYTES} allowed",
                    payload.len()
                )));
            }
            batch.payloads.push(payload);
            batch.hashes.push(e.hash.as_bytes().to_vec());
            batch.prevs.push(e.prev_hash.as_bytes().to_vec());
        }
        batch.sealed = sealed;
        Ok(batch)
    }

    fn bind<'q>(
        &self,
        cmd: &Append,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let ctx = &cmd.context;
        query
            .bind(ctx.aggregate_id.as_uuid())
            .bind(ctx.aggregate_type.as_str())
            .bind(&self.ids)
            .bind(&self.seqs)
            .bind(&self.types)
            .bind(&self.versions)
            .bind(self.sealed.first().map(|e| e.occurred_at))
            .bind(ctx.tenant_id.as_uuid())
            .bind(ctx.actor.as_str())
            .bind(ctx.correlation_id.as_uuid())
            .bind(ctx.causation_id.as_uuid())
            .bind(&self.payloads)
            .bind(&self.hashes)
            .bind(&self.prevs)
            .bind(cmd.idempotency_key.as_deref())
            .bind(self.last_sequence as i64)
            .bind(self.traceparent.as_deref())
    }

    fn appended(self, id: AggregateId, prev_head: EventHash) -> Appended {
        Appended {
            aggregate_id: id,
            version: self.last_sequence,
            head: self.sealed.last().map_or(prev_head, |e| e.hash),
            event_ids: self.sealed.iter().map(|e| e.event_id).collect(),
            events: self.sealed,
            replayed: false,
        }
    }
}

/// One command validated and sealed for [`EventStore::append_guarded_many`].
#[derive(Debug)]
pub struct SealedAppend {
    context: EventContext,
    head: Head,
    batch: Batch,
    started: Instant,
}

impl SealedAppend {
    pub fn aggregate_id(&self) -> AggregateId {
        self.context.aggregate_id
    }

    /// The aggregate's version once this command is written.
    pub fn version_after(&self) -> u64 {
        self.batch.last_sequence
    }
}

/// Binds `$1..$22` of [`guarded_append_many_sql`]: per event, then per command. Moves the
/// columns out of the batches (only their sealed events are needed afterwards).
fn bind_many<'q>(
    items: &mut [SealedAppend],
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    #[derive(Default)]
    struct Columns {
        aggregate: Vec<uuid::Uuid>,
        aggregate_type: Vec<String>,
        id: Vec<uuid::Uuid>,
        seq: Vec<i64>,
        event_type: Vec<String>,
        version: Vec<i32>,
        occurred_at: Vec<Option<DateTime<Utc>>>,
        tenant: Vec<uuid::Uuid>,
        actor: Vec<String>,
        correlation: Vec<uuid::Uuid>,
        causation: Vec<uuid::Uuid>,
        payload: Vec<String>,
        hash: Vec<Vec<u8>>,
        prev: Vec<Vec<u8>>,
    }
    #[derive(Default)]
    struct Commands {
        aggregate: Vec<uuid::Uuid>,
        tenant: Vec<uuid::Uuid>,
        version: Vec<i64>,
        head: Vec<Vec<u8>>,
        new_version: Vec<i64>,
        new_head: Vec<Vec<u8>>,
        occurred_at: Vec<Option<DateTime<Utc>>>,
        traceparent: Vec<Option<String>>,
    }
    let (mut ev, mut cmd) = (Columns::default(), Commands::default());
    for item in items.iter_mut() {
        let (ctx, b) = (&item.context, &mut item.batch);
        let occurred_at = b.sealed.first().map(|e| e.occurred_at);
        let n = b.ids.len();
        ev.aggregate.extend(std::iter::repeat_n(ctx.aggregate_id.as_uuid(), n));
        ev.aggregate_type.extend(std::iter::repeat_n(ctx.aggregate_type.to_string(), n));
        ev.occurred_at.extend(std::iter::repeat_n(occurred_at, n));
        ev.tenant.extend(std::iter::repeat_n(ctx.tenant_id.as_uuid(), n));
        ev.actor.extend(std::iter::repeat_n(ctx.actor.to_string(), n));
        ev.correlation.extend(std::iter::repeat_n(ctx.correlation_id.as_uuid(), n));
        ev.causation.extend(std::iter::repeat_n(ctx.causation_id.as_uuid(), n));
        ev.id.append(&mut b.ids);
        ev.seq.append(&mut b.seqs);
        ev.event_type.append(&mut b.types);
        ev.version.append(&mut b.versions);
        ev.payload.append(&mut b.payloads);
        ev.hash.append(&mut b.hashes);
        ev.prev.append(&mut b.prevs);
        cmd.aggregate.push(ctx.aggregate_id.as_uuid());
        cmd.tenant.push(ctx.tenant_id.as_uuid());
        cmd.version.push(item.head.version as i64);
        cmd.head.push(item.head.hash.as_bytes().to_vec());
        cmd.new_version.push(b.last_sequence as i64);
        cmd.new_head.push(b.sealed.last().map_or(item.head.hash, |e| e.hash).as_bytes().to_vec());
        cmd.occurred_at.push(occurred_at);
        cmd.traceparent.push(b.traceparent.take());
    }
    query
        .bind(ev.aggregate)
        .bind(ev.aggregate_type)
        .bind(ev.id)
        .bind(ev.seq)
        .bind(ev.event_type)
        .bind(ev.version)
        .bind(ev.occurred_at)
        .bind(ev.tenant)
        .bind(ev.actor)
        .bind(ev.correlation)
        .bind(ev.causation)
        .bind(ev.payload)
        .bind(ev.hash)
        .bind(ev.prev)
        .bind(cmd.aggregate)
        .bind(cmd.tenant)
        .bind(cmd.version)
        .bind(cmd.head)
        .bind(cmd.new_version)
        .bind(cmd.new_head)
        .bind(cmd.occurred_at)
        .bind(cmd.traceparent)
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

    /// Appends without projections.
    pub async fn append(&self, cmd: Append) -> Result<Appended, StoreError> {
        self.append_inner(cmd, None).await
    }

    /// Appends and runs `projector` in the same transaction.
    pub async fn append_with(&self, cmd: Append, projector: &dyn Projector) -> Result<Appended, StoreError> {
        self.append_inner(cmd, Some(projector)).await
    }

    async fn append_inner(&self, cmd: Append, projector: Option<&dyn Projector>) -> Result<Appended, StoreError> {
        self.validate(&cmd)?;
        let started = Instant::now();
        let schema = self.inner.config.schema.clone();
        // A race on `Any` is not the caller's conflict: re-read the head and try again.
        let attempts = if cmd.expected == Expected::Any { 5 } else { 1 };
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match self.try_append(&cmd, projector).await {
                Err(StoreError::Conflict { .. }) if attempt < attempts => continue,
                other => break other,
            }
        };
        match &result {
            Ok(done) => {
                metrics::histogram!(APPEND_DURATION_SECONDS, "schema" => schema)
                    .record(started.elapsed().as_secs_f64());
                self.committed(done);
            }
            Err(StoreError::Conflict { .. }) => {
                metrics::counter!(APPEND_CONFLICTS_TOTAL, "schema" => schema).increment(1);
            }
            Err(_) => {}
        }
        result
    }

    async fn head(&self, conn: &mut PgConnection, cmd: &Append) -> Result<Head, StoreError> {
        let id = cmd.context.aggregate_id;
        let tenant = cmd.context.tenant_id;
        match cmd.expected {
            Expected::Head(token) => Ok(Head { version: token.version, hash: token.hash }),
            Expected::NoStream | Expected::Version(0) => Ok(Head { version: 0, hash: EventHash::GENESIS }),
            Expected::Version(v) => {
                let row = sqlx::query("SELECT hash, tenant_id FROM events WHERE aggregate_id = $1 AND sequence = $2")
                    .bind(id.as_uuid())
                    .bind(v as i64)
                    .fetch_optional(&mut *conn)
                    .await?;
                let Some(row) = row else {
                    return Err(StoreError::Conflict { aggregate: id, expected: v.to_string() });
                };
                if row.try_get::<uuid::Uuid, _>("tenant_id")? != tenant.as_uuid() {
                    return Err(StoreError::NotFound(id));
                }
                let hash = EventHash::from_slice(&row.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?;
                Ok(Head { version: v, hash })
            }
            Expected::Any => {
                let row = sqlx::query(
                    "SELECT sequence, hash, tenant_id FROM events WHERE aggregate_id = $1 ORDER BY sequence DESC LIMIT 1",
                )
                .bind(id.as_uuid())
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else { return Ok(Head { version: 0, hash: EventHash::GENESIS }) };
                if row.try_get::<uuid::Uuid, _>("tenant_id")? != tenant.as_uuid() {
                    return Err(StoreError::NotFound(id));
                }
                let hash = EventHash::from_slice(&row.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?;
                Ok(Head { version: row.try_get::<i64, _>("sequence")? as u64, hash })
            }
        }
    }

    /// Appends inside the caller's transaction (which may hold locks and write projections).
    /// The caller commits, then calls [`EventStore::committed`]. A stale expectation surfaces as
    /// [`StoreError::Conflict`] and leaves the transaction aborted: roll it back.
    pub async fn append_in_tx(&self, tx: &mut PgConnection, cmd: &Append) -> Result<Appended, StoreError> {
        self.validate(cmd)?;
        let head = self.head(tx, cmd).await?;
        self.write(tx, cmd, head, None).await
    }

    /// Announces appends committed through [`EventStore::append_in_tx`]: metrics, relay wake-up.
    pub fn committed(&self, done: &Appended) {
        if !done.replayed {
            self.announce(done.events.len());
        }
    }

    /// Counts `events` newly committed events and wakes the relay (here, or by NOTIFY elsewhere).
    fn announce(&self, events: usize) {
        if events == 0 {
            return;
        }
        metrics::counter!(EVENTS_APPENDED_TOTAL, "schema" => self.inner.config.schema.clone()).increment(events as u64);
        self.inner.wake.notify_one();
        if !self.inner.local_leader.load(Ordering::Acquire) {
            self.inner.announce.notify_one();
        }
    }

    /// The first result of a command with this idempotency key, if it ran before.
    pub async fn find_idempotent(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<Appended>, StoreError> {
        let row = sqlx::query(
            "SELECT i.aggregate_id, i.last_sequence, i.event_ids, e.hash FROM idempotency i \
             LEFT JOIN events e ON e.aggregate_id = i.aggregate_id AND e.sequence = i.last_sequence \
             WHERE i.tenant_id = $1 AND i.key = $2",
        )
        .bind(tenant.as_uuid())
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let event_ids: Vec<uuid::Uuid> = row.try_get("event_ids")?;
        let hash: Option<Vec<u8>> = row.try_get("hash")?;
        // A retry gets the first answer whole, created ids included: its events, by id.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = ANY($1) AND e.tenant_id = $2 ORDER BY e.sequence"
        );
        let events = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&event_ids)
            .bind(tenant.as_uuid())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| envelope_from_row(self.inner.config.domain, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Appended {
            aggregate_id: AggregateId::from_uuid(row.try_get("aggregate_id")?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            version: row.try_get::<i64, _>("last_sequence")? as u64,
            head: match hash {
                Some(h) => EventHash::from_slice(&h).map_err(StoreError::Corrupt)?,
                None => EventHash::GENESIS,
            },
            event_ids: event_ids
                .into_iter()
                .map(EventId::from_uuid)
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            events,
            replayed: true,
        }))
    }

    fn validate(&self, cmd: &Append) -> Result<(), StoreError> {
        if cmd.events.len() > MAX_EVENTS_PER_APPEND {
            return Err(StoreError::Invalid(format!("at most {MAX_EVENTS_PER_APPEND} events per append")));
        }
        if cmd.context.domain != self.inner.config.domain {
            return Err(StoreError::Invalid(format!(
                "event of domain {} appended to the {} store",
                cmd.context.domain, self.inner.config.domain
            )));
        }
        if let Some(key) = &cmd.idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(StoreError::Invalid("idempotency key must be 1 to 200 bytes".into()));
        }
        Ok(())
    }

    async fn try_append(&self, cmd: &Append, projector: Option<&dyn Projector>) -> Result<Appended, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        let head = self.head(&mut conn, cmd).await?;
        self.write(&mut conn, cmd, head, projector).await
    }

    async fn write(
        &self,
        conn: &mut PgConnection,
        cmd: &Append,
        head: Head,
        projector: Option<&dyn Projector>,
    ) -> Result<Appended, StoreError> {
        let id = cmd.context.aggregate_id;
        if cmd.events.is_empty() {
            return Ok(Appended {
                aggregate_id: id,
                version: head.version,
                head: head.hash,
                event_ids: vec![],
                events: vec![],
                replayed: false,
            });
        }
        let batch = Batch::seal(cmd, &head)?;
        let sql = if cmd.idempotency_key.is_some() { APPEND_SQL } else { APPEND_SQL_NO_KEY };
        let query = batch.bind(cmd, sqlx::query(sql));
        let conflict = |e: sqlx::Error| {
            if is_constraint(&e, "events_stream_key") {
                StoreError::Conflict { aggregate: id, expected: cmd.expected.to_string() }
            } else {
                StoreError::Database(e)
            }
        };
        let appended: i64 = match projector {
            None => query.fetch_one(&mut *conn).await.map_err(conflict)?.try_get("appended")?,
            Some(projector) => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let appended: i64 = query.fetch_one(&mut *tx).await.map_err(conflict)?.try_get("appended")?;
                if appended > 0 {
                    projector.project(&mut tx, &batch.sealed).await?;
                }
                tx.commit().await.map_err(conflict)?;
                appended
            }
        };
        if appended == 0 {
            // An idempotency key seen before wins over everything: return the first result.
            if let Some(key) = cmd.idempotency_key.as_deref()
                && let Some(done) = self.find_idempotent(conn, cmd.context.tenant_id, key).await?
            {
                return Ok(done);
            }
            return Err(StoreError::Corrupt("append wrote nothing and gave no reason".into()));
        }
        Ok(batch.appended(id, head.hash))
    }

    /// Validates `cmd` and seals its events on its head token, in the caller's task (its clock
    /// and trace context), for [`EventStore::append_guarded_many`]. Needs [`Expected::Head`] (no
    /// read before the write), events, and no idempotency key.
    pub fn seal_guarded(&self, cmd: &Append) -> Result<SealedAppend, StoreError> {
        self.validate(cmd)?;
        let Expected::Head(token) = cmd.expected else {
            return Err(StoreError::Invalid("a guarded append needs a head token".into()));
        };
        if cmd.idempotency_key.is_some() || cmd.events.is_empty() {
            return Err(StoreError::Invalid("a guarded append takes events and no idempotency key".into()));
        }
        let head = Head { version: token.version, hash: token.hash };
        let batch = Batch::seal(cmd, &head)?;
        Ok(SealedAppend { context: cmd.context.clone(), head, batch, started: Instant::now() })
    }

    /// Appends several aggregates' sealed commands in one statement (see
    /// [`guarded_append_many_sql`]), committed on return: one round trip, one commit and one
    /// statement start for the whole group. The result is aligned with `items`: `None` for a
    /// command its guard turned down (nothing of it was written). An error means nothing was
    /// written. The aggregates must be distinct.
    pub async fn append_guarded_many(
        &self,
        sql: &'static str,
        mut items: Vec<SealedAppend>,
        bind: impl FnOnce(
            sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
        ) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<Option<Appended>>, StoreError> {
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        if let Some(dup) = items.iter().find(|i| !seen.insert(i.context.aggregate_id)) {
            return Err(StoreError::Invalid(format!("aggregate {} twice in one group", dup.context.aggregate_id)));
        }
        let query = bind(bind_many(&mut items, sqlx::query(sql)));
        let written: Vec<uuid::Uuid> = match query.fetch_all(&self.inner.pool).await {
            Ok(rows) => rows.iter().map(|r| r.try_get("aggregate_id")).collect::<Result<_, _>>()?,
            Err(e) if is_constraint(&e, "events_stream_key") => {
                metrics::counter!(APPEND_CONFLICTS_TOTAL, "schema" => self.inner.config.schema.clone()).increment(1);
                return Err(StoreError::Conflict {
                    aggregate: items[0].context.aggregate_id,
                    expected: "the heads of a group".into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let duration = metrics::histogram!(APPEND_DURATION_SECONDS, "schema" => self.inner.config.schema.clone());
        let results: Vec<Option<Appended>> = items
            .into_iter()
            .map(|item| {
                let id = item.context.aggregate_id;
                if !written.contains(&id.as_uuid()) {
                    return None;
                }
                duration.record(item.started.elapsed().as_secs_f64());
                Some(item.batch.appended(id, item.head.hash))
            })
            .collect();
        // One announcement for the group, not one per command.
        self.announce(results.iter().flatten().map(|done| done.events.len()).sum());
        Ok(results)
    }

    /// An aggregate's stored events after `after` (stored form: not upcast), tenant-scoped.
    pub async fn events(
        &self,
        tenant: TenantId,
        id: AggregateId,
        after: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        Ok(self.stored_events(tenant, id, after).await?.into_iter().map(|s| s.envelope).collect())
    }

    /// [`Self::events`] with each payload's stored text, for verification.
    pub async fn stored_events(
        &self,
        tenant: TenantId,
        id: AggregateId,
        after: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.aggregate_id = $1 AND e.tenant_id = $2 AND e.sequence > $3 \
             ORDER BY e.sequence"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_uuid())
            .bind(tenant.as_uuid())
            .bind(after as i64)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(|r| stored_from_row(self.inner.config.domain, r)).collect()
    }

    /// Verifies an aggregate's whole hash chain; returns how many events were checked.
    pub async fn verify(&self, tenant: TenantId, id: AggregateId) -> Result<usize, StoreError> {
        let events = self.stored_events(tenant, id, 0).await?;
        if events.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        cim_core::verify_chain(&events)?;
        Ok(events.len())
    }

    /// The aggregate's history, verified and upcast to current versions.
    pub async fn history(&self, tenant: TenantId, id: AggregateId) -> Result<Vec<EventEnvelope>, StoreError> {
        let events = self.stored_events(tenant, id, 0).await?;
        cim_core::verify_chain(&events)?;
        events.into_iter().map(|e| self.inner.config.upcasters.upcast(e.envelope).map_err(StoreError::from)).collect()
    }

    /// Verifies the hash chain of every aggregate in this schema, one aggregate at a time, each
    /// against the payload text as stored (what `cim verify` runs). An aggregate whose rows do
    /// not even read is reported as broken with why, not as an error of the whole check.
    pub async fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT tenant_id, aggregate_id FROM events").fetch_all(&self.inner.pool).await?;
        let mut report = VerifyReport::default();
        for row in rows {
            let tenant =
                TenantId::from_uuid(row.try_get("tenant_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let id =
                AggregateId::from_uuid(row.try_get("aggregate_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            report.aggregates += 1;
            let checked = match self.stored_events(tenant, id, 0).await {
                Ok(events) => cim_core::verify_chain(&events).map(|()| events.len()).map_err(StoreError::from),
                Err(e) => Err(e),
            };
            match checked {
                Ok(n) => report.events += n,
                Err(StoreError::Database(e)) => return Err(StoreError::Database(e)),
                Err(e) => report.broken.push(BrokenChain { tenant, aggregate: id, why: e.to_string() }),
            }
        }
        Ok(report)
    }

    /// Latest snapshot (if usable) plus later events, verified, upcast and folded. Writes a new
    /// snapshot in the background when many events were folded; writers never wait for it.
    pub async fn load<A: Aggregate>(&self, tenant: TenantId, id: AggregateId) -> Result<Loaded<A>, StoreError> {
        let snapshot = sqlx::query(
            "SELECT sequence, hash, state FROM snapshots \
             WHERE aggregate_id = $1 AND tenant_id = $2 AND state_version = $3",
        )
        .bind(id.as_uuid())
        .bind(tenant.as_uuid())
        .bind(A::SNAPSHOT_VERSION as i32)
        .fetch_optional(&self.inner.pool)
        .await?;
        let (mut state, base, base_hash) = match snapshot {
            Some(row) => {
                let state: sqlx::types::Json<A> = row.try_get("state")?;
                let hash = EventHash::from_slice(&row.try_get::<Vec<u8>, _>("hash")?).map_err(StoreError::Corrupt)?;
                (state.0, row.try_get::<i64, _>("sequence")? as u64, Some(hash))
            }
            None => (A::default(), 0, None),
        };
        let events = self.stored_events(tenant, id, base).await?;
        if events.is_empty() && base == 0 {
            return Err(StoreError::NotFound(id));
        }
        verify_chain_from(base, base_hash.unwrap_or(EventHash::GENESIS), &events)?;
        let folded = events.len() as u64;
        let mut head = base_hash.unwrap_or(EventHash::GENESIS);
        let mut version = base;
        for StoredEvent { envelope: event, .. } in events {
            head = event.hash;
            version = event.sequence;
            let event = self.inner.config.upcasters.upcast(event)?;
            state.apply(&event).map_err(|e| StoreError::Corrupt(format!("applying event {}: {e}", event.event_id)))?;
        }
        if folded >= self.inner.config.snapshot_every.max(1) {
            self.spawn_snapshot::<A>(tenant, id, version, head, &state);
        }
        Ok(Loaded { state, version, head, snapshot_version: (base > 0).then_some(base) })
    }

    fn spawn_snapshot<A: Aggregate>(
        &self,
        tenant: TenantId,
        id: AggregateId,
        version: u64,
        head: EventHash,
        state: &A,
    ) {
        let Ok(json) = serde_json::to_value(state) else { return };
        let pool = self.inner.pool.clone();
        tokio::spawn(async move {
            let result = sqlx::query(
                "INSERT INTO snapshots (aggregate_id, tenant_id, aggregate_type, sequence, hash, state_version, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (aggregate_id) DO UPDATE SET sequence = EXCLUDED.sequence, hash = EXCLUDED.hash, \
                   state_version = EXCLUDED.state_version, state = EXCLUDED.state, taken_at = now() \
                 WHERE snapshots.sequence < EXCLUDED.sequence OR snapshots.state_version <> EXCLUDED.state_version",
            )
            .bind(id.as_uuid())
            .bind(tenant.as_uuid())
            .bind(A::AGGREGATE_TYPE)
            .bind(version as i64)
            .bind(head.as_bytes().to_vec())
            .bind(A::SNAPSHOT_VERSION as i32)
            .bind(sqlx::types::Json(json))
            .execute(&pool)
            .await;
            if let Err(e) = result {
                tracing::warn!(aggregate = %id, error = %e, "snapshot not written");
            }
        });
    }
}
