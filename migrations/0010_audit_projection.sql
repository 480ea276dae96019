-- The audit chain row is the durable audit record; the searchable AuditEvent resource (and its
-- history and index rows) is a projection of it, written in large batches by
-- src/audit/projection.rs and brought up to date before any request that reads AuditEvents.
-- The chain row therefore carries the sealed elements itself (encrypted as the resource's are:
-- associated data AuditEvent/<resource_id>/1).
ALTER TABLE audit_log ADD COLUMN sealed bytea;
ALTER TABLE audit_log ADD COLUMN key_id text REFERENCES data_key (id);
CREATE INDEX audit_log_key_id ON audit_log (key_id) WHERE key_id IS NOT NULL;

-- Key rotation may re-encrypt a chain row's sealed elements (the chain covers their MAC, not
-- the ciphertext); nothing else of a chain row may change.
DROP TRIGGER audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_change BEFORE UPDATE ON audit_log
    FOR EACH ROW WHEN (NEW.seq IS DISTINCT FROM OLD.seq OR NEW.recorded IS DISTINCT FROM OLD.recorded
        OR NEW.resource_id IS DISTINCT FROM OLD.resource_id OR NEW.event IS DISTINCT FROM OLD.event
        OR NEW.prev_hash IS DISTINCT FROM OLD.prev_hash OR NEW.hash IS DISTINCT FROM OLD.hash
        OR NEW.sealed_mac IS DISTINCT FROM OLD.sealed_mac)
    EXECUTE FUNCTION audit_append_only();

-- How far the projection has come. Chain rows written before this migration already have
-- their resources.
CREATE TABLE audit_projection (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    projected_seq bigint NOT NULL
);
INSERT INTO audit_projection (singleton, projected_seq) SELECT true, coalesce(max(seq), 0) FROM audit_log;

-- Appends a batch of events to the audit chain in one statement (src/audit/trail.rs): takes the
-- chain lock, reads the head, inserts one row per event with hash = sha256(prev_hash || seq ||
-- event || sealed_mac), and deletes the audit intents of the requests the events complete.
CREATE FUNCTION audit_append(p_recorded timestamptz, p_ids text[], p_events text[], p_macs bytea[], p_requests uuid[],
                             p_sealed bytea[], p_key_ids text[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    ev        jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(7598258041199617140);
    SELECT seq, hash INTO head_seq, head_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        head_seq := 0;
        head_hash := decode(repeat('00', 32), 'hex');
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        head_seq := head_seq + 1;
        ev := p_events[i]::jsonb;
        INSERT INTO audit_log (seq, recorded, resource_id, event, prev_hash, sealed_mac, sealed, key_id, hash)
        VALUES (head_seq, p_recorded, p_ids[i], ev, head_hash, p_macs[i], p_sealed[i], p_key_ids[i],
                sha256(head_hash || convert_to(head_seq::text || ev::text, 'UTF8') || coalesce(p_macs[i], ''::bytea)))
        RETURNING hash INTO head_hash;
    END LOOP;
    IF coalesce(array_length(p_requests, 1), 0) > 0 THEN
        DELETE FROM audit_intent WHERE request_id = ANY(p_requests);
    END IF;
    RETURN head_seq;
END
$$;
