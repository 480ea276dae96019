-- The chain row is the durable audit record; the searchable AuditEvent (resource, history and
-- index rows) is projected from it later, in large batches, by src/audit/projection.rs, and
-- brought up to date before any request that reads AuditEvents.
--
-- Why: an audited read paid, on its own path, for one chain row plus an AuditEvent resource, a
-- history row and four or five index rows (measured: audit_append ~55-100 µs per event in
-- PostgreSQL alone, and reads with audit on at 0.30 of reads with it off). Now a read's path
-- writes one chain row, stored as the text the server sent (no jsonb parse on the path); the
-- projection does the rest in batches of thousands, off the request's path.
--
-- New chain rows hold the event as text (`event_text`) and its sealed elements encrypted as
-- the resource's would be (associated data AuditEvent/<resource_id>/1), so the projection
-- copies the ciphertext as it is. The hash formula is unchanged in form:
-- sha256(prev_hash || convert_to(seq::text || event, 'UTF8') || mac), where event is
-- event_text for new rows, event::text for rows of 0008/0009, and the resource's content::text
-- for rows of 0010/0011 (their event lived only in the resource).
ALTER TABLE audit_log ADD COLUMN event_text text;
ALTER TABLE audit_log ADD COLUMN sealed bytea;
ALTER TABLE audit_log ADD COLUMN key_id text;
CREATE INDEX audit_log_key_id ON audit_log (key_id) WHERE key_id IS NOT NULL;

-- Key rotation may re-encrypt a chain row's sealed elements (the chain covers their MAC, not
-- the ciphertext); nothing else of a chain row may change, and no row may go.
DROP TRIGGER audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_change BEFORE UPDATE ON audit_log
    FOR EACH ROW WHEN (NEW.seq IS DISTINCT FROM OLD.seq OR NEW.recorded IS DISTINCT FROM OLD.recorded
        OR NEW.resource_id IS DISTINCT FROM OLD.resource_id OR NEW.event IS DISTINCT FROM OLD.event
        OR NEW.event_text IS DISTINCT FROM OLD.event_text
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

DROP FUNCTION audit_append(timestamptz[], text[], text[], bytea[], uuid[], bytea[], text[], text[], text[], text[], text[], text[], text[], text[], jsonb);

-- Appends prepared events (ids, times, texts, MACs, sealed elements) to the chain and deletes
-- the audit intents of the requests they complete. Everything but the head, the hashes and the
-- insert is done before the chain lock is taken (migrations/0011_audit_append_parallel.sql).
CREATE FUNCTION audit_append(p_recorded timestamptz[], p_ids text[], p_events text[], p_macs bytea[], p_requests uuid[],
                             p_sealed bytea[], p_key_ids text[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n         integer := coalesce(cardinality(p_ids), 0);
    head_seq  bigint;
    head_hash bytea;
    seqs      bigint[];
    prevs     bytea[];
    hashes    bytea[];
    event     text;
    i         integer := 0;
BEGIN
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    IF cardinality(p_requests) > 0 THEN
        DELETE FROM audit_intent WHERE request_id = ANY(p_requests);
    END IF;
    seqs := array_fill(0::bigint, ARRAY[n]);
    prevs := array_fill(''::bytea, ARRAY[n]);
    hashes := array_fill(''::bytea, ARRAY[n]);

    PERFORM pg_advisory_xact_lock(7598258041199617140);
    SELECT seq, hash INTO head_seq, head_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        head_seq := 0;
        head_hash := decode(repeat('00', 32), 'hex');
    END IF;
    -- FOREACH walks the texts once (a subscript into an array of texts walks it from the start).
    FOREACH event IN ARRAY p_events LOOP
        i := i + 1;
        head_seq := head_seq + 1;
        seqs[i] := head_seq;
        prevs[i] := head_hash;
        head_hash := sha256(head_hash || convert_to(head_seq::text || event, 'UTF8') || coalesce(p_macs[i], ''::bytea));
        hashes[i] := head_hash;
    END LOOP;
    INSERT INTO audit_log (seq, recorded, resource_id, event_text, prev_hash, sealed_mac, sealed, key_id, hash)
        SELECT s, r, id, e, pr, m, sl, k, h
          FROM unnest(seqs, p_recorded, p_ids, p_events, prevs, p_macs, p_sealed, p_key_ids, hashes) AS t(s, r, id, e, pr, m, sl, k, h);
    RETURN head_seq;
END
$$;

-- Writes the AuditEvent resources, history rows and reference/date index rows of projected
-- chain rows and moves the projection's mark, in one statement (rows of other index kinds,
-- from custom SearchParameters on AuditEvent, go through search_index_replace). Called by the
-- projector under its advisory lock, so a chain row is projected exactly once.
CREATE FUNCTION audit_project(p_last bigint, p_ids text[], p_recorded timestamptz[], p_events text[],
                              p_sealed bytea[], p_key_ids text[],
                              p_ref_ids text[], p_ref_params text[], p_ref_targets text[],
                              p_date_ids text[], p_date_params text[], p_date_lows text[], p_date_highs text[],
                              p_other_index jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    docs jsonb[] := p_events::jsonb[];
BEGIN
    INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id)
        SELECT 'AuditEvent', i, 1, r, false, d, s, k FROM unnest(p_ids, p_recorded, docs, p_sealed, p_key_ids) AS t(i, r, d, s, k);
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id)
        SELECT 'AuditEvent', i, 1, r, 'POST', false, d, s, k FROM unnest(p_ids, p_recorded, docs, p_sealed, p_key_ids) AS t(i, r, d, s, k);
    IF cardinality(p_ref_ids) > 0 THEN
        INSERT INTO search_reference (resource_type, id, param, target)
            SELECT 'AuditEvent', i, p, t FROM unnest(p_ref_ids, p_ref_params, p_ref_targets) AS u(i, p, t);
    END IF;
    IF cardinality(p_date_ids) > 0 THEN
        INSERT INTO search_date (resource_type, id, param, low, high)
            SELECT 'AuditEvent', i, p, l::timestamptz, h::timestamptz FROM unnest(p_date_ids, p_date_params, p_date_lows, p_date_highs) AS u(i, p, l, h);
    END IF;
    IF p_other_index IS NOT NULL AND jsonb_array_length(p_other_index) > 0 THEN
        PERFORM search_index_replace(array_fill('AuditEvent'::text, ARRAY[cardinality(p_ids)]), p_ids, p_other_index, true);
    END IF;
    UPDATE audit_projection SET projected_seq = p_last;
END
$$;
