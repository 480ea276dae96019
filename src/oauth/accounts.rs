//! Registered OAuth clients and user accounts: what `ironfhir admin client add` and
//! `ironfhir admin user add` write, and what the authorization server checks credentials
//! against. Secrets and passwords are kept only as argon2 hashes.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::auth::scopes;

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A browser or native app without a secret (PKCE only).
    Public,
    /// `client_secret_basic` / `client_secret_post`.
    Secret,
    /// `private_key_jwt` with keys registered inline.
    Jwks,
    /// `private_key_jwt` with keys fetched from a URL.
    JwksUri,
}

impl ClientAuth {
    fn as_str(&self) -> &'static str {
        match self {
            ClientAuth::Public => "public",
            ClientAuth::Secret => "secret",
            ClientAuth::Jwks => "jwks",
            ClientAuth::JwksUri => "jwks_uri",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "public" => ClientAuth::Public,
            "secret" => ClientAuth::Secret,
            "jwks" => ClientAuth::Jwks,
            "jwks_uri" => ClientAuth::JwksUri,
            _ => return None,
        })
    }
}

/// A registered client.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    pub client_id: String,
    pub auth: ClientAuth,
    pub redirect_uris: Vec<String>,
    /// The most this client may be granted.
    pub scope: String,
    #[serde(skip)]
    pub secret_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

impl Client {
    /// Whether `uri` is one of the registered redirect URIs (exact string match, as OAuth 2.0
    /// Security BCP asks).
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|r| r == uri)
    }

    /// The requested scopes this client may be granted (the others are dropped).
    pub fn permitted(&self, requested: &str) -> Vec<String> {
        let allowed: Vec<&str> = self.scope.split_whitespace().collect();
        requested.split_whitespace().filter(|s| scopes::covered_by(s, &allowed)).map(str::to_owned).collect()
    }
}

/// What `admin client add` registers.
pub struct NewClient {
    pub client_id: String,
    pub redirect_uris: Vec<String>,
    pub scope: String,
    pub auth: ClientAuth,
    pub secret: Option<String>,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
}

/// A client's JWK Set as registered: a single JWK is accepted as a set of one.
pub fn jwk_set(value: Value) -> Value {
    if value.get("keys").is_some() { value } else { serde_json::json!({ "keys": [value] }) }
}

/// Hashes a password or client secret with argon2id (a random salt each time).
pub fn hash_secret(secret: &str) -> Result<String, String> {
    Argon2::default().hash_password(secret.as_bytes()).map(|h| h.to_string()).map_err(|e| format!("cannot hash the secret: {e}"))
}

/// Whether `secret` matches an argon2 hash (constant time in the hash comparison).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    Argon2::default().verify_password(secret.as_bytes(), hash).is_ok()
}

/// Registers (or replaces) a client.
pub async fn add_client(pool: &PgPool, new: NewClient) -> Result<Client, String> {
    if new.client_id.is_empty() || new.client_id.len() > 200 || new.client_id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("--client-id must be 1–200 printable characters without spaces".into());
    }
    if new.auth == ClientAuth::Public && new.redirect_uris.is_empty() {
        return Err("a public client needs at least one redirect URI (--redirect-uri, redirect_uris)".into());
    }
    for uri in &new.redirect_uris {
        let scheme = url_scheme(uri).map(str::to_ascii_lowercase);
        if scheme.is_none() || uri.contains('#') || has_control_or_space(uri) {
            return Err(format!("--redirect-uri {}: not an absolute URI without fragment", crate::fhir::types::sanitize(uri)));
        }
        // A code must reach an app, never run as script or be read from a local file
        // (RFC 6749 §10.6, RFC 8252 §7: https, http, or an app's private-use scheme).
        if matches!(scheme.as_deref(), Some("javascript" | "data" | "vbscript" | "file" | "blob" | "about")) {
            return Err(format!("--redirect-uri {}: the {} scheme cannot receive an authorization code", crate::fhir::types::sanitize(uri), scheme.unwrap_or_default()));
        }
    }
    if let Some(uri) = &new.jwks_uri {
        // The server fetches it: https only, or http on a loopback address (local tooling).
        let lower = uri.to_ascii_lowercase();
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|p| lower.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])));
        if has_control_or_space(uri) || !(lower.starts_with("https://") || loopback) {
            return Err("--jwks-uri must be an https:// URL (or http:// on a loopback address)".into());
        }
    }
    if let Some(jwks) = &new.jwks {
        if jwks.get("keys").and_then(Value::as_array).is_none_or(|k| k.is_empty()) {
            return Err("--jwks: the file is not a JWK Set with at least one key".into());
        }
        for key in jwks["keys"].as_array().into_iter().flatten() {
            if key.get("d").is_some() {
                return Err("--jwks: the JWK Set holds a private key; register only public keys".into());
            }
        }
    }
    let secret_hash = match &new.secret {
        Some(s) => {
            let s = s.clone();
            Some(tokio::task::spawn_blocking(move || hash_secret(&s)).await.map_err(|e| e.to_string())??)
        }
        None => None,
    };
    sqlx::query(
        "INSERT INTO oauth_client (client_id, auth_method, redirect_uris, scope, secret_hash, jwks, jwks_uri)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (client_id) DO UPDATE SET auth_method = EXCLUDED.auth_method, redirect_uris = EXCLUDED.redirect_uris,
           scope = EXCLUDED.scope, secret_hash = EXCLUDED.secret_hash, jwks = EXCLUDED.jwks, jwks_uri = EXCLUDED.jwks_uri",
    )
    .bind(&new.client_id)
    .bind(new.auth.as_str())
    .bind(&new.redirect_uris)
    .bind(&new.scope)
    .bind(&secret_hash)
    .bind(&new.jwks)
    .bind(&new.jwks_uri)
    .execute(pool)
    .await
    .map_err(|e| format!("cannot register the client: {e}"))?;
    Ok(Client {
        client_id: new.client_id,
        auth: new.auth,
        redirect_uris: new.redirect_uris,
        scope: new.scope,
        secret_hash,
        jwks: new.jwks,
        jwks_uri: new.jwks_uri,
    })
}

fn has_control_or_space(s: &str) -> bool {
    s.chars().any(|c| c.is_control() || c.is_whitespace())
}

fn url_scheme(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once(':')?;
    (!scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) && !rest.is_empty()).then_some(scheme)
}

/// A client by id.
pub async fn find_client(pool: &PgPool, client_id: &str) -> Result<Option<Client>, sqlx::Error> {
    let row: Option<(String, String, Vec<String>, String, Option<String>, Option<Value>, Option<String>)> = sqlx::query_as(
        "SELECT client_id, auth_method, redirect_uris, scope, secret_hash, jwks, jwks_uri FROM oauth_client WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(client_id, auth, redirect_uris, scope, secret_hash, jwks, jwks_uri)| {
        Some(Client { client_id, auth: ClientAuth::parse(&auth)?, redirect_uris, scope, secret_hash, jwks, jwks_uri })
    }))
}

/// A user account.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub username: String,
    /// `Practitioner/ID` or `Patient/ID`.
    pub fhir_user: String,
    pub require_totp: bool,
    #[serde(skip)]
    pub totp_secret: Option<String>,
}

impl User {
    /// The Patient id when the user is a patient.
    pub fn patient_id(&self) -> Option<&str> {
        self.fhir_user.strip_prefix("Patient/")
    }
}

/// What `admin user add` registers.
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub fhir_user: String,
    pub totp_secret: Option<String>,
    pub require_totp: bool,
}

/// Shortest password accepted.
pub const MIN_PASSWORD_LENGTH: usize = 8;

/// Registers (or replaces) a user account.
pub async fn add_user(pool: &PgPool, new: NewUser) -> Result<User, String> {
    if new.username.is_empty() || new.username.len() > 200 || new.username.chars().any(char::is_control) {
        return Err("--username must be 1–200 printable characters".into());
    }
    if new.password.chars().count() < MIN_PASSWORD_LENGTH {
        return Err(format!("the password must have at least {MIN_PASSWORD_LENGTH} characters"));
    }
    let valid_user = new
        .fhir_user
        .split_once('/')
        .is_some_and(|(t, id)| (t == "Practitioner" || t == "Patient") && crate::fhir::types::Id::is_valid(id));
    if !valid_user {
        return Err("--fhir-user must be Practitioner/ID or Patient/ID".into());
    }
    let password = new.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&password)).await.map_err(|e| e.to_string())??;
    let sealed = match &new.totp_secret {
        Some(secret) => Some(seal_totp(&new.username, secret).map_err(|e| format!("cannot seal the TOTP secret: {e}"))?),
        None => None,
    };
    sqlx::query(
        "INSERT INTO app_user (username, password_hash, fhir_user, totp_secret, totp_sealed, totp_key_id, require_totp)
         VALUES ($1, $2, $3, NULL, $4, $5, $6)
         ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, fhir_user = EXCLUDED.fhir_user,
           totp_secret = NULL, totp_sealed = EXCLUDED.totp_sealed, totp_key_id = EXCLUDED.totp_key_id,
           totp_last_step = -1, require_totp = EXCLUDED.require_totp, failed_logins = 0, locked_until = NULL",
    )
    .bind(&new.username)
    .bind(&hash)
    .bind(&new.fhir_user)
    .bind(sealed.as_ref().map(|(bytes, _)| bytes.clone()))
    .bind(sealed.as_ref().map(|(_, key)| key.clone()))
    .bind(new.require_totp || new.totp_secret.is_some())
    .execute(pool)
    .await
    .map_err(|e| format!("cannot register the user: {e}"))?;
    Ok(User { username: new.username, fhir_user: new.fhir_user, require_totp: new.require_totp || new.totp_secret.is_some(), totp_secret: new.totp_secret })
}

/// The additional data a user's sealed TOTP secret is bound to (a secret copied to another
/// account's row does not open).
fn totp_aad(username: &str) -> String {
    format!("app_user/{username}/totp")
}

/// Seals a TOTP secret under the active data key: (ciphertext, key id).
fn seal_totp(username: &str, secret: &str) -> crate::error::FhirResult<(Vec<u8>, String)> {
    let keyring = crate::crypto::keyring()?;
    let key_id = keyring.active_key_id();
    Ok((crate::crypto::encrypt(&keyring, &key_id, &totp_aad(username), secret.as_bytes())?, key_id))
}

/// The TOTP secret of a row: sealed (current form) or, for rows not yet sealed, plain.
fn open_totp(username: &str, sealed: Option<Vec<u8>>, key_id: Option<String>, plain: Option<String>) -> Option<String> {
    if let (Some(sealed), Some(key_id)) = (sealed, key_id) {
        let keyring = crate::crypto::keyring().ok()?;
        return match crate::crypto::decrypt(&keyring, &key_id, &totp_aad(username), &sealed) {
            Ok(bytes) => String::from_utf8(bytes).ok(),
            Err(e) => {
                tracing::error!(error = %e, "cannot open a TOTP secret");
                None
            }
        };
    }
    plain
}

/// Seals the TOTP secrets that earlier versions stored in the clear (run at start-up, once
/// the keyring is installed); returns how many were sealed.
pub async fn seal_plain_totp_secrets(pool: &PgPool) -> Result<usize, String> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT username, totp_secret FROM app_user WHERE totp_secret IS NOT NULL")
        .fetch_all(pool)
        .await
        .map_err(|e| e.to_string())?;
    for (username, secret) in &rows {
        let (sealed, key_id) = seal_totp(username, secret).map_err(|e| e.to_string())?;
        sqlx::query("UPDATE app_user SET totp_sealed = $2, totp_key_id = $3, totp_secret = NULL WHERE username = $1 AND totp_secret = $4")
            .bind(username)
            .bind(sealed)
            .bind(key_id)
            .bind(secret)
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(rows.len())
}

type UserRow = (String, String, bool, Option<Vec<u8>>, Option<String>, Option<String>);

/// A user by name.
pub async fn find_user(pool: &PgPool, username: &str) -> Result<Option<User>, sqlx::Error> {
    let row: Option<UserRow> = sqlx::query_as(
        "SELECT username, fhir_user, require_totp, totp_sealed, totp_key_id, totp_secret FROM app_user WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(username, fhir_user, require_totp, sealed, key_id, plain)| {
        let totp_secret = open_totp(&username, sealed, key_id, plain);
        User { username, fhir_user, require_totp, totp_secret }
    }))
}

/// Why a sign-in failed (all render as the same message to the person signing in).
#[derive(Debug, PartialEq, Eq)]
pub enum LoginFailure {
    BadCredentials,
    /// Too many failures: the account is locked until the given time.
    Locked,
    /// The password was right; a TOTP code is needed (or was wrong).
    NeedOtp,
}

/// Checks a password (and TOTP code when the account has one), counting failures: after
/// `max_failures` wrong attempts in a row the account is locked for `lockout`.
pub async fn check_login(
    pool: &PgPool,
    username: &str,
    password: &str,
    otp: Option<&str>,
    max_failures: i32,
    lockout: std::time::Duration,
) -> Result<Result<User, LoginFailure>, sqlx::Error> {
    type LoginRow = (String, bool, Option<Vec<u8>>, Option<String>, Option<String>, bool, String);
    let row: Option<LoginRow> = sqlx::query_as(
        "SELECT password_hash, require_totp, totp_sealed, totp_key_id, totp_secret, coalesce(locked_until > now(), false), fhir_user
           FROM app_user WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    let Some((hash, require_totp, sealed, key_id, plain, locked, fhir_user)) = row else {
        // Spend the same time as a real check, so timing does not tell which names exist.
        let password = password.to_owned();
        let _ = tokio::task::spawn_blocking(move || verify_secret(&password, dummy_hash())).await;
        return Ok(Err(LoginFailure::BadCredentials));
    };
    if locked {
        return Ok(Err(LoginFailure::Locked));
    }
    let pw = password.to_owned();
    let password_ok = tokio::task::spawn_blocking(move || verify_secret(&pw, &hash)).await.unwrap_or(false);
    if !password_ok {
        record_failure(pool, username, max_failures, lockout).await?;
        return Ok(Err(LoginFailure::BadCredentials));
    }
    let totp_secret = open_totp(username, sealed, key_id, plain);
    if require_totp {
        let step = match (totp_secret.as_deref(), otp.filter(|o| !o.is_empty())) {
            (Some(secret), Some(code)) => super::totp::matching_step(secret, code),
            // Required by policy but never enrolled: refuse rather than skip the factor.
            _ => None,
        };
        // A code is good once: its step must be later than the last one accepted (a code seen
        // over a shoulder or in a log cannot be replayed within its window).
        let ok = match step {
            Some(step) => sqlx::query("UPDATE app_user SET totp_last_step = $2 WHERE username = $1 AND totp_last_step < $2")
                .bind(username)
                .bind(i64::try_from(step).unwrap_or(i64::MAX))
                .execute(pool)
                .await?
                .rows_affected()
                == 1,
            None => false,
        };
        if !ok {
            if otp.is_some_and(|o| !o.is_empty()) {
                record_failure(pool, username, max_failures, lockout).await?;
            }
            return Ok(Err(LoginFailure::NeedOtp));
        }
    }
    sqlx::query("UPDATE app_user SET failed_logins = 0, locked_until = NULL WHERE username = $1").bind(username).execute(pool).await?;
    Ok(Ok(User { username: username.to_owned(), fhir_user, require_totp, totp_secret }))
}

/// Counts a failed sign-in (wrong password or one-time code); the `max_failures`-th failure in
/// a row locks the account for `lockout`.
async fn record_failure(pool: &PgPool, username: &str, max_failures: i32, lockout: std::time::Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE app_user SET failed_logins = failed_logins + 1,
           locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + make_interval(secs => $3) ELSE locked_until END
         WHERE username = $1",
    )
    .bind(username)
    .bind(max_failures)
    .bind(lockout.as_secs_f64())
    .execute(pool)
    .await
    .map(drop)
}

/// An argon2 hash of a random string, verified against when the user does not exist.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_secret(&uuid::Uuid::new_v4().to_string()).unwrap_or_default())
}

/// A role a staff user can act in: a PractitionerRole that names them, is active and is not
/// past its period.
#[derive(Debug, Clone, Serialize)]
pub struct StaffRole {
    /// `PractitionerRole/ID`.
    pub reference: String,
    /// Human-readable label (role code display or text, organisation reference).
    pub label: String,
    /// Scopes the role grants (the role-grant extension).
    pub grant: String,
}

/// The extension on PractitionerRole that states the scopes the role grants.
pub const ROLE_GRANT_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/role-grant";

/// The active roles of a practitioner.
pub async fn staff_roles(pool: &PgPool, practitioner: &str) -> Result<Vec<StaffRole>, sqlx::Error> {
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT r.id, r.content FROM search_reference s
           JOIN resource r ON r.resource_type = 'PractitionerRole' AND r.id = s.id AND NOT r.deleted
          WHERE s.resource_type = 'PractitionerRole' AND s.param = 'practitioner' AND s.target = $1
          ORDER BY r.id",
    )
    .bind(practitioner)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().filter(|(_, c)| crate::access::roles::role_is_current(c)).map(|(id, c)| staff_role(&id, &c)).collect())
}

/// The label and grant of a PractitionerRole.
pub fn staff_role(id: &str, role: &Value) -> StaffRole {
    let code = role
        .get("code")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("text").or_else(|| c.get("coding").and_then(|cs| cs.get(0)).and_then(|c| c.get("display").or_else(|| c.get("code")))))
        .and_then(Value::as_str)
        .unwrap_or("role");
    let org = role.get("organization").and_then(|o| o.get("display").or_else(|| o.get("reference"))).and_then(Value::as_str).unwrap_or("");
    let grant = crate::access::roles::own_grant(role).grant;
    StaffRole { reference: format!("PractitionerRole/{id}"), label: if org.is_empty() { code.to_owned() } else { format!("{code} — {org}") }, grant }
}

/// The Organization extension (valueBoolean) by which an organisation requires a second
/// factor (TOTP) of everyone acting in one of its roles — or in a role of an organisation
/// below it.
pub const REQUIRE_TOTP_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/require-totp";

/// Whether the organisation of `role` (`PractitionerRole/ID`), or one above it through
/// `partOf`, requires a second factor.
pub async fn organisation_requires_totp(pool: &PgPool, role: &str) -> Result<bool, sqlx::Error> {
    let Some(id) = role.strip_prefix("PractitionerRole/") else { return Ok(false) };
    let row: Option<(Value,)> = sqlx::query_as("SELECT content FROM resource WHERE resource_type = 'PractitionerRole' AND id = $1 AND NOT deleted")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let mut next = row.and_then(|(c,)| crate::access::roles::organization_of(&c));
    let mut seen: Vec<String> = vec![];
    while let Some(org) = next {
        if seen.contains(&org) || seen.len() > 64 {
            break;
        }
        let row: Option<(Value,)> = sqlx::query_as("SELECT content FROM resource WHERE resource_type = 'Organization' AND id = $1 AND NOT deleted")
            .bind(&org)
            .fetch_optional(pool)
            .await?;
        let Some((content,)) = row else { break };
        let requires = content
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| e.get("url").and_then(Value::as_str) == Some(REQUIRE_TOTP_EXTENSION) && e.get("valueBoolean") == Some(&Value::Bool(true)));
        if requires {
            return Ok(true);
        }
        next = content.get("partOf").and_then(|p| p.get("reference")).and_then(Value::as_str).and_then(|r| r.strip_prefix("Organization/")).map(str::to_owned);
        seen.push(org);
    }
    Ok(false)
}

/// Registers a user (CLI and admin API) and returns what to show the operator: the user, and
/// with `totp` the new second-factor secret and its provisioning URI — shown once, for enrolling
/// the authenticator app.
pub async fn register_user(pool: &PgPool, username: String, password: String, fhir_user: String, totp: bool, issuer: &str) -> Result<Value, String> {
    let totp_secret = totp.then(super::totp::new_secret);
    let user = add_user(pool, NewUser { username, password, fhir_user, totp_secret: totp_secret.clone(), require_totp: totp }).await?;
    let mut out = serde_json::to_value(&user).map_err(|e| e.to_string())?;
    if let Some(secret) = totp_secret {
        out["totp_secret"] = serde_json::json!(secret);
        out["totp_uri"] = serde_json::json!(super::totp::provisioning_uri(issuer, &user.username, &secret));
    }
    Ok(out)
}
