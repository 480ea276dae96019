-- The transactional outbox (src/events/outbox.rs): every resource version written — by any
-- path, REST, Bundles, import, workflows — queues one event per registered consumer in the
-- writing transaction, so an event exists exactly when its write committed. AuditEvents are
-- left out: the audit trail is its own record, and every read writes one.
CREATE OR REPLACE FUNCTION outbox_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_event (consumer, partition, resource_type, id, version_id, interaction)
    SELECT c.name,
           outbox_partition(w.resource_type, w.id),
           w.resource_type, w.id, w.version_id,
           CASE WHEN w.deleted THEN 'delete' WHEN w.version_id = 1 THEN 'create' ELSE 'update' END
      FROM written w CROSS JOIN outbox_consumer c
     WHERE w.resource_type <> 'AuditEvent'
     ORDER BY w.seq;
    IF FOUND THEN
        PERFORM pg_notify('ironfhir_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

-- The partition of a resource's events (16 partitions; one resource always in the same one).
CREATE OR REPLACE FUNCTION outbox_partition(resource_type text, id text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (abs(hashtext(resource_type || '/' || id)::bigint) % 16)::smallint
$$;
