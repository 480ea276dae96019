-- Appends a batch of events to the audit chain in one statement (src/audit/trail.rs): takes the
-- chain lock, reads the head, inserts one row per event with hash = sha256(prev_hash || seq ||
-- event || sealed_mac) (as 0008/0009 define it), and deletes the audit intents of the requests
-- the events complete. One round trip per batch instead of one per event.
CREATE FUNCTION audit_append(p_recorded timestamptz, p_ids text[], p_events text[], p_macs bytea[], p_requests uuid[])
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
        INSERT INTO audit_log (seq, recorded, resource_id, event, prev_hash, sealed_mac, hash)
        VALUES (head_seq, p_recorded, p_ids[i], ev, head_hash, p_macs[i],
                sha256(head_hash || convert_to(head_seq::text || ev::text, 'UTF8') || coalesce(p_macs[i], ''::bytea)))
        RETURNING hash INTO head_hash;
    END LOOP;
    IF coalesce(array_length(p_requests, 1), 0) > 0 THEN
        DELETE FROM audit_intent WHERE request_id = ANY(p_requests);
    END IF;
    RETURN head_seq;
END
$$;
