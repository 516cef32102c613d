-- Projections of the agent service (schema `agent`), updated in the same transaction as the
-- events; rebuildable from `events`. Versions 1001+ (the event store's own tables are 1..999).

CREATE TABLE agents (
    tenant_id             uuid        NOT NULL,
    agent_id              uuid        NOT NULL,
    name                  text        NOT NULL,
    agent_type            text        NOT NULL,
    owner                 text        NOT NULL,
    state                 text        NOT NULL,
    -- Names are ASCII (dotted snake_case): the C collation orders them as the events do.
    capabilities          text[]      COLLATE "C" NOT NULL DEFAULT '{}',
    permissions           text[]      COLLATE "C" NOT NULL DEFAULT '{}',
    tools                 text[]      COLLATE "C" NOT NULL DEFAULT '{}',
    model_provider        text,
    model_name            text,
    model_parameters      jsonb,
    system_prompt         text        NOT NULL DEFAULT '',
    max_concurrent_tasks  integer     NOT NULL,
    -- Tasks assigned to the agent and not finished: kept by the task events that name it as
    -- holder, so routing reads an agent's load from its own row.
    running_tasks         integer     NOT NULL DEFAULT 0,
    version               bigint      NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, agent_id)
);
-- Routing and the capability filter: `capabilities @> $required` (the tenant and state narrow
-- the few rows the index finds).
CREATE INDEX agents_capabilities ON agents USING gin (capabilities);
CREATE INDEX agents_by_state ON agents (tenant_id, state, agent_id);

CREATE TABLE tasks (
    tenant_id              uuid        NOT NULL,
    task_id                uuid        NOT NULL,
    state                  text        NOT NULL,
    required_capabilities  text[]      COLLATE "C" NOT NULL DEFAULT '{}',
    payload                jsonb       NOT NULL,
    priority               integer     NOT NULL,
    deadline               timestamptz,
    correlation            text        NOT NULL DEFAULT '',
    holder                 uuid,
    lease_until            timestamptz,
    attempts               integer     NOT NULL DEFAULT 0,
    result                 jsonb,
    result_cid             text,
    error                  text,
    retryable              boolean,
    version                bigint      NOT NULL,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, task_id)
);
-- The dispatch queue: a tenant's queued tasks by priority, then age (task ids are UUIDv7, so
-- their order is submission order). Partial, so it holds only what is waiting.
CREATE INDEX tasks_queued ON tasks (tenant_id, priority DESC, task_id) WHERE state = 'queued';
CREATE INDEX tasks_by_state ON tasks (tenant_id, state, task_id);
