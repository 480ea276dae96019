-- Current resources and their append-only history (ARCHITECTURE.md, "Storage").
-- `content` holds the resource without sealed PHI elements; `sealed` and `key_id` are reserved
-- for the encrypted PHI elements (field-level encryption) so that sealing needs no table rewrite.

CREATE TABLE resource (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    content       jsonb,               -- NULL once deleted
    sealed        bytea,
    key_id        text,
    PRIMARY KEY (resource_type, id)
);

-- _lastUpdated ordering and the default sort of type-level search.
CREATE INDEX resource_type_last_updated ON resource (resource_type, last_updated);

CREATE TABLE resource_history (
    seq           bigint      GENERATED ALWAYS AS IDENTITY,
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    last_updated  timestamptz NOT NULL,
    method        text        NOT NULL,  -- POST, PUT, PATCH or DELETE: Bundle.entry.request in _history
    deleted       boolean     NOT NULL DEFAULT false,
    content       jsonb,
    sealed        bytea,
    key_id        text,
    PRIMARY KEY (resource_type, id, version_id)
);

-- System-level _history, newest first, keyset-paged on seq.
CREATE UNIQUE INDEX resource_history_seq ON resource_history (seq);
-- Type-level _history.
CREATE INDEX resource_history_type_seq ON resource_history (resource_type, seq);
