-- Search index tables (ARCHITECTURE.md, "Search index"): one row per value of one search
-- parameter of one current resource, extracted in Rust from the official SearchParameters'
-- FHIRPath (`src/index.rs`) and written by `search_index_replace` in the same transaction as
-- the resource. Deleted resources have no rows. Every table has a `(resource_type, id)` index
-- so that a new version can replace its rows.

-- string parameters: default (prefix) and :contains search on `normalized`, :exact on `exact`.
CREATE TABLE search_string (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    normalized    text NOT NULL,
    exact         text NOT NULL
);
-- `Patient?name=smi` (LIKE 'smi%' needs text_pattern_ops whatever the database collation).
CREATE INDEX search_string_value ON search_string (resource_type, param, normalized text_pattern_ops);
CREATE INDEX search_string_owner ON search_string (resource_type, id);

-- token parameters: Coding/CodeableConcept (system, code), Identifier (system, value),
-- ContactPoint (value), code, boolean, id and string elements (code only).
CREATE TABLE search_token (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    system        text,
    code          text NOT NULL
);
-- `Patient?identifier=sys|v`, `Observation?code=loinc|x`, `MedicationRequest?status=active`.
CREATE INDEX search_token_value ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (resource_type, id);

-- reference parameters: `Type/id` for references to this server, anything else as written.
CREATE TABLE search_reference (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    target        text NOT NULL
);
-- `Observation?subject=Patient/1`, chains (`subject:Patient.name=`), and who points at a target
-- for `_has`, `_revinclude` and compartments (they always know the source type and parameter).
CREATE INDEX search_reference_value ON search_reference (resource_type, param, target);
CREATE INDEX search_reference_owner ON search_reference (resource_type, id);

-- date parameters: the instants the value covers, [low, high); open Period ends are infinite.
CREATE TABLE search_date (
    resource_type text        NOT NULL,
    id            text        NOT NULL,
    param         text        NOT NULL,
    low           timestamptz NOT NULL,
    high          timestamptz NOT NULL
);
-- `date=ge…` / `date=lt…` / `date=eq…`: one bound each.
CREATE INDEX search_date_low ON search_date (resource_type, param, low);
CREATE INDEX search_date_high ON search_date (resource_type, param, high);
CREATE INDEX search_date_owner ON search_date (resource_type, id);

-- number and quantity parameters (quantities with their system, code and unit).
CREATE TABLE search_number (
    resource_type text   NOT NULL,
    id            text   NOT NULL,
    param         text   NOT NULL,
    value         float8 NOT NULL,
    system        text,
    code          text,
    unit          text
);
-- `Observation?value-quantity=gt5.4|http://unitsofmeasure.org|mg`.
CREATE INDEX search_number_value ON search_number (resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (resource_type, id);

-- uri parameters: exact and :below on `uri`.
CREATE TABLE search_uri (
    resource_type text NOT NULL,
    id            text NOT NULL,
    param         text NOT NULL,
    uri           text NOT NULL
);
-- `ValueSet?url=…`, `url:below=…`.
CREATE INDEX search_uri_value ON search_uri (resource_type, param, uri text_pattern_ops);
CREATE INDEX search_uri_owner ON search_uri (resource_type, id);

-- Which index build the rows come from: `definitions_hash` names the SearchParameters that
-- produced them; `ironfhir reindex` (and `serve` when the hash changed) rebuilds and records it.
CREATE TABLE search_index_state (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    definitions_hash  text,
    -- The definitions a rebuild in progress uses, and its keyset position ((resource_type, id)
    -- last done); NULL when none runs. A rebuild for other definitions starts over.
    building_hash     text,
    resume_type       text,
    resume_id         text,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO search_index_state (singleton, definitions_hash) VALUES (true, NULL);

-- Replaces the index rows of the resources `(p_types[i], p_ids[i])` with `p_entries`, a JSON
-- array of `{"t": type, "i": id, "p": param, "k": kind, …}` (kinds and fields: see
-- `index::entries_json`). `p_fresh` says the resources are brand new (server-assigned ids), so
-- there is nothing to delete and no concurrent writer to wait for.
--
-- Concurrent writers of one resource are serialised by a transaction-level advisory lock per
-- resource (taken in sorted order, so batches cannot deadlock on each other): the DELETE then
-- runs with a snapshot taken after the previous writer committed, so no stale row survives.
CREATE FUNCTION search_index_replace(p_types text[], p_ids text[], p_entries jsonb, p_fresh boolean)
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
        d5 AS (DELETE FROM search_number s USING keys k WHERE s.resource_type = k.t AND s.id = k.i)
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
    -- Dates: `a` is the start text, `b` the end text (equal for a single date), ranged by the
    -- same function that ranges search values, so both sides share the precision rules.
    dt AS (INSERT INTO search_date (resource_type, id, param, low, high)
          SELECT t, i, p, coalesce(lower(fhir_text_range(a)), '-infinity'), coalesce(upper(fhir_text_range(b)), 'infinity')
          FROM x WHERE k = 'd' AND (fhir_text_range(a) IS NOT NULL OR fhir_text_range(b) IS NOT NULL)),
    nm AS (INSERT INTO search_number (resource_type, id, param, value, system, code, unit)
          SELECT t, i, p, n, a, b, c FROM x WHERE k = 'n' AND n IS NOT NULL),
    u AS (INSERT INTO search_uri (resource_type, id, param, uri)
          SELECT t, i, p, a FROM x WHERE k = 'u')
    SELECT count(*) INTO written FROM x;
    RETURN written;
END
$$;
