-- The tamper-evident audit trail (README "Audit trail"): every AuditEvent the server records is
-- appended here, chained by hash: hash = sha256(prev_hash || seq || event::text), prev_hash of
-- seq 1 is 32 zero bytes. `ironfhir audit verify` recomputes the chain. Rows are never updated
-- or deleted: the triggers below refuse it to every role (a superuser could disable them, and
-- then `audit verify` names the first record that no longer fits). The AuditEvent resources
-- in `resource` are the searchable copy; the triggers make them immutable too.
CREATE TABLE audit_log (
    seq         bigint PRIMARY KEY,
    recorded    timestamptz NOT NULL,
    resource_id text NOT NULL,
    event       jsonb NOT NULL,
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_event_resource_no_change BEFORE UPDATE OR DELETE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'AuditEvent') EXECUTE FUNCTION audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
