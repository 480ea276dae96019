-- Case- and accent-folding for string search (search.html#string: "case- and
-- accent-insensitive"). Must equal `search::normalize` in src/search/mod.rs: the same letters
-- are mapped, then lower-cased. IMMUTABLE so index expressions can use it later.
CREATE FUNCTION fhir_normalize(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT lower(translate(t, 'ÀÁÂÃÄÅàáâãäåÇçÈÉÊËèéêëÌÍÎÏìíîïÑñÒÓÔÕÖØòóôõöøÙÚÛÜùúûüÝýÿŠšŽžŁłŚśŹźŻżĆćŃńĘęĄąŐőŰűČčŘřĎďŤťŇňĚěŮů', 'AAAAAAaaaaaaCcEEEEeeeeIIIIiiiiNnOOOOOOooooooUUUUuuuuYyySsZzLlSsZzZzCcNnEeAaOoUuCcRrDdTtNnEeUu')) $$;
