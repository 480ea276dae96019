//! The SMART on FHIR authorization server (SMART App Launch 2.x, RFC 6749, RFC 7636 PKCE,
//! RFC 7523 client assertions, RFC 7009 revocation, RFC 7662 introspection, OpenID Connect).
//!
//! Routes: `/fhir/.well-known/smart-configuration` and `/fhir/.well-known/openid-configuration`
//! (discovery), `/auth/authorize` (server-rendered login, role picker, patient picker and
//! consent pages), `/auth/token`, `/auth/introspect`, `/auth/revoke`, `/auth/jwks`,
//! `/auth/launch` (EHR launch contexts) and `/auth/logout`. Every piece of state lives in
//! PostgreSQL (`migrations/0001_baseline.sql`), so several server instances can run side by side.

pub mod accounts;
pub mod admin_api;
pub mod assertion;
pub mod authorize;
pub mod discovery;
mod pages;
pub mod idtoken;
pub mod token;
pub mod totp;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest;

use crate::rest::AppState;

/// Settings of the authorization server (from `serve`'s flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Lifetime of access tokens.
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens.
    pub refresh_token_ttl: Duration,
    /// A sign-in session ends after this long without use.
    pub session_idle_timeout: Duration,
    /// Wrong passwords in a row before an account is locked.
    pub max_login_failures: i32,
    /// How long a locked account stays locked.
    pub lockout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            session_idle_timeout: Duration::from_secs(1800),
            max_login_failures: 5,
            lockout: Duration::from_secs(900),
        }
    }
}

/// The routes of the authorization server.
pub fn router() -> Router<Arc<AppState>> {
    use axum::routing::{get, post};
    Router::new()
        .route("/fhir/.well-known/smart-configuration", get(discovery::smart_configuration))
        .route("/fhir/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/auth/jwks", get(discovery::jwks))
        .route("/auth/authorize", get(authorize::authorize_get).post(authorize::authorize_post))
        .route("/auth/logout", get(authorize::logout).post(authorize::logout))
        .route("/auth/token", post(token::token))
        .route("/auth/introspect", post(token::introspect))
        .route("/auth/revoke", post(token::revoke))
        .route("/auth/launch", post(token::launch))
        .route("/auth/admin/clients", post(admin_api::add_client))
        .route("/auth/admin/users", post(admin_api::add_user))
}

/// The server's origin (`http://host:port`) for a request: the FHIR base without `/fhir`.
pub fn origin(base: &str) -> String {
    base.strip_suffix("/fhir").unwrap_or(base).to_owned()
}

/// The absolute URL of an authorization-server endpoint (`/auth/token`).
pub fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", origin(base))
}

/// SHA-256 of a secret token, for storing and looking it up without keeping it.
pub fn hash_token(token: &str) -> Vec<u8> {
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

/// A fresh random token (256 bits, base64url).
pub fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An OAuth error (RFC 6749 §5.2): `{"error", "error_description"}`, never cached.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    /// 400 with the given error code.
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status: StatusCode::BAD_REQUEST, error, description: description.into() }
    }

    /// 401 `invalid_client` (with `WWW-Authenticate` for Basic).
    pub fn invalid_client(description: impl Into<String>) -> Self {
        OAuthError { status: StatusCode::UNAUTHORIZED, error: "invalid_client", description: description.into() }
    }

    /// 400 `invalid_grant`.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad("invalid_grant", description)
    }

    /// 500 `server_error` (logged; the client learns nothing more).
    pub fn server(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "authorization server failure");
        OAuthError { status: StatusCode::INTERNAL_SERVER_ERROR, error: "server_error", description: "internal error".into() }
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        OAuthError::server(e)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        tracing::info!(error = self.error, description = %self.description, "OAuth request refused");
        let mut headers = no_store();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ironfhir\""));
        }
        let body = serde_json::json!({ "error": self.error, "error_description": self.description });
        (self.status, headers, axum::Json(body)).into_response()
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache`, as token responses need.
pub fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

/// Parses an `application/x-www-form-urlencoded` body; a parameter given twice is an error
/// (RFC 6749 §3.1).
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, OAuthError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if let Some(k) = first_repeated(&pairs) {
        return Err(OAuthError::bad("invalid_request", format!("parameter {} is repeated", crate::fhir::types::sanitize(k))));
    }
    if let Some(k) = first_with_control(&pairs) {
        return Err(OAuthError::bad("invalid_request", format!("parameter {} holds a control character", crate::fhir::types::sanitize(k))));
    }
    Ok(pairs)
}

/// The first parameter whose name or value holds a control character (RFC 6749 values are
/// printable; PostgreSQL cannot store U+0000).
pub fn first_with_control(pairs: &[(String, String)]) -> Option<&str> {
    use crate::fhir::types::has_forbidden_control;
    pairs.iter().find(|(k, v)| has_forbidden_control(k) || has_forbidden_control(v)).map(|(k, _)| k.as_str())
}

/// The first parameter name that occurs twice (RFC 6749 §3.1: parameters MUST NOT be
/// included more than once), in one pass: the names are the client's, so a check comparing
/// every pair would let one request cost quadratic time.
pub fn first_repeated(pairs: &[(String, String)]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    pairs.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
}

/// The value of a form parameter.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// Loads the revocations made so far (at start-up) and then polls for new ones every two
/// seconds, so a token revoked through another server instance stops working here too.
pub fn spawn_revocation_poller(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut since = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        loop {
            match load_revocations(&state, since).await {
                Ok(latest) => since = latest.unwrap_or(since),
                Err(e) => tracing::warn!(error = %e, "cannot load token revocations"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

async fn load_revocations(
    state: &AppState,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
    let pool = state.store.pool();
    let tokens: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT jti, revoked_at FROM revoked_access_token WHERE revoked_at >= $1 AND expires_at > now()")
            .bind(since)
            .fetch_all(pool)
            .await?;
    let grants: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, revoked_at FROM oauth_grant WHERE revoked_at >= $1").bind(since).fetch_all(pool).await?;
    let mut latest = None::<chrono::DateTime<chrono::Utc>>;
    for (jti, at) in tokens {
        state.tokens.revoke_token(&jti);
        latest = Some(latest.map_or(at, |l| l.max(at)));
    }
    for (grant, at) in grants {
        state.tokens.revoke_grant(&grant.to_string());
        latest = Some(latest.map_or(at, |l| l.max(at)));
    }
    Ok(latest)
}
