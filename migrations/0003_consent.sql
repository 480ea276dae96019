-- Consent that withholds data (src/access/consent.rs): one row per actor an active
-- patient-privacy Consent denies, kept by a trigger on `resource` (consent_denial_sync in
-- migrations/functions/consent.sql) in the transaction that writes the Consent, so a denial
-- takes effect, and a revocation lifts it, with the write that makes it.
CREATE TABLE consent_denial (
    consent_id text      NOT NULL,
    -- `Patient/ID` whose data is withheld.
    patient    text      NOT NULL,
    -- `Organization/ID`, `PractitionerRole/ID`, `Practitioner/ID` …, or '*' (a deny provision
    -- naming no actor: every member of staff).
    actor      text      NOT NULL,
    -- Resource types withheld (`provision.class`); empty: all of the patient's data.
    classes    text[]    NOT NULL DEFAULT '{}',
    -- When the denial holds (`provision.period`).
    during     tstzrange NOT NULL
);
-- "Is anything of these patients withheld from these actors?" (every confined read).
CREATE INDEX consent_denial_patient ON consent_denial (patient, actor);
CREATE INDEX consent_denial_consent ON consent_denial (consent_id);

CREATE TRIGGER consent_denial_sync AFTER INSERT OR UPDATE ON resource
    FOR EACH ROW WHEN (NEW.resource_type = 'Consent') EXECUTE FUNCTION consent_denial_sync();
CREATE TRIGGER consent_denial_forget AFTER DELETE ON resource
    FOR EACH ROW WHEN (OLD.resource_type = 'Consent') EXECUTE FUNCTION consent_denial_forget();
