-- Date ranges for search (search.html#date): a FHIR date, dateTime, instant or Period is a
-- range whose width is the value's precision. Both the indexed value and the search value
-- go through these, so partial dates compare as the spec says.

CREATE FUNCTION fhir_text_range(s text) RETURNS tstzrange
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lo timestamptz;
BEGIN
    IF s IS NULL THEN
        RETURN NULL;
    ELSIF s ~ '^\d{4}$' THEN
        lo := (s || '-01-01T00:00:00Z')::timestamptz;
        RETURN tstzrange(lo, lo + interval '1 year', '[)');
    ELSIF s ~ '^\d{4}-\d{2}$' THEN
        lo := (s || '-01T00:00:00Z')::timestamptz;
        RETURN tstzrange(lo, lo + interval '1 month', '[)');
    ELSIF s ~ '^\d{4}-\d{2}-\d{2}$' THEN
        lo := (s || 'T00:00:00Z')::timestamptz;
        RETURN tstzrange(lo, lo + interval '1 day', '[)');
    ELSIF s ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})?$' THEN
        lo := (CASE WHEN s ~ '(Z|[+-]\d{2}:\d{2})$' THEN s ELSE s || 'Z' END)::timestamptz;
        RETURN tstzrange(lo, lo + interval '1 minute', '[)');
    ELSIF s ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})?$' THEN
        lo := (CASE WHEN s ~ '(Z|[+-]\d{2}:\d{2})$' THEN s ELSE s || 'Z' END)::timestamptz;
        RETURN tstzrange(lo, lo + interval '1 second', '[)');
    ELSIF s ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+(Z|[+-]\d{2}:\d{2})?$' THEN
        lo := (CASE WHEN s ~ '(Z|[+-]\d{2}:\d{2})$' THEN s ELSE s || 'Z' END)::timestamptz;
        RETURN tstzrange(lo, lo + interval '1 millisecond', '[)');
    END IF;
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

-- The range of an indexed JSON value: a date/dateTime/instant string or a Period object.
CREATE FUNCTION fhir_value_range(v jsonb) RETURNS tstzrange
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF jsonb_typeof(v) = 'string' THEN
        RETURN fhir_text_range(v #>> '{}');
    ELSIF jsonb_typeof(v) = 'object' AND (v ? 'start' OR v ? 'end') THEN
        RETURN tstzrange(
            coalesce(lower(fhir_text_range(v ->> 'start')), '-infinity'),
            coalesce(upper(fhir_text_range(v ->> 'end')), 'infinity'),
            '[)');
    END IF;
    RETURN NULL;
END
$$;
