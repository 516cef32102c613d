-- Projections of the graph service (schema `graph`), updated in the same transaction as the
-- events; rebuildable from `events`. Versions 1001+ (the event store's own tables are 1..999).

CREATE TABLE graphs (
    graph_id     uuid PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    name         text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    properties   jsonb       NOT NULL DEFAULT '{}',
    archived     boolean     NOT NULL DEFAULT false,
    version      bigint      NOT NULL,
    head_hash    bytea       NOT NULL,
    node_count   bigint      NOT NULL DEFAULT 0,
    edge_count   bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX graphs_by_tenant ON graphs (tenant_id, graph_id);

CREATE TABLE nodes (
    graph_id    uuid  NOT NULL,
    node_id     text  COLLATE "C" NOT NULL,
    node_type   text  NOT NULL,
    properties  jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (graph_id, node_id)
);
CREATE INDEX nodes_by_type ON nodes (graph_id, node_type, node_id);

CREATE TABLE edges (
    graph_id    uuid  NOT NULL,
    edge_id     text  COLLATE "C" NOT NULL,
    edge_type   text  NOT NULL,
    source      text  COLLATE "C" NOT NULL,
    target      text  COLLATE "C" NOT NULL,
    properties  jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (graph_id, edge_id)
);
-- Neighbours out and in, optionally by type: index-only lookups for traversal.
CREATE INDEX edges_out ON edges (graph_id, source, edge_type) INCLUDE (target, edge_id);
CREATE INDEX edges_in ON edges (graph_id, target, edge_type) INCLUDE (source, edge_id);
