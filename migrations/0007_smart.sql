-- SMART on FHIR authorization server (src/oauth/): registered clients, user accounts, sign-in
-- sessions, authorization requests and codes, refresh-token families, client-assertion replay
-- protection and revoked access tokens. Secrets (session ids, codes, refresh tokens, client
-- secrets, passwords) are stored only as hashes.

-- Registered OAuth clients (`ironfhir admin client add`).
CREATE TABLE oauth_client (
    client_id     text PRIMARY KEY,
    -- public | secret | jwks | jwks_uri: how the client authenticates at the token endpoint.
    auth_method   text NOT NULL CHECK (auth_method IN ('public', 'secret', 'jwks', 'jwks_uri')),
    redirect_uris text[] NOT NULL DEFAULT '{}',
    -- The most this client may ever be granted (space-separated scopes).
    scope         text NOT NULL,
    secret_hash   text,
    jwks          jsonb,
    jwks_uri      text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- People who sign in at the authorization server (`ironfhir admin user add`).
CREATE TABLE app_user (
    username        text PRIMARY KEY,
    password_hash   text NOT NULL,
    -- Practitioner/ID (staff) or Patient/ID.
    fhir_user       text NOT NULL,
    -- Base32 TOTP secret when the user has a second factor.
    totp_secret     text,
    require_totp    boolean NOT NULL DEFAULT false,
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Sign-in sessions at the authorization server (cookie holds the secret; we keep its hash).
CREATE TABLE auth_session (
    id_hash     bytea PRIMARY KEY,
    username    text NOT NULL REFERENCES app_user (username) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    ended       boolean NOT NULL DEFAULT false
);

-- An authorization request in progress (between /authorize and the redirect with a code).
CREATE TABLE auth_request (
    id              text PRIMARY KEY,
    csrf            text NOT NULL,
    client_id       text NOT NULL REFERENCES oauth_client (client_id) ON DELETE CASCADE,
    redirect_uri    text NOT NULL,
    scope           text NOT NULL,
    state           text,
    nonce           text,
    code_challenge  text NOT NULL,
    aud             text NOT NULL,
    launch_patient  text,
    launch_encounter text,
    -- Choices made on the way: the role (PractitionerRole/ID or 'patient') and patient.
    role            text,
    patient         text,
    username        text,
    expires_at      timestamptz NOT NULL
);
-- Expired requests are swept by their expiry.
CREATE INDEX auth_request_expires ON auth_request (expires_at);

-- Authorization codes: single use, short-lived, bound to client, redirect URI and PKCE challenge.
CREATE TABLE auth_code (
    code_hash       bytea PRIMARY KEY,
    grant_id        uuid NOT NULL,
    client_id       text NOT NULL,
    redirect_uri    text NOT NULL,
    code_challenge  text NOT NULL,
    scope           text NOT NULL,
    username        text NOT NULL,
    fhir_user       text NOT NULL,
    role            text,
    patient         text,
    encounter       text,
    nonce           text,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

-- One row per grant (what a code exchange starts): refresh tokens rotate within it, and
-- revoking it ends every token issued under it (access tokens carry the grant id).
CREATE TABLE oauth_grant (
    id          uuid PRIMARY KEY,
    client_id   text NOT NULL,
    username    text,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Revocations are polled by every server instance: "revoked since".
CREATE INDEX oauth_grant_revoked ON oauth_grant (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_token (
    token_hash  bytea PRIMARY KEY,
    grant_id    uuid NOT NULL REFERENCES oauth_grant (id) ON DELETE CASCADE,
    client_id   text NOT NULL,
    username    text NOT NULL,
    fhir_user   text NOT NULL,
    scope       text NOT NULL,
    role        text,
    patient     text,
    encounter   text,
    expires_at  timestamptz NOT NULL,
    -- Set when the token was exchanged: presenting it again is reuse and ends the grant.
    used_at     timestamptz
);

-- `jti`s of client assertions seen until they expire (SMART Backend Services replay check).
CREATE TABLE client_assertion_jti (
    client_id   text NOT NULL,
    jti         text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);

-- Access tokens revoked before their expiry (`/auth/revoke`), by `jti`.
CREATE TABLE revoked_access_token (
    jti         text PRIMARY KEY,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_access_token_at ON revoked_access_token (revoked_at);

-- EHR launch contexts minted by the server (`launch` parameter).
CREATE TABLE launch_context (
    id          text PRIMARY KEY,
    patient     text,
    encounter   text,
    expires_at  timestamptz NOT NULL
);
