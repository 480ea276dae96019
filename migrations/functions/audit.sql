-- Audit trail functions (src/audit/). Re-applied by `store::schema` before the migrations
-- whenever this file changes: keep every definition idempotent (CREATE OR REPLACE; a changed
-- signature or return type needs a DROP FUNCTION IF EXISTS of the old one first).

-- The triggers on audit_log and on AuditEvent resources call this to refuse a change.
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

-- Appends prepared events (ids, times, texts, MACs, sealed elements) to the chain and deletes
-- the audit intents of the requests that wrote (the server passes only those). Everything but
-- the head, the hashes and the insert is done before the chain lock is taken, so concurrent
-- appends overlap; hash = sha256(prev_hash || convert_to(seq::text || event, 'UTF8') || mac).
CREATE OR REPLACE FUNCTION audit_append(p_recorded timestamptz[], p_ids text[], p_events text[], p_macs bytea[], p_requests uuid[],
                                        p_sealed bytea[], p_key_ids text[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_seq  bigint;
    head_hash bytea;
    first_seq bigint;
    prevs     bytea[] := '{}';
    hashes    bytea[] := '{}';
    event     text;
    i         integer := 0;
BEGIN
    IF coalesce(cardinality(p_ids), 0) = 0 THEN
        RETURN NULL;
    END IF;
    IF cardinality(p_requests) > 0 THEN
        DELETE FROM audit_intent WHERE request_id = ANY(p_requests);
    END IF;
    PERFORM pg_advisory_xact_lock(7598258041199617140);
    SELECT seq, hash INTO head_seq, head_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        head_seq := 0;
        head_hash := decode(repeat('00', 32), 'hex');
    END IF;
    first_seq := head_seq + 1;
    -- FOREACH walks the texts once (a subscript into an array of texts walks it from the start);
    -- appending to an array variable in place is cheaper than filling it first.
    FOREACH event IN ARRAY p_events LOOP
        i := i + 1;
        head_seq := head_seq + 1;
        prevs := prevs || head_hash;
        head_hash := sha256(head_hash || convert_to(head_seq::text || event, 'UTF8') || coalesce(p_macs[i], ''::bytea));
        hashes := hashes || head_hash;
    END LOOP;
    INSERT INTO audit_log (seq, recorded, resource_id, event_text, prev_hash, sealed_mac, sealed, key_id, hash)
        SELECT first_seq + o - 1, r, id, e, pr, m, sl, k, h
          FROM unnest(p_recorded, p_ids, p_events, prevs, p_macs, p_sealed, p_key_ids, hashes) WITH ORDINALITY AS t(r, id, e, pr, m, sl, k, h, o);
    RETURN head_seq;
END
$$;

-- Writes the AuditEvent resources, history rows and reference/date index rows of projected
-- chain rows and moves the projection's mark, in one statement (rows of other index kinds,
-- from custom SearchParameters on AuditEvent, go through search_index_replace). Called by the
-- projector under its advisory lock, so a chain row is projected exactly once.
CREATE OR REPLACE FUNCTION audit_project(p_last bigint, p_ids text[], p_recorded timestamptz[], p_events text[],
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
