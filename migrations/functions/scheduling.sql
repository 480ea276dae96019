-- Scheduling functions (src/workflows/scheduling/). Re-applied by `store::schema` before the migrations
-- whenever this file changes: keep every definition idempotent.

-- The URL of the extension that carries a hold's expiry on a pending Appointment.
CREATE OR REPLACE FUNCTION appointment_hold_extension() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'https://ironfhir.dev/fhir/StructureDefinition/hold-expires' $$;

-- `Type/id` of a literal reference (relative or absolute, version dropped) when Type is one
-- that an appointment occupies; NULL otherwise.
CREATE OR REPLACE FUNCTION appointment_occupant(reference text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substring(reference FROM '(?:^|/)((?:Practitioner|PractitionerRole|Slot)/[A-Za-z0-9.\-]{1,64})(?:/_history/[^/]*)?$')
$$;

-- Keeps appointment_booking in step with the current version of an Appointment. Statuses that
-- occupy time: pending (a hold), booked, arrived, checked-in, fulfilled; proposed, cancelled,
-- noshow, entered-in-error and waitlist do not. Participants that declined or are only
-- informed do not occupy. Holds already expired that overlap the new rows are removed first,
-- so an expired hold never blocks a booking.
CREATE OR REPLACE FUNCTION appointment_booking_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    doc       jsonb := NEW.content;
    lo        timestamptz;
    hi        timestamptz;
    expires   timestamptz;
    occupants text[];
BEGIN
    DELETE FROM appointment_booking WHERE appointment_id = NEW.id;
    IF NEW.deleted OR doc IS NULL
       OR coalesce(doc ->> 'status', '') NOT IN ('pending', 'booked', 'arrived', 'checked-in', 'fulfilled') THEN
        RETURN NULL;
    END IF;
    lo := lower(fhir_text_range(doc ->> 'start'));
    hi := lower(fhir_text_range(doc ->> 'end'));
    IF lo IS NULL OR hi IS NULL OR hi <= lo THEN
        RETURN NULL;
    END IF;
    IF doc ->> 'status' = 'pending' THEN
        SELECT lower(fhir_text_range(e ->> 'valueInstant')) INTO expires
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(doc -> 'extension') = 'array' THEN doc -> 'extension' ELSE '[]' END) e
         WHERE e ->> 'url' = appointment_hold_extension() LIMIT 1;
    END IF;
    SELECT array_agg(DISTINCT o) INTO occupants FROM (
        SELECT appointment_occupant(p -> 'actor' ->> 'reference') AS o
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(doc -> 'participant') = 'array' THEN doc -> 'participant' ELSE '[]' END) p
         WHERE coalesce(p ->> 'status', '') <> 'declined' AND coalesce(p ->> 'required', '') <> 'information-only'
        UNION ALL
        SELECT appointment_occupant(s ->> 'reference')
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(doc -> 'slot') = 'array' THEN doc -> 'slot' ELSE '[]' END) s
    ) x WHERE o IS NOT NULL;
    IF occupants IS NULL THEN
        RETURN NULL;
    END IF;
    -- Racers for one occupant's time queue here, in a fixed order, until the one before them has
    -- committed or rolled back; the exclusion constraint then decides at once. Without this,
    -- two transactions inserting conflicting rows each wait for the other's row (exclusion
    -- constraints have no unique index's insertion protocol) and PostgreSQL breaks the cycle
    -- only after deadlock_timeout, one second per round of a 50-client race. The lock is per
    -- occupant and hour the appointment touches, so bookings of one practitioner at other hours
    -- do not wait; two appointments that overlap always share an hour. (Appointments longer
    -- than a week take no hour locks: the constraint alone decides for them.)
    IF hi - lo <= interval '7 days' THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('appointment-booking/' || o || '/' || h, 11))
           FROM unnest(occupants) AS o,
                generate_series(floor(extract(epoch FROM lo) / 3600)::bigint, floor((extract(epoch FROM hi) - 0.001) / 3600)::bigint) AS h
          ORDER BY o, h;
    END IF;
    WITH lapsed AS (
        DELETE FROM appointment_booking
         WHERE occupant = ANY(occupants) AND during && tstzrange(lo, hi, '[)') AND hold_expires <= now()
        RETURNING appointment_id)
    INSERT INTO appointment_hold_lapsed (appointment_id) SELECT DISTINCT appointment_id FROM lapsed
        ON CONFLICT DO NOTHING;
    INSERT INTO appointment_booking (appointment_id, occupant, during, hold_expires)
        SELECT NEW.id, o, tstzrange(lo, hi, '[)'), expires FROM unnest(occupants) AS o;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION appointment_booking_forget() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM appointment_booking WHERE appointment_id = OLD.id;
    RETURN NULL;
END
$$;
