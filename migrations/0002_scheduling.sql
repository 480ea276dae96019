-- No double booking, guaranteed by PostgreSQL (src/workflows/scheduling/). Every active Appointment
-- occupies, for its [start, end), each practitioner (Practitioner, PractitionerRole) taking part
-- in it and each Slot it books; an exclusion constraint refuses two overlapping occupations of
-- one occupant, whichever path wrote the Appointment (REST, Bundles, import) and however many
-- clients race. The rows are kept by a trigger on `resource` (appointment_booking_sync in
-- migrations/functions/scheduling.sql), in the transaction of the write.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE appointment_booking (
    appointment_id text        NOT NULL,
    -- `Practitioner/ID`, `PractitionerRole/ID` or `Slot/ID`.
    occupant       text        NOT NULL,
    during         tstzrange   NOT NULL,
    -- A hold (`Appointment/$hold`, status pending): stops blocking at this instant; the next
    -- booking that overlaps it removes it, and the hold sweeper cancels the Appointment.
    hold_expires   timestamptz,
    CONSTRAINT appointment_booking_no_overlap EXCLUDE USING gist (occupant WITH =, during WITH &&)
);
-- Holds that expired and were removed by a booking that overlapped them, until the hold
-- sweeper has cancelled their Appointments (src/workflows/scheduling/holds.rs).
CREATE TABLE appointment_hold_lapsed (
    appointment_id text PRIMARY KEY
);

-- A new version of an Appointment replaces its rows.
CREATE INDEX appointment_booking_appointment ON appointment_booking (appointment_id);

CREATE TRIGGER appointment_booking_sync AFTER INSERT OR UPDATE ON resource
    FOR EACH ROW WHEN (NEW.resource_type = 'Appointment') EXECUTE FUNCTION appointment_booking_sync();
CREATE TRIGGER appointment_booking_forget AFTER DELETE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'Appointment') EXECUTE FUNCTION appointment_booking_forget();
