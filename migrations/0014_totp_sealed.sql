-- TOTP secrets are sealed like PHI (AES-256-GCM under a data key, additional data
-- "app_user/<username>/totp"), and each one-time code is accepted once: totp_last_step is the
-- 30-second step of the last code accepted, and a code of that step or an earlier one is refused.
-- Plaintext secrets of earlier versions (totp_secret) are sealed at start-up and cleared.
ALTER TABLE app_user
    ADD COLUMN totp_sealed bytea,
    ADD COLUMN totp_key_id text REFERENCES data_key (id),
    ADD COLUMN totp_last_step bigint NOT NULL DEFAULT -1;
