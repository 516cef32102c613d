-- The event store of one service, created inside that service's schema (search_path).

-- Append-only. `position` orders events across aggregates; `(aggregate_id, sequence)` is the
-- optimistic-concurrency guard: two writers at the same expected version cannot both insert.
-- `payload` is `json` (text kept verbatim), not `jsonb`: jsonb rewrites numbers and key order,
-- which would change what the hash chain covers.
CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    sequence        bigint      NOT NULL CHECK (sequence >= 1),
    aggregate_type  text        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    occurred_at     timestamptz NOT NULL,
    tenant_id       uuid        NOT NULL,
    actor           text        NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    payload         json        NOT NULL,
    hash            bytea       NOT NULL,
    prev_hash       bytea       NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_key UNIQUE (aggregate_id, sequence)
);

-- Committed but not yet acknowledged by JetStream. The relay deletes rows once published.
CREATE TABLE outbox (
    position     bigint PRIMARY KEY,
    traceparent  text
);

-- Latest folded state per aggregate; a cache, rebuildable from `events`.
CREATE TABLE snapshots (
    aggregate_id   uuid PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    aggregate_type text        NOT NULL,
    sequence       bigint      NOT NULL,
    hash           bytea       NOT NULL,
    state_version  integer     NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);

-- Events a consumer has applied, recorded in the same transaction as the effect.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Results of commands that carried an idempotency key, so a retry returns the first result.
CREATE TABLE idempotency (
    tenant_id       uuid        NOT NULL,
    key             text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    last_sequence   bigint      NOT NULL,
    event_ids       uuid[]      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
