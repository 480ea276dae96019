-- Bulk Data `$export` jobs (src/export/). A job row outlives the server process: a restarted
-- server (or another replica) picks up `accepted` jobs and `in-progress` jobs whose worker
-- stopped sending heartbeats, and runs them again from the start.
CREATE TABLE export_job (
    id               uuid        PRIMARY KEY,
    -- Who asked (`client_id|subject` of the access token): only they may poll, cancel and
    -- download.
    owner            text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('accepted', 'in-progress', 'completed', 'failed')),
    -- The kick-off request URL, echoed as `request` in the manifest.
    request          text        NOT NULL,
    -- The FHIR base URL the download links are built on.
    base             text        NOT NULL,
    -- 'system', 'patient' or 'group'; `group_id` for the latter.
    level            text        NOT NULL CHECK (level IN ('system', 'patient', 'group')),
    group_id         text,
    types            text[]      NOT NULL,
    since            timestamptz,
    -- `_typeFilter` values (`Type?query`), validated at kick-off and parsed again by the worker.
    type_filters     text[]      NOT NULL DEFAULT '{}',
    progress         text,
    heartbeat        timestamptz,
    transaction_time timestamptz,
    manifest         jsonb,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);

CREATE INDEX export_job_runnable ON export_job (created_at) WHERE status IN ('accepted', 'in-progress');
