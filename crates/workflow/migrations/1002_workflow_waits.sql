-- What reaches the workflow service from the other domains' streams (and its own): the events
-- waiting steps take, and the events that start definitions. Projections like the rest: written
-- in the events' transaction, rebuildable from `events`.

-- One row per running attempt that waits for an event: a `wait_event` step, an `agent_task`
-- step (its task's end) or a `workflow` step (its child's end). The event consumer looks up the
-- rows of an event's tenant, domain and aggregate, then checks subject and condition.
CREATE TABLE workflow_waits (
    tenant_id       uuid        NOT NULL,
    instance_id     uuid        NOT NULL,
    step            text        NOT NULL,
    attempt         integer     NOT NULL,
    domain          text        NOT NULL,
    subject         text        NOT NULL,
    -- NULL: any aggregate the subject matches.
    aggregate_id    uuid,
    condition       text,
    -- `task` or `child`: what must be withdrawn when the wait ends without its event.
    outreach        text,
    correlation_id  uuid        NOT NULL,
    PRIMARY KEY (tenant_id, instance_id, step)
);
CREATE INDEX workflow_waits_by_aggregate ON workflow_waits (tenant_id, domain, aggregate_id);

-- Tasks and children whose step ended another way (timed out, cancelled, the run failed): the
-- engine cancels each once and deletes its row.
CREATE TABLE workflow_withdrawals (
    tenant_id       uuid        NOT NULL,
    target_id       uuid        NOT NULL,
    outreach        text        NOT NULL,
    instance_id     uuid        NOT NULL,
    correlation_id  uuid        NOT NULL,
    PRIMARY KEY (tenant_id, target_id)
);

-- Each definition's triggers (its current version's): one instance per matching event.
CREATE TABLE workflow_triggers (
    tenant_id       uuid        NOT NULL,
    definition_id   uuid        NOT NULL,
    position        integer     NOT NULL,
    domain          text        NOT NULL,
    subject         text        NOT NULL,
    condition       text,
    PRIMARY KEY (tenant_id, definition_id, position)
);
CREATE INDEX workflow_triggers_by_domain ON workflow_triggers (tenant_id, domain);
