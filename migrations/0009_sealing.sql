-- PHI sealing (src/crypto): data keys wrapped by the key-encryption key, the blind index, and
-- rotation-friendly audit triggers.

-- Data keys (`purpose` data: seal rows; blind: the blind-index HMAC key), wrapped by the KEK
-- identified by `kek_id`. One active key per purpose. Rows reference their key, so a data key
-- still in use cannot be deleted.
CREATE TABLE data_key (
    id       text PRIMARY KEY,
    purpose  text NOT NULL CHECK (purpose IN ('data', 'blind')),
    wrapped  bytea NOT NULL,
    kek_id   text NOT NULL,
    created  timestamptz NOT NULL DEFAULT clock_timestamp(),
    active   boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX data_key_one_active ON data_key (purpose) WHERE active;

ALTER TABLE resource ADD CONSTRAINT resource_key FOREIGN KEY (key_id) REFERENCES data_key (id);
ALTER TABLE resource_history ADD CONSTRAINT resource_history_key FOREIGN KEY (key_id) REFERENCES data_key (id);
-- Re-encryption finds the rows still under an old key.
CREATE INDEX resource_key_id ON resource (key_id) WHERE key_id IS NOT NULL;
CREATE INDEX resource_history_key_id ON resource_history (key_id) WHERE key_id IS NOT NULL;

-- Blind index rows of protected search parameters: 16 bytes of HMAC-SHA256 per form of a value
-- (src/crypto/blind.rs).
CREATE TABLE search_blind (
    resource_type text  NOT NULL,
    id            text  NOT NULL,
    param         text  NOT NULL,
    hash          bytea NOT NULL
);
CREATE INDEX search_blind_value ON search_blind (resource_type, param, hash);
CREATE INDEX search_blind_owner ON search_blind (resource_type, id);

CREATE OR REPLACE FUNCTION search_index_replace(p_types text[], p_ids text[], p_entries jsonb, p_fresh boolean)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    written integer;
BEGIN
    IF NOT p_fresh THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(k.t || '/' || k.i, 7))
        FROM (SELECT DISTINCT t, i FROM unnest(p_types, p_ids) AS u(t, i) ORDER BY t, i) k;
        WITH keys AS (SELECT * FROM unnest(p_types, p_ids) AS u(t, i)),
        d1 AS (DELETE FROM search_string s USING keys k WHERE s.resource_type = k.t AND s.id = k.i),
        d2 AS (DELETE FROM search_token s USING keys k WHERE s.resource_type = k.t AND s.id = k.i),
        d3 AS (DELETE FROM search_reference s USING keys k WHERE s.resource_type = k.t AND s.id = k.i),
        d4 AS (DELETE FROM search_date s USING keys k WHERE s.resource_type = k.t AND s.id = k.i),
        d5 AS (DELETE FROM search_number s USING keys k WHERE s.resource_type = k.t AND s.id = k.i),
        d6 AS (DELETE FROM search_blind s USING keys k WHERE s.resource_type = k.t AND s.id = k.i)
        DELETE FROM search_uri s USING keys k WHERE s.resource_type = k.t AND s.id = k.i;
    END IF;
    IF p_entries IS NULL OR jsonb_array_length(p_entries) = 0 THEN
        RETURN 0;
    END IF;
    WITH x AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(p_entries)
            AS e(t text, i text, p text, k text, a text, b text, c text, d text, n float8)
    ),
    s AS (INSERT INTO search_string (resource_type, id, param, normalized, exact)
          SELECT t, i, p, a, b FROM x WHERE k = 's'),
    tk AS (INSERT INTO search_token (resource_type, id, param, system, code)
          SELECT t, i, p, b, a FROM x WHERE k = 't'),
    r AS (INSERT INTO search_reference (resource_type, id, param, target)
          SELECT t, i, p, a FROM x WHERE k = 'r'),
    dt AS (INSERT INTO search_date (resource_type, id, param, low, high)
          SELECT t, i, p, coalesce(lower(fhir_text_range(a)), '-infinity'), coalesce(upper(fhir_text_range(b)), 'infinity')
          FROM x WHERE k = 'd' AND (fhir_text_range(a) IS NOT NULL OR fhir_text_range(b) IS NOT NULL)),
    nm AS (INSERT INTO search_number (resource_type, id, param, value, system, code, unit)
          SELECT t, i, p, n, a, b, c FROM x WHERE k = 'n' AND n IS NOT NULL),
    bl AS (INSERT INTO search_blind (resource_type, id, param, hash)
          SELECT DISTINCT t, i, p, decode(a, 'hex') FROM x WHERE k = 'b'),
    u AS (INSERT INTO search_uri (resource_type, id, param, uri)
          SELECT t, i, p, a FROM x WHERE k = 'u')
    SELECT count(*) INTO written FROM x;
    RETURN written;
END
$$;

-- AuditEvent resources stay immutable, but key rotation may re-encrypt their sealed elements:
-- an UPDATE that changes only `sealed` and `key_id` is allowed.
DROP TRIGGER audit_event_resource_no_change ON resource;
CREATE TRIGGER audit_event_resource_no_delete BEFORE DELETE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent') EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_event_resource_no_change BEFORE UPDATE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent' AND (
        NEW.resource_type IS DISTINCT FROM OLD.resource_type OR NEW.id IS DISTINCT FROM OLD.id
        OR NEW.version_id IS DISTINCT FROM OLD.version_id OR NEW.last_updated IS DISTINCT FROM OLD.last_updated
        OR NEW.deleted IS DISTINCT FROM OLD.deleted OR NEW.content IS DISTINCT FROM OLD.content))
    EXECUTE FUNCTION audit_append_only();

-- The audit chain covers the sealed part of each event too: `sealed_mac` is HMAC-SHA256 (the
-- blind-index key) of the sealed elements' plaintext, so the hash stays valid when rotation
-- re-encrypts them, and `audit verify` checks it against the decrypted AuditEvent.
ALTER TABLE audit_log ADD COLUMN sealed_mac bytea;

-- Audit intents: every write inserts one row here in its own transaction (type, id, version and
-- who wrote it, no content), so a committed write always has an audit record even if the server
-- stops before the request's AuditEvent joins the chain. The chain writer deletes a request's
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
