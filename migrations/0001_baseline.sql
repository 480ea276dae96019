-- The schema as of the first baseline (the chain 0001–0018 that led here is in git history).
-- Tables, indexes, constraints and triggers only: SQL functions are defined once each in
-- migrations/functions/*.sql, which `store::schema` applies before the migrations at every
-- start-up (see migrations/README.md).

------------------------------------------------------------------------------------------------
-- Resources (ARCHITECTURE.md, "Storage")
------------------------------------------------------------------------------------------------

-- Data keys (`purpose` data: seal rows; blind: the blind-index HMAC key), wrapped by the KEK
-- identified by `kek_id`. One active key per purpose. Rows reference their key, so a data key
-- still in use cannot be deleted (src/crypto/keys.rs).
CREATE TABLE data_key (
    id       text PRIMARY KEY,
    purpose  text NOT NULL CHECK (purpose IN ('data', 'blind')),
    wrapped  bytea NOT NULL,
    kek_id   text NOT NULL,
    created  timestamptz NOT NULL DEFAULT clock_timestamp(),
    active   boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX data_key_one_active ON data_key (purpose) WHERE active;

-- Current resources. `content` is the resource without its sealed PHI elements (NULL once
-- deleted); `sealed` holds those elements encrypted, `key_id` names the data key.
CREATE TABLE resource (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    content       jsonb,
    sealed        bytea,
    key_id        text CONSTRAINT resource_key REFERENCES data_key (id),
    PRIMARY KEY (resource_type, id)
);
-- _lastUpdated ordering and the default sort of type-level search.
CREATE INDEX resource_type_last_updated ON resource (resource_type, last_updated);
-- Re-encryption finds the rows still under an old key.
CREATE INDEX resource_key_id ON resource (key_id) WHERE key_id IS NOT NULL;

-- Every version, append-only; `seq` is the history order and paging cursor.
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
    key_id        text CONSTRAINT resource_history_key REFERENCES data_key (id),
    PRIMARY KEY (resource_type, id, version_id)
);
-- System-level _history, newest first, keyset-paged on seq.
CREATE UNIQUE INDEX resource_history_seq ON resource_history (seq);
-- Type-level _history.
CREATE INDEX resource_history_type_seq ON resource_history (resource_type, seq);
CREATE INDEX resource_history_key_id ON resource_history (key_id) WHERE key_id IS NOT NULL;

------------------------------------------------------------------------------------------------
-- Search index (ARCHITECTURE.md, "Search index tables"): one row per value of one search
-- parameter of one current resource, extracted in Rust (src/index.rs) and written by
-- search_index_replace in the same transaction as the resource. Deleted resources have no
-- rows. Every table has a `(resource_type, id)` index so that a new version can replace its rows.
------------------------------------------------------------------------------------------------

-- string parameters: default (prefix) and :contains search on `normalized`, :exact on `exact`.
CREATE TABLE search_string (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    normalized    text NOT NULL,
    exact         text NOT NULL
);
-- `Patient?name=smi` seeks `left(normalized, 250)` (a btree entry is at most 2704 bytes; a
-- longer prefix also checks the whole value, `search::indexed::push_prefix`); text_pattern_ops
-- so LIKE 'smi%' uses it whatever the database collation.
CREATE INDEX search_string_value ON search_string (resource_type, param, left(normalized, 250) text_pattern_ops);
CREATE INDEX search_string_owner ON search_string (resource_type, id);

-- token parameters: Coding/CodeableConcept (system, code), Identifier (system, value),
-- ContactPoint (value), code, boolean, id and string elements (code only). Codes and systems
-- over 1000 bytes are stored as keys (`index::index_key`).
CREATE TABLE search_token (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    system        text,
    code          text NOT NULL
);
-- `Patient?identifier=sys|v`, `Observation?code=loinc|x`, `MedicationRequest?status=active`.
CREATE INDEX search_token_value ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (resource_type, id);

-- reference parameters: `Type/id` for references to this server, anything else as written.
CREATE TABLE search_reference (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    target        text NOT NULL
);
-- `Observation?subject=Patient/1`, chains (`subject:Patient.name=`), and who points at a target
-- for `_has`, `_revinclude` and compartments (they always know the source type and parameter).
CREATE INDEX search_reference_value ON search_reference (resource_type, param, target);
CREATE INDEX search_reference_owner ON search_reference (resource_type, id);

-- date parameters: the instants the value covers, [low, high); open Period ends are infinite.
CREATE TABLE search_date (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    param         text        NOT NULL,
    low           timestamptz NOT NULL,
    high          timestamptz NOT NULL
);
-- `date=ge…` / `date=lt…` / `date=eq…`: one bound each.
CREATE INDEX search_date_low ON search_date (resource_type, param, low);
CREATE INDEX search_date_high ON search_date (resource_type, param, high);
CREATE INDEX search_date_owner ON search_date (resource_type, id);

-- number and quantity parameters (quantities with their system, code and unit).
CREATE TABLE search_number (
    resource_type text   NOT NULL,
    id            text   NOT NULL,
    param         text   NOT NULL,
    value         float8 NOT NULL,
    system        text,
    code          text,
    unit          text
);
-- `Observation?value-quantity=gt5.4|http://unitsofmeasure.org|mg`.
CREATE INDEX search_number_value ON search_number (resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (resource_type, id);

-- uri parameters: exact and :below on `uri`.
CREATE TABLE search_uri (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    uri           text NOT NULL
);
-- `ValueSet?url=…`, `url:below=…`.
CREATE INDEX search_uri_value ON search_uri (resource_type, param, uri text_pattern_ops);
CREATE INDEX search_uri_owner ON search_uri (resource_type, id);

-- Blind index rows of protected (sealed) search parameters: 16 bytes of HMAC-SHA256 per form of
-- a value (src/crypto/blind.rs).
CREATE TABLE search_blind (
    resource_type text  NOT NULL,
    id            text  NOT NULL,
    param         text  NOT NULL,
    hash          bytea NOT NULL
);
CREATE INDEX search_blind_value ON search_blind (resource_type, param, hash);
CREATE INDEX search_blind_owner ON search_blind (resource_type, id);

-- Which index build the rows come from: `definitions_hash` names the SearchParameters that
-- produced them; `ironfhir reindex` (and `serve` when the hash changed) rebuilds and records it.
CREATE TABLE search_index_state (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    definitions_hash  text,
    -- The definitions a rebuild in progress uses, and its keyset position ((resource_type, id)
    -- last done); NULL when none runs. A rebuild for other definitions starts over.
    building_hash     text,
    resume_type       text,
    resume_id         text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO search_index_state (singleton, definitions_hash) VALUES (true, NULL);

------------------------------------------------------------------------------------------------
-- Import and export
------------------------------------------------------------------------------------------------

-- Progress of `ironfhir import`, so that an interrupted import continues where it stopped
-- (src/import.rs). One row per input file version: `file_key` is the absolute path, the size
-- and the modification time of the file. The row is written in the same transaction as each
-- batch of resources: NDJSON continues at `bytes_done` (`lines_done` numbers the lines in
-- error reports), a file with `completed` is skipped, Bundles are one unit.
CREATE TABLE import_progress (
    file_key   text        PRIMARY KEY,
    bytes_done bigint      NOT NULL DEFAULT 0,
    lines_done bigint      NOT NULL DEFAULT 0,
    completed  boolean     NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()   -- for operators: when the file last advanced
);

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

------------------------------------------------------------------------------------------------
-- SMART on FHIR authorization server (src/oauth/). Secrets (session ids, codes, refresh
-- tokens, client secrets, passwords) are stored only as hashes.
------------------------------------------------------------------------------------------------

-- Registered OAuth clients (`ironfhir admin client add`).
CREATE TABLE oauth_client (
    client_id     text PRIMARY KEY,
    -- public | secret | jwks | jwks_uri: how the client authenticates at the token endpoint.
    auth_method   text NOT NULL CHECK (auth_method IN ('public', 'secret', 'jwks', 'jwks_uri')),
    redirect_uris text[] NOT NULL DEFAULT '{}',
    -- The most this client may ever be granted (space-separated scopes).
    scope         text NOT NULL,
    secret_hash   text,
    jwks          jsonb,
    jwks_uri      text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- People who sign in at the authorization server (`ironfhir admin user add`).
CREATE TABLE app_user (
    username        text PRIMARY KEY,
    password_hash   text NOT NULL,
    -- Practitioner/ID (staff) or Patient/ID.
    fhir_user       text NOT NULL,
    -- A TOTP secret stored in the clear by a build before TOTP sealing; sealed and cleared at
    -- start-up (`oauth::accounts::seal_plain_totp_secrets`).
    totp_secret     text,
    require_totp    boolean NOT NULL DEFAULT false,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The TOTP secret sealed like PHI (AES-256-GCM, additional data "app_user/<username>/totp").
    totp_sealed     bytea,
    totp_key_id     text REFERENCES data_key (id),
    -- The 30-second step of the last code accepted: a code of that step or an earlier one is
    -- refused, so each code is good once.
    totp_last_step  bigint NOT NULL DEFAULT -1
);

-- Sign-in sessions at the authorization server (cookie holds the secret; we keep its hash).
CREATE TABLE auth_session (
    id_hash     bytea PRIMARY KEY,
    username    text NOT NULL REFERENCES app_user (username) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    ended       boolean NOT NULL DEFAULT false
);

-- An authorization request in progress (between /authorize and the redirect with a code).
CREATE TABLE auth_request (
    id              text PRIMARY KEY,
    csrf            text NOT NULL,
    client_id       text NOT NULL REFERENCES oauth_client (client_id) ON DELETE CASCADE,
    redirect_uri    text NOT NULL,
    scope           text NOT NULL,
    state           text,
    nonce           text,
    code_challenge  text NOT NULL,
    aud             text NOT NULL,
    launch_patient  text,
    launch_encounter text,
    -- Choices made on the way: the role (PractitionerRole/ID or 'patient') and patient.
    role            text,
    patient         text,
    username        text,
    expires_at      timestamptz NOT NULL
);
-- Expired requests are swept by their expiry.
CREATE INDEX auth_request_expires ON auth_request (expires_at);

-- Authorization codes: single use, short-lived, bound to client, redirect URI and PKCE challenge.
CREATE TABLE auth_code (
    code_hash       bytea PRIMARY KEY,
    grant_id        uuid NOT NULL,
    client_id       text NOT NULL,
    redirect_uri    text NOT NULL,
    code_challenge  text NOT NULL,
    scope           text NOT NULL,
    username        text NOT NULL,
    fhir_user       text NOT NULL,
    role            text,
    patient         text,
    encounter       text,
    nonce           text,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

-- One row per grant (what a code exchange starts): refresh tokens rotate within it, and
-- revoking it ends every token issued under it (access tokens carry the grant id).
CREATE TABLE oauth_grant (
    id          uuid PRIMARY KEY,
    client_id   text NOT NULL,
    username    text,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Revocations are polled by every server instance: "revoked since".
CREATE INDEX oauth_grant_revoked ON oauth_grant (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_token (
    token_hash  bytea PRIMARY KEY,
    grant_id    uuid NOT NULL REFERENCES oauth_grant (id) ON DELETE CASCADE,
    client_id   text NOT NULL,
    username    text NOT NULL,
    fhir_user   text NOT NULL,
    scope       text NOT NULL,
    role        text,
    patient     text,
    encounter   text,
    expires_at  timestamptz NOT NULL,
    -- Set when the token was exchanged: presenting it again is reuse and ends the grant.
    used_at     timestamptz
);

-- `jti`s of client assertions seen until they expire (SMART Backend Services replay check).
CREATE TABLE client_assertion_jti (
    client_id   text NOT NULL,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

-- Access tokens revoked before their expiry (`/auth/revoke`), by `jti`.
CREATE TABLE revoked_access_token (
    jti         text PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_access_token_at ON revoked_access_token (revoked_at);

-- EHR launch contexts minted by the server (`launch` parameter).
CREATE TABLE launch_context (
    id          text PRIMARY KEY,
    patient     text,
    encounter   text,
    expires_at  timestamptz NOT NULL
);

------------------------------------------------------------------------------------------------
-- The tamper-evident audit trail (README "Audit trail", src/audit/)
------------------------------------------------------------------------------------------------

-- The hash chain: hash = sha256(prev_hash || convert_to(seq::text || event, 'UTF8') || mac),
-- prev_hash of seq 1 is 32 zero bytes; `event` is `event_text` (the event as the server sent
-- it, its sealed elements removed). Older builds stored the event as jsonb (`event`, hashed as
-- event::text) or only in the AuditEvent resource (hashed as its content::text); `ironfhir audit
-- verify` reads all three. `sealed_mac` is HMAC-SHA256 (the blind-index key) of the sealed
-- elements' plaintext, so the hash stays valid when key rotation re-encrypts `sealed`.
CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY,
    recorded    timestamptz NOT NULL,
    resource_id text NOT NULL,
    event       jsonb,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL,
    sealed_mac  bytea,
    event_text  text,
    sealed      bytea,
    key_id      text
);
CREATE INDEX audit_log_key_id ON audit_log (key_id) WHERE key_id IS NOT NULL;

-- Rows are never deleted and only their sealed elements may be re-encrypted: the triggers refuse
-- anything else to every role (a superuser could disable them, and then `audit verify` names
-- the first record that no longer fits).
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_change BEFORE UPDATE ON audit_log
    FOR EACH ROW WHEN (NEW.seq IS DISTINCT FROM OLD.seq OR NEW.recorded IS DISTINCT FROM OLD.recorded
        OR NEW.resource_id IS DISTINCT FROM OLD.resource_id OR NEW.event IS DISTINCT FROM OLD.event
        OR NEW.event_text IS DISTINCT FROM OLD.event_text
        OR NEW.prev_hash IS DISTINCT FROM OLD.prev_hash OR NEW.hash IS DISTINCT FROM OLD.hash
        OR NEW.sealed_mac IS DISTINCT FROM OLD.sealed_mac)
    EXECUTE FUNCTION audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

-- The searchable AuditEvent resources, projected from the chain (src/audit/projection.rs), are
-- immutable too; key rotation may re-encrypt their sealed elements (`sealed`, `key_id`).
CREATE TRIGGER audit_event_resource_no_delete BEFORE DELETE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent') EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_event_resource_no_change BEFORE UPDATE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent' AND (
        NEW.resource_type IS DISTINCT FROM OLD.resource_type OR NEW.id IS DISTINCT FROM OLD.id
        OR NEW.version_id IS DISTINCT FROM OLD.version_id OR NEW.last_updated IS DISTINCT FROM OLD.last_updated
        OR NEW.deleted IS DISTINCT FROM OLD.deleted OR NEW.content IS DISTINCT FROM OLD.content))
    EXECUTE FUNCTION audit_append_only();

-- How far the projection has come.
CREATE TABLE audit_projection (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    projected_seq bigint NOT NULL
);
INSERT INTO audit_projection (singleton, projected_seq) VALUES (true, 0);

-- Audit intents: every write inserts one row here in its own transaction (type, id, version and
-- who wrote it, no content), so a committed write always has an audit record even if the server
-- stops before the request's AuditEvent joins the chain. audit_append deletes a request's
-- intents in the transaction that appends its AuditEvent; intents left behind are turned into
-- AuditEvents by the recovery pass (src/audit/intent.rs).
CREATE TABLE audit_intent (
    request_id    uuid        NOT NULL,
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    version_id    bigint      NOT NULL,
    agent         jsonb       NOT NULL,
    recorded      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX audit_intent_request ON audit_intent (request_id);
CREATE INDEX audit_intent_recorded ON audit_intent (recorded);
