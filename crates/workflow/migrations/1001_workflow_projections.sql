-- Projections of the workflow service (schema `workflow`), updated in the same transaction as
-- the events; rebuildable from `events`. Versions 1001+ (the event store's own tables are 1..999).

CREATE TABLE workflow_definitions (
    tenant_id      uuid        NOT NULL,
    definition_id  uuid        NOT NULL,
    name           text        NOT NULL,
    -- The current version's content id, and every version's, oldest first.
    content_id     text        NOT NULL,
    versions       text[]      NOT NULL,
    version        bigint      NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, definition_id)
);

-- Every version's body, so an instance starts from the version it names.
CREATE TABLE workflow_definition_versions (
    tenant_id      uuid        NOT NULL,
    definition_id  uuid        NOT NULL,
    content_id     text        NOT NULL,
    body           jsonb       NOT NULL,
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, definition_id, content_id)
);

CREATE TABLE workflow_instances (
    tenant_id       uuid        NOT NULL,
    instance_id     uuid        NOT NULL,
    definition_id   uuid        NOT NULL,
    content_id      text        NOT NULL,
    name            text        NOT NULL,
    status          text        NOT NULL,
    -- The creating command's correlation id: every event of the instance carries it.
    correlation_id  uuid        NOT NULL,
    error           text        NOT NULL DEFAULT '',
    version         bigint      NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, instance_id)
);
-- The list filters; instance ids are UUIDv7, so id order is creation order (newest first).
CREATE INDEX workflow_instances_by_status ON workflow_instances (tenant_id, status, instance_id DESC);
CREATE INDEX workflow_instances_by_definition ON workflow_instances (tenant_id, definition_id, instance_id DESC);
CREATE INDEX workflow_instances_by_correlation ON workflow_instances (tenant_id, correlation_id, instance_id DESC);
CREATE INDEX workflow_instances_by_created ON workflow_instances (tenant_id, created_at);

-- The engine's due work, one row per unfinished instance: `due_at` is when the engine must look
-- at it next (NULL: it waits on a person or is paused). Every event makes it due at once; the
-- engine, having advanced an instance, sets the next instant its state waits for (a timer, a
-- retry, a timeout) only if no event came in between (`version`). A replica claims due rows
-- (FOR UPDATE SKIP LOCKED) by setting `leased_until`, so one replica advances an instance at a
-- time; the rows survive restarts, so timers do too.
CREATE TABLE workflow_due (
    tenant_id       uuid        NOT NULL,
    instance_id     uuid        NOT NULL,
    correlation_id  uuid        NOT NULL,
    due_at          timestamptz,
    version         bigint      NOT NULL,
    leased_until    timestamptz,
    PRIMARY KEY (tenant_id, instance_id)
);
CREATE INDEX workflow_due_at ON workflow_due (due_at) WHERE due_at IS NOT NULL;
