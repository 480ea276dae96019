-- fhir_value_range (migrations/0002) of a Period whose end is before its start — refused on
-- input since Period per-1 is validated, but possibly stored before — was an error, and every
-- `_sort=date` over such a resource answered 500. Such a Period now covers the instants
-- between its two ends.
CREATE OR REPLACE FUNCTION fhir_value_range(v jsonb) RETURNS tstzrange
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    IF jsonb_typeof(v) = 'string' THEN
        RETURN fhir_text_range(v #>> '{}');
    ELSIF jsonb_typeof(v) = 'object' AND (v ? 'start' OR v ? 'end') THEN
        lo := coalesce(lower(fhir_text_range(v ->> 'start')), '-infinity');
        hi := coalesce(upper(fhir_text_range(v ->> 'end')), 'infinity');
        RETURN tstzrange(least(lo, hi), greatest(lo, hi), '[)');
    END IF;
    RETURN NULL;
END
$$;
