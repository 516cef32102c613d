-- Projections of the document service (schema `document`), updated in the same transaction as
-- the events; rebuildable from `events` (and `content_text` from the stored bytes). Versions
-- 1001+ (the event store's own tables are 1..999).

-- Content the object store holds for a tenant, by content id. An upload pins its row (touching
-- `touched_at`) before it puts the bytes at their address; the sweeper deletes a row, and then
-- its object, only while holding the row's lock, when no version references it and it was not
-- touched within the grace period, so a concurrent upload of the same bytes either waits and
-- puts them again or keeps the row alive. Versions reference rows: a version can never point at
-- content the sweeper removed.
CREATE TABLE content_blobs (
    tenant_id   uuid        NOT NULL,
    cid         text        COLLATE "C" NOT NULL,
    size        bigint      NOT NULL,
    touched_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, cid)
);
CREATE INDEX content_blobs_by_age ON content_blobs (touched_at);

-- The leading text of text-like content (size-capped), for search.
CREATE TABLE content_text (
    tenant_id  uuid NOT NULL,
    cid        text COLLATE "C" NOT NULL,
    body       text NOT NULL,
    PRIMARY KEY (tenant_id, cid),
    FOREIGN KEY (tenant_id, cid) REFERENCES content_blobs (tenant_id, cid) ON DELETE CASCADE
);

CREATE TABLE documents (
    tenant_id        uuid        NOT NULL,
    document_id      uuid        NOT NULL,
    title            text        NOT NULL,
    description      text        NOT NULL DEFAULT '',
    tags             text[]      NOT NULL DEFAULT '{}',
    metadata         jsonb       NOT NULL DEFAULT '{}',
    state            text        NOT NULL,
    purged           boolean     NOT NULL DEFAULT false,
    version          bigint      NOT NULL,
    current_version  integer,
    content_type     text,
    links            jsonb       NOT NULL DEFAULT '[]',
    retain_until     timestamptz,
    legal_hold       boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    search           tsvector    NOT NULL DEFAULT ''::tsvector,
    PRIMARY KEY (tenant_id, document_id)
);
CREATE INDEX documents_search ON documents USING gin (search);
CREATE INDEX documents_by_state ON documents (tenant_id, state, document_id);

CREATE TABLE document_versions (
    tenant_id     uuid        NOT NULL,
    document_id   uuid        NOT NULL,
    version       integer     NOT NULL,
    cid           text        COLLATE "C" NOT NULL,
    size          bigint      NOT NULL,
    content_type  text        NOT NULL,
    filename      text        NOT NULL DEFAULT '',
    tags          text[]      NOT NULL DEFAULT '{}',
    quarantined   boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, document_id, version),
    FOREIGN KEY (tenant_id, document_id) REFERENCES documents (tenant_id, document_id),
    FOREIGN KEY (tenant_id, cid) REFERENCES content_blobs (tenant_id, cid)
);
CREATE INDEX document_versions_by_cid ON document_versions (tenant_id, cid);
