-- Values of any length can be indexed and searched (issue 21): PostgreSQL refuses a btree
-- entry over 2704 bytes, which made a write holding a 3,000-character name, code, reference
-- or uri fail with 500.
--
-- Token codes and systems, reference targets and uris over 1000 bytes are stored as keys
-- (`index::index_key`: a prefix, U+0001 and the SHA-256 of the value) that searches compute
-- the same way. Strings keep their whole normalized value, and the prefix index covers its
-- first 250 characters: `Patient?name=smi` seeks `left(normalized, 250)` and a longer prefix
-- also checks the whole value (`search::indexed::push_prefix`).
DROP INDEX search_string_value;
CREATE INDEX search_string_value ON search_string (resource_type, param, left(normalized, 250) text_pattern_ops);

-- A JSON number as float8 for searches on the documents (composite `code-value-quantity`,
-- parameters without index rows): stored decimals beyond float8's range (accepted before
-- `fhir::validate` bounded decimals) are clamped instead of failing every search of the type
-- with "out of range for type double precision".
CREATE FUNCTION fhir_number(v jsonb) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(v) <> 'number' THEN NULL
                WHEN abs(v::numeric) > 1e300 THEN sign(v::numeric)::float8 * 1e300
                WHEN abs(v::numeric) < 1e-300 THEN 0::float8
                ELSE v::numeric::float8 END
$$;
