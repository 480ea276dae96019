-- fhir_text_range (migrations/0002) catches errors, and a plpgsql EXCEPTION block starts a
-- subtransaction, which a parallel worker may not: a search PostgreSQL ran in parallel failed
-- with "cannot start subtransactions during a parallel operation" (500). Functions that call
-- it run in the leader only.
ALTER FUNCTION fhir_text_range(text) PARALLEL RESTRICTED;
ALTER FUNCTION fhir_value_range(jsonb) PARALLEL RESTRICTED;
