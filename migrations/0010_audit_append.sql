-- The audit chain row no longer carries the event: the AuditEvent resource row (written in the
-- same statement) holds it once, sealed elements and key id included, and the chain hash covers
-- that row's content. Per audited request that is one document, one history row, a few index
-- rows and a small chain row, all written by one statement per group commit
-- (src/audit/trail.rs); rows appended before this migration keep their `event`.
ALTER TABLE audit_log ALTER COLUMN event DROP NOT NULL;

-- Appends a batch of events in one statement: takes the chain lock, reads the head, and for
-- event i (already stamped with its id and meta, its sealed elements removed) writes the chain
-- row with hash = sha256(prev_hash || seq || event::text || sealed_mac), the AuditEvent
-- resource and its history row (with the sealed ciphertext and key id) and, from p_index
-- (search_index_replace's entries for the complete events), its index rows; then deletes the
-- audit intents of the requests the events complete.
CREATE FUNCTION audit_append(p_recorded timestamptz, p_ids text[], p_events text[], p_macs bytea[], p_requests uuid[],
                             p_sealed bytea[], p_key_ids text[], p_index jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n         integer := coalesce(array_length(p_ids, 1), 0);
    head_seq  bigint;
    head_hash bytea;
    ev        jsonb;
    seqs      bigint[] := '{}';
    prevs     bytea[] := '{}';
    hashes    bytea[] := '{}';
    docs      jsonb[] := '{}';
BEGIN
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(7598258041199617140);
    SELECT seq, hash INTO head_seq, head_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF head_seq IS NULL THEN
        head_seq := 0;
        head_hash := decode(repeat('00', 32), 'hex');
    END IF;
    FOR i IN 1 .. n LOOP
        ev := p_events[i]::jsonb;
        head_seq := head_seq + 1;
        seqs := seqs || head_seq;
        prevs := prevs || head_hash;
        head_hash := sha256(head_hash || convert_to(head_seq::text || ev::text, 'UTF8') || coalesce(p_macs[i], ''::bytea));
        hashes := hashes || head_hash;
        docs := docs || ev;
    END LOOP;
    INSERT INTO audit_log (seq, recorded, resource_id, prev_hash, sealed_mac, hash)
        SELECT s, p_recorded, i, pr, m, h FROM unnest(seqs, p_ids, prevs, p_macs, hashes) AS t(s, i, pr, m, h);
    INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id)
        SELECT 'AuditEvent', i, 1, p_recorded, false, d, s, k FROM unnest(p_ids, docs, p_sealed, p_key_ids) AS t(i, d, s, k);
    INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id)
        SELECT 'AuditEvent', i, 1, p_recorded, 'POST', false, d, s, k FROM unnest(p_ids, docs, p_sealed, p_key_ids) AS t(i, d, s, k);
    IF coalesce(array_length(p_requests, 1), 0) > 0 THEN
        DELETE FROM audit_intent WHERE request_id = ANY(p_requests);
    END IF;
    PERFORM search_index_replace(array_fill('AuditEvent'::text, ARRAY[n]), p_ids, p_index, true);
    RETURN head_seq;
END
$$;

-- Date index entries arrive with their bounds computed by the server (src/index.rs, the rules of
-- fhir_text_range): `c` and `d` are the low and high instants ('-infinity'/'infinity' when open),
-- so a write no longer runs the PL/pgSQL range parser four times per date value.
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
          SELECT t, i, p, c::timestamptz, d::timestamptz FROM x WHERE k = 'd'),
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
