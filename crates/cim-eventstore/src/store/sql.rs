//! The statements the store runs and how it reads their rows.

use super::*;

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

pub(super) const APPEND_SQL: &str = append_sql!(
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
pub(super) const APPEND_SQL_NO_KEY: &str = append_sql!("", "$15::text IS NULL AND $16::bigint > 0");

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
