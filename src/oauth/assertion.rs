//! `private_key_jwt` client authentication (RFC 7523 §2.2, SMART Backend Services): the
//! client signs a short-lived JWT with a key it registered (inline JWKS or a JWKS URL).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sqlx::PgPool;

use super::OAuthError;
use super::accounts::{Client, ClientAuth};

/// The assertion type RFC 7523 defines.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest lifetime an assertion may claim (SMART: `exp` no more than five minutes ahead).
const MAX_LIFETIME_SECS: u64 = 300;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: u64,
    jti: String,
}

/// The client id an assertion names (`iss`/`sub`), read without verifying, to find the client
/// whose keys then verify it.
pub fn claimed_client(assertion: &str) -> Option<String> {
    use base64::Engine;
    let payload = assertion.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")
        .or_else(|| v.get("iss"))
        .and_then(|s| s.as_str())
        .filter(|s| !crate::fhir::types::has_forbidden_control(s))
        .map(str::to_owned)
}

/// Verifies a client assertion for `client` against `token_endpoint` (the `aud`): signature by
/// one of the client's keys with an accepted algorithm, `iss` = `sub` = client id, `exp` in the
/// future but at most five minutes ahead, and a `jti` never seen before (replay).
pub async fn verify(pool: &PgPool, client: &Client, assertion: &str, token_endpoint: &str) -> Result<(), OAuthError> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| OAuthError::invalid_client("the client assertion is not a JWT"))?;
    let alg = header.alg;
    if !matches!(alg, Algorithm::RS384 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::ES256 | Algorithm::RS512 | Algorithm::PS384) {
        return Err(OAuthError::invalid_client("the client assertion's algorithm is not accepted"));
    }
    let keys = match client.auth {
        ClientAuth::Jwks => client.jwks.clone().ok_or_else(|| OAuthError::invalid_client("the client has no registered keys"))?,
        ClientAuth::JwksUri => fetch_jwks(client.jwks_uri.as_deref().unwrap_or("")).await?,
        _ => return Err(OAuthError::invalid_client("the client is not registered for private_key_jwt")),
    };
    let set: JwkSet = serde_json::from_value(keys).map_err(|_| OAuthError::invalid_client("the client's registered JWK Set cannot be read"))?;
    let candidates: Vec<&Jwk> = set
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
        .collect();
    if candidates.is_empty() {
        return Err(OAuthError::invalid_client("no registered key matches the assertion's kid"));
    }
    let mut validation = Validation::new(alg);
    validation.set_audience(&[token_endpoint]);
    validation.set_issuer(&[client.client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    // RFC 7523 §3 item 5: an assertion not valid yet (nbf in the future) is refused.
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    let mut claims = None;
    for key in candidates {
        let Ok(decoding) = DecodingKey::from_jwk(key) else { continue };
        match jsonwebtoken::decode::<AssertionClaims>(assertion, &decoding, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => continue,
                    ErrorKind::ExpiredSignature => return Err(OAuthError::invalid_client("the client assertion has expired")),
                    ErrorKind::ImmatureSignature => return Err(OAuthError::invalid_client("the client assertion is not valid yet (nbf)")),
                    ErrorKind::InvalidAudience => return Err(OAuthError::invalid_client("the client assertion's aud is not this token endpoint")),
                    ErrorKind::InvalidIssuer => return Err(OAuthError::invalid_client("the client assertion's iss is not the client id")),
                    _ => return Err(OAuthError::invalid_client("the client assertion is malformed")),
                }
            }
        }
    }
    let claims = claims.ok_or_else(|| OAuthError::invalid_client("the client assertion's signature does not verify with a registered key"))?;
    if claims.sub != client.client_id || claims.iss != client.client_id {
        return Err(OAuthError::invalid_client("the client assertion's iss and sub must both be the client id"));
    }
    let now = crate::auth::now_secs();
    if claims.exp > now + MAX_LIFETIME_SECS + LEEWAY_SECS {
        return Err(OAuthError::invalid_client("the client assertion's exp is more than five minutes ahead"));
    }
    if claims.jti.is_empty() || claims.jti.len() > 512 || crate::fhir::types::has_forbidden_control(&claims.jti) {
        return Err(OAuthError::invalid_client("the client assertion needs a jti"));
    }
    // Replay protection: a jti is accepted once while the assertion could still be valid.
    sqlx::query("DELETE FROM client_assertion_jti WHERE expires_at < now()").execute(pool).await?;
    let fresh = sqlx::query(
        "INSERT INTO client_assertion_jti (client_id, jti, expires_at) VALUES ($1, $2, to_timestamp($3)) ON CONFLICT DO NOTHING",
    )
    .bind(&client.client_id)
    .bind(&claims.jti)
    .bind((claims.exp + LEEWAY_SECS) as f64)
    .execute(pool)
    .await?
    .rows_affected()
        == 1;
    if !fresh {
        return Err(OAuthError::invalid_client("the client assertion was already used (jti replay)"));
    }
    Ok(())
}

/// JWK Sets fetched from clients' `jwks_uri`, kept five minutes.
static JWKS_CACHE: Mutex<Option<HashMap<String, (Instant, serde_json::Value)>>> = Mutex::new(None);
const JWKS_CACHE_TTL: Duration = Duration::from_secs(300);

async fn fetch_jwks(uri: &str) -> Result<serde_json::Value, OAuthError> {
    if let Ok(cache) = JWKS_CACHE.lock()
        && let Some((at, keys)) = cache.as_ref().and_then(|c| c.get(uri))
        && at.elapsed() < JWKS_CACHE_TTL
    {
        return Ok(keys.clone());
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(OAuthError::server)?;
    let keys: serde_json::Value = client
        .get(uri)
        .header("accept", "application/json")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|_| OAuthError::invalid_client("the client's jwks_uri could not be fetched"))?
        .json()
        .await
        .map_err(|_| OAuthError::invalid_client("the client's jwks_uri did not return a JWK Set"))?;
    if let Ok(mut cache) = JWKS_CACHE.lock() {
        cache.get_or_insert_with(HashMap::new).insert(uri.to_owned(), (Instant::now(), keys.clone()));
    }
    Ok(keys)
}
