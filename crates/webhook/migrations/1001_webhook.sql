-- Subscriptions (projected from their events), their signing secrets (never in events: they
-- would be published and kept forever), and the delivery queue the sender works through.

CREATE TABLE webhook_subscriptions (
    tenant_id uuid NOT NULL,
    subscription_id uuid NOT NULL,
    name text NOT NULL,
    filter text NOT NULL,
    -- The filter's domain: the intake of a domain's stream reads only its subscriptions.
    domain text NOT NULL,
    condition text,
    url text NOT NULL,
    state text NOT NULL,
    reason text NOT NULL DEFAULT '',
    version bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, subscription_id)
);
CREATE UNIQUE INDEX webhook_subscriptions_id ON webhook_subscriptions (subscription_id);
CREATE INDEX webhook_subscriptions_intake ON webhook_subscriptions (tenant_id, domain) WHERE state = 'active';

CREATE TABLE webhook_secrets (
    subscription_id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    secret text NOT NULL
);

-- One row per (subscription, event): at least once, in order per aggregate. `event` is the
-- envelope as published (json keeps its text), `traceparent` the trace it continues.
CREATE TABLE webhook_deliveries (
    subscription_id uuid NOT NULL,
    event_id uuid NOT NULL,
    tenant_id uuid NOT NULL,
    aggregate_id uuid NOT NULL,
    sequence bigint NOT NULL,
    subject text NOT NULL,
    event json NOT NULL,
    traceparent text,
    -- pending | delivered | dead
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL DEFAULT now(),
    -- Held by a sender until then (a crashed sender's call is made again after it).
    leased_until timestamptz,
    last_status integer,
    last_error text,
    last_failure_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz,
    PRIMARY KEY (subscription_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (subscription_id, aggregate_id, sequence)
    WHERE state = 'pending';
