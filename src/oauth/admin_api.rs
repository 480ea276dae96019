//! The admin HTTP API: `POST /auth/admin/clients` and `POST /auth/admin/users` register what
//! `ironfhir admin client add` / `admin user add` register, for operators' tooling that talks
//! HTTP. Only an operator or backend-service token (no role, no patient) with the scope
//! `system/*.c` (or wider) may call them; answers are the same JSON as the CLI's.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::OAuthError;
use super::accounts::{self, ClientAuth, NewClient};
use crate::auth::{Interaction, ScopeContext};
use crate::rest::AppState;

/// Body of `POST /auth/admin/clients`: exactly one of `public: true`, `secret`, `jwks`,
/// `jwks_uri` says how the client authenticates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientRequest {
    client_id: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    scope: String,
    #[serde(default)]
    public: bool,
    secret: Option<String>,
    jwks: Option<Value>,
    jwks_uri: Option<String>,
}

/// Body of `POST /auth/admin/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRequest {
    username: String,
    password: String,
    fhir_user: String,
    #[serde(default)]
    totp: bool,
}

/// 401 without a valid token, 403 unless it is an operator's with `system/*` create rights.
fn authorize_operator(state: &AppState, headers: &HeaderMap) -> Result<(), OAuthError> {
    let principal = crate::rest::authenticate(state, headers)
        .map_err(|e| OAuthError { status: StatusCode::UNAUTHORIZED, error: "invalid_token", description: e.to_string() })?;
    let operator = principal.role.is_none()
        && principal.patient.is_none()
        && principal.scopes.iter().any(|s| s.context == ScopeContext::System && s.is_wildcard() && s.allows_any(Interaction::Create));
    if operator {
        Ok(())
    } else {
        Err(OAuthError { status: StatusCode::FORBIDDEN, error: "insufficient_scope", description: "the admin API needs an operator token with system/*.c".into() })
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, OAuthError> {
    serde_json::from_slice(body).map_err(|e| OAuthError::bad("invalid_request", format!("the body is not a valid request: {e}")))
}

/// `POST /auth/admin/clients`.
pub async fn add_client(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    created(add_client_inner(&state, &headers, &body).await)
}

/// 201 with what was registered (never cached), or the OAuth-style error.
fn created(result: Result<Value, OAuthError>) -> Response {
    match result {
        Ok(value) => (StatusCode::CREATED, super::no_store(), axum::Json(value)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn add_client_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    authorize_operator(state, headers)?;
    let request: ClientRequest = parse(body)?;
    let methods = [request.public, request.secret.is_some(), request.jwks.is_some(), request.jwks_uri.is_some()];
    if methods.iter().filter(|m| **m).count() != 1 {
        return Err(OAuthError::bad("invalid_request", "give exactly one of public, secret, jwks, jwks_uri"));
    }
    let auth = match (request.public, &request.secret, &request.jwks) {
        (true, _, _) => ClientAuth::Public,
        (_, Some(_), _) => ClientAuth::Secret,
        (_, _, Some(_)) => ClientAuth::Jwks,
        _ => ClientAuth::JwksUri,
    };
    // Over HTTP a registration never silently replaces a client (the CLI's `client add` is the
    // operator's explicit replace).
    if accounts::find_client(state.store.pool(), &request.client_id).await.map_err(OAuthError::server)?.is_some() {
        return Err(OAuthError {
            status: StatusCode::CONFLICT,
            error: "invalid_client_metadata",
            description: "a client with this client_id is registered already".into(),
        });
    }
    let jwks = request.jwks.map(accounts::jwk_set);
    let client = accounts::add_client(
        state.store.pool(),
        NewClient {
            client_id: request.client_id,
            redirect_uris: request.redirect_uris,
            scope: request.scope,
            auth,
            secret: request.secret,
            jwks,
            jwks_uri: request.jwks_uri,
        },
    )
    .await
    .map_err(|e| OAuthError::bad("invalid_request", e))?;
    serde_json::to_value(&client).map_err(OAuthError::server)
}

/// `POST /auth/admin/users`.
pub async fn add_user(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    created(add_user_inner(&state, &headers, &body).await)
}

async fn add_user_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    authorize_operator(state, headers)?;
    let request: UserRequest = parse(body)?;
    accounts::register_user(state.store.pool(), request.username, request.password, request.fhir_user, request.totp, state.tokens.issuer())
        .await
        .map_err(|e| OAuthError::bad("invalid_request", e))
}
