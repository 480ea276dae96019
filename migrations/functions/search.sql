-- Search functions (src/search/, src/index.rs). Re-applied by `store::schema` before the
-- migrations whenever this file changes: keep every definition idempotent (CREATE OR REPLACE; a
-- changed signature or return type needs a DROP FUNCTION IF EXISTS of the old one first).

-- Date ranges for search (search.html#date): a FHIR date, dateTime, instant or Period is a
-- range whose width is the value's precision. Both the indexed value and the search value
-- go through these, so partial dates compare as the spec says. PARALLEL RESTRICTED: the
-- EXCEPTION block starts a subtransaction, which a parallel worker may not.
CREATE OR REPLACE FUNCTION fhir_text_range(s text) RETURNS tstzrange
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED AS $$
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

-- The range of an indexed JSON value: a date/dateTime/instant string or a Period object. A
-- Period whose end is before its start (refused on input since Period per-1 is validated, but
-- possibly stored before) covers the instants between its two ends.
CREATE OR REPLACE FUNCTION fhir_value_range(v jsonb) RETURNS tstzrange
LANGUAGE plpgsql IMMUTABLE PARALLEL RESTRICTED AS $$
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

-- Case- and accent-folding for string search (search.html#string: "case- and
-- accent-insensitive"). Must equal `search::normalize` in src/search/mod.rs: the same letters
-- are mapped, then lower-cased. ASCII text takes the fast path: translate() with a multibyte
-- list costs about 0.5 µs per character, and ASCII has no accented letters to map.
CREATE OR REPLACE FUNCTION fhir_normalize(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT CASE WHEN octet_length(t) = length(t) THEN lower(t)
                  ELSE lower(translate(t, 'ÀÁÂÃÄÅàáâãäåÇçÈÉÊËèéêëÌÍÎÏìíîïÑñÒÓÔÕÖØòóôõöøÙÚÛÜùúûüÝýÿŠšŽžŁłŚśŹźŻżĆćŃńĘęĄąŐőŰűČčŘřĎďŤťŇňĚěŮů', 'AAAAAAaaaaaaCcEEEEeeeeIIIIiiiiNnOOOOOOooooooUUUUuuuuYyySsZzLlSsZzZzCcNnEeAaOoUuCcRrDdTtNnEeUu')) END $$;

-- A JSON number as float8 for searches on the documents (composite `code-value-quantity`,
-- parameters without index rows): decimals beyond float8's range (accepted before
-- `fhir::validate` bounded decimals) are clamped instead of failing every search of the type.
CREATE OR REPLACE FUNCTION fhir_number(v jsonb) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) <> 'number' THEN NULL
                WHEN abs(v::numeric) > 1e300 THEN sign(v::numeric)::float8 * 1e300
                WHEN abs(v::numeric) < 1e-300 THEN 0::float8
                ELSE v::numeric::float8 END
$$;

-- Replaces the index rows of the resources `(p_types[i], p_ids[i])` with `p_entries`, a JSON
-- array of `{"t": type, "i": id, "p": param, "k": kind, …}` (kinds and fields: see
-- `index::rows_json`; dates arrive with their bounds computed by the server in `c` and `d`).
-- `p_fresh` says the resources are brand new (server-assigned ids), so there is nothing to
-- delete and no concurrent writer to wait for.
--
-- Concurrent writers of one resource are serialised by a transaction-level advisory lock per
-- resource (taken in sorted order, so batches cannot deadlock on each other): the DELETE then
-- runs with a snapshot taken after the previous writer committed, so no stale row survives.
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
