//! Discovery: SMART's `.well-known/smart-configuration`, OpenID Connect's
//! `.well-known/openid-configuration` and the JWK Set that verifies our tokens.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::endpoint;
use crate::rest::AppState;

/// The scopes the server understands (SMART v1 and v2 forms are both accepted).
pub const SCOPES_SUPPORTED: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "patient/*.rs",
    "patient/*.read",
    "patient/*.write",
    "user/*.cruds",
    "user/*.rs",
    "user/*.read",
    "user/*.write",
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
    "system/*.write",
];

/// SMART capabilities (SMART App Launch 2.0 §Capabilities) this server implements.
pub const CAPABILITIES: &[&str] = &[
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-banner",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
];

/// Algorithms accepted for `private_key_jwt` client assertions.
pub const ASSERTION_ALGORITHMS: &[&str] = &["RS384", "ES384", "RS256", "ES256"];

/// `GET [base]/.well-known/smart-configuration`.
pub async fn smart_configuration(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let base = crate::rest::base_url(&state, &headers);
    let mut config = openid_metadata(&base);
    if let Value::Object(map) = &mut config {
        map.insert("capabilities".into(), json!(CAPABILITIES));
        map.insert("introspection_endpoint".into(), json!(endpoint(&base, "/auth/introspect")));
        map.insert("revocation_endpoint".into(), json!(endpoint(&base, "/auth/revoke")));
        map.insert("management_endpoint".into(), json!(endpoint(&base, "/auth/logout")));
    }
    json_response(config)
}

/// `GET [base]/.well-known/openid-configuration` (the id_token issuer is the FHIR base URL).
pub async fn openid_configuration(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let base = crate::rest::base_url(&state, &headers);
    json_response(openid_metadata(&base))
}

fn openid_metadata(base: &str) -> Value {
    json!({
        "issuer": base,
        "jwks_uri": endpoint(base, "/auth/jwks"),
        "authorization_endpoint": endpoint(base, "/auth/authorize"),
        "token_endpoint": endpoint(base, "/auth/token"),
        "introspection_endpoint": endpoint(base, "/auth/introspect"),
        "revocation_endpoint": endpoint(base, "/auth/revoke"),
        "end_session_endpoint": endpoint(base, "/auth/logout"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES_SUPPORTED,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser", "name"],
    })
}

/// `GET /auth/jwks`: the public key that verifies access tokens and id_tokens.
pub async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    json_response(state.tokens.jwks())
}

fn json_response(value: Value) -> Response {
    ([(axum::http::header::CACHE_CONTROL, "no-cache")], axum::Json(value)).into_response()
}

/// The `rest.security` element of the CapabilityStatement: the SMART-on-FHIR service code and
/// the `oauth-uris` extension with this server's endpoints.
pub fn capability_security(base: &str) -> Value {
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                { "url": "authorize", "valueUri": endpoint(base, "/auth/authorize") },
                { "url": "token", "valueUri": endpoint(base, "/auth/token") },
                { "url": "introspect", "valueUri": endpoint(base, "/auth/introspect") },
                { "url": "revoke", "valueUri": endpoint(base, "/auth/revoke") },
                { "url": "manage", "valueUri": endpoint(base, "/auth/logout") }
            ]
        }],
        "cors": true,
        "service": [{
            "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR" }],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
        }],
        "description": "SMART App Launch 2.0: authorization code with PKCE (S256), refresh tokens, SMART Backend Services (client_credentials with private_key_jwt); v1 and v2 scopes"
    })
}
