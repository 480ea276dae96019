-- Consent functions (src/access/consent.rs). Re-applied by `store::schema` before the
-- migrations whenever this file changes: keep every definition idempotent.

-- `Type/id` of a literal reference (relative or absolute, version dropped), or NULL.
CREATE OR REPLACE FUNCTION fhir_local_reference(reference text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substring(reference FROM '(?:^|/)([A-Z][A-Za-z]{1,63}/[A-Za-z0-9.\-]{1,64})(?:/_history/[^/]*)?$')
$$;

-- Keeps consent_denial in step with the current version of a Consent: an active Consent of
-- scope patient-privacy denies, for its patient, each actor of each `deny` provision (the base
-- provision and the provisions nested in it), limited to the provision's classes (resource
-- types) and period. A deny provision without actors denies every member of staff ('*').
CREATE OR REPLACE FUNCTION consent_denial_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    doc     jsonb := NEW.content;
    patient text;
BEGIN
    DELETE FROM consent_denial WHERE consent_id = NEW.id;
    IF NEW.deleted OR doc IS NULL OR coalesce(doc ->> 'status', '') <> 'active'
       OR NOT jsonb_path_exists(doc, '$.scope.coding[*] ? (@.code == "patient-privacy")') THEN
        RETURN NULL;
    END IF;
    patient := fhir_local_reference(doc #>> '{patient,reference}');
    IF patient IS NULL OR NOT starts_with(patient, 'Patient/') THEN
        RETURN NULL;
    END IF;
    INSERT INTO consent_denial (consent_id, patient, actor, classes, during)
    SELECT DISTINCT NEW.id, patient, coalesce(a.actor, '*'),
           coalesce((SELECT array_agg(c ->> 'code') FROM jsonb_array_elements(
                        CASE WHEN jsonb_typeof(p -> 'class') = 'array' THEN p -> 'class' ELSE '[]' END) c
                     WHERE c ? 'code'), '{}'),
           tstzrange(coalesce(lower(fhir_text_range(p #>> '{period,start}')), '-infinity'),
                     coalesce(upper(fhir_text_range(p #>> '{period,end}')), 'infinity'), '[)')
      FROM (SELECT jsonb_path_query(doc, 'lax $.provision ? (@.type == "deny")')
            UNION ALL
            SELECT jsonb_path_query(doc, 'lax $.provision.provision[*] ? (@.type == "deny")')) AS d(p)
      LEFT JOIN LATERAL (
            SELECT fhir_local_reference(x #>> '{reference,reference}') AS actor
              FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p -> 'actor') = 'array' THEN p -> 'actor' ELSE '[]' END) x) a
        ON true
     WHERE a.actor IS NOT NULL OR NOT (p ? 'actor');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION consent_denial_forget() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM consent_denial WHERE consent_id = OLD.id;
    RETURN NULL;
END
$$;
