//! The token endpoint (authorization_code with PKCE, refresh_token with rotation and reuse
//! detection, client_credentials with private_key_jwt), introspection (RFC 7662), revocation
//! (RFC 7009) and EHR launch contexts.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::Digest;

use super::accounts::{self, Client, ClientAuth};
use super::{OAuthError, assertion, endpoint, hash_token, no_store, param, parse_form, random_token};
use crate::auth::{Claims, FHIR_AUDIENCE, now_secs, scopes};
use crate::rest::AppState;

/// What an access token is issued for.
struct Issue {
    client_id: String,
    subject: String,
    fhir_user: Option<String>,
    role: Option<String>,
    patient: Option<String>,
    encounter: Option<String>,
    scope: Vec<String>,
    grant: Option<uuid::Uuid>,
}

/// `POST /auth/token`.
pub async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    match token_inner(&state, &headers, &body).await {
        Ok(value) => {
            // Who the tokens were issued to, read back from the access token just signed.
            let principal = value.get("access_token").and_then(Value::as_str).and_then(|t| state.tokens.verify(t).ok());
            let form = parse_form(&body).unwrap_or_default();
            let grant_type = param(&form, "grant_type").map(crate::fhir::types::sanitize).unwrap_or_default();
            let scope = value.get("scope").and_then(Value::as_str).unwrap_or_default();
            crate::audit::record_auth_success(
                &state.audit,
                crate::audit::AuthStep::TokenIssued,
                principal.as_ref().and_then(|p| p.client_id.as_deref()),
                principal.as_ref().map(|p| p.subject.as_str()),
                principal.as_ref().and_then(|p| p.fhir_user.as_deref()),
                &format!("tokens issued (grant_type {grant_type}, scope {})", crate::fhir::types::sanitize(scope)),
            )
            .await;
            (StatusCode::OK, no_store(), axum::Json(value)).into_response()
        }
        Err(e) => {
            let form = parse_form(&body).unwrap_or_default();
            let client = param(&form, "client_id")
                .map(str::to_owned)
                .or_else(|| param(&form, "client_assertion").and_then(super::assertion::claimed_client))
                .map(|c| crate::fhir::types::sanitize(&c));
            let grant_type = param(&form, "grant_type").map(crate::fhir::types::sanitize).unwrap_or_default();
            let reason = format!("{} ({}, grant_type {grant_type})", e.error, e.description);
            crate::audit::record_auth_failure(&state.audit, "token request", client.as_deref(), &reason).await;
            e.into_response()
        }
    }
}

async fn token_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Value, OAuthError> {
    let form = parse_form(body)?;
    let base = crate::rest::base_url(state, headers);
    let token_endpoint = endpoint(&base, "/auth/token");
    let grant_type = param(&form, "grant_type").ok_or_else(|| OAuthError::bad("invalid_request", "grant_type is missing"))?;
    match grant_type {
        "authorization_code" => {
            let client = authenticate_client(state, headers, &form, &token_endpoint).await?;
            authorization_code(state, &client, &form, &base).await
        }
        "refresh_token" => {
            // SMART: a public app refreshes without authenticating (and may omit client_id);
            // the token names its client, which must then be a public one.
            let unauthenticated = param(&form, "client_id").is_none()
                && param(&form, "client_assertion").is_none()
                && param(&form, "client_secret").is_none()
                && headers.get(header::AUTHORIZATION).is_none();
            let client = if unauthenticated {
                public_client_of_refresh_token(state, &form).await?
            } else {
                authenticate_client(state, headers, &form, &token_endpoint).await?
            };
            refresh(state, &client, &form, &base).await
        }
        "client_credentials" => {
            let client = authenticate_client(state, headers, &form, &token_endpoint).await?;
            if client.auth == ClientAuth::Public {
                return Err(OAuthError::bad("unauthorized_client", "public clients cannot use client_credentials"));
            }
            let requested = param(&form, "scope").unwrap_or(&client.scope);
            // Backend services get system/ scopes only.
            let granted: Vec<String> =
                client.permitted(requested).into_iter().filter(|s| s.starts_with("system/")).collect();
            if granted.is_empty() {
                return Err(OAuthError::bad("invalid_scope", "none of the requested scopes is allowed for this client"));
            }
            let issue = Issue {
                client_id: client.client_id.clone(),
                subject: client.client_id.clone(),
                fhir_user: None,
                role: None,
                patient: None,
                encounter: None,
                scope: granted,
                grant: None,
            };
            let (access_token, _) = sign_access_token(state, &issue)?;
            tracing::info!(client = %client.client_id, "access token issued (client_credentials)");
            Ok(json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": state.oauth.access_token_ttl.as_secs(),
                "scope": issue.scope.join(" "),
            }))
        }
        _ => Err(OAuthError::bad("unsupported_grant_type", "grant_type must be authorization_code, refresh_token or client_credentials")),
    }
}

/// Whether the token endpoint URL derived for this request is really this server's, so that a
/// client assertion's `aud` can be checked against it: always with a configured `--base-url`;
/// without one only when the Host header names the address the server listens on (its IP, or
/// `localhost`/a loopback IP for a server listening there or on every interface, at its port).
/// Otherwise a client could replay an assertion minted for another server by sending that
/// server's name as Host.
fn own_token_endpoint(state: &AppState, headers: &HeaderMap) -> bool {
    if state.base_url.is_some() {
        return true;
    }
    let (Some(listen), Some(host)) = (state.listen, headers.get(header::HOST).and_then(|h| h.to_str().ok())) else { return false };
    let Ok(uri) = format!("http://{host}/").parse::<axum::http::Uri>() else { return false };
    if uri.port_u16() != Some(listen.port()) {
        return false;
    }
    let name = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let named: Option<std::net::IpAddr> = if name.eq_ignore_ascii_case("localhost") { Some(std::net::Ipv4Addr::LOCALHOST.into()) } else { name.parse().ok() };
    match named {
        Some(ip) if ip == listen.ip() => true,
        Some(ip) => ip.is_loopback() && (listen.ip().is_unspecified() || listen.ip().is_loopback()),
        None => false,
    }
}

/// Authenticates the client of a token, introspection or revocation request: a client
/// assertion (`private_key_jwt`), HTTP Basic or form `client_secret`, or — for public
/// clients only — a bare `client_id`.
async fn authenticate_client(state: &AppState, headers: &HeaderMap, form: &[(String, String)], token_endpoint: &str) -> Result<Client, OAuthError> {
    let pool = state.store.pool();
    let lookup = |id: String| async move {
        accounts::find_client(pool, &id).await?.ok_or_else(|| OAuthError::invalid_client("unknown client"))
    };
    let assertion_given = param(form, "client_assertion_type").is_some() || param(form, "client_assertion").is_some();
    if assertion_given && (param(form, "client_secret").is_some() || headers.get(header::AUTHORIZATION).is_some()) {
        // RFC 6749 §2.3: a client MUST NOT use more than one authentication method per request.
        return Err(OAuthError::invalid_client("use one client authentication method: a client assertion, or a secret, not both"));
    }
    if let Some(kind) = param(form, "client_assertion_type") {
        if kind != assertion::JWT_BEARER {
            return Err(OAuthError::invalid_client("client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer"));
        }
        let jwt = param(form, "client_assertion").ok_or_else(|| OAuthError::invalid_client("client_assertion is missing"))?;
        let id = param(form, "client_id")
            .map(str::to_owned)
            .or_else(|| assertion::claimed_client(jwt))
            .ok_or_else(|| OAuthError::invalid_client("the client assertion names no client"))?;
        let client = lookup(id).await?;
        if !own_token_endpoint(state, headers) {
            return Err(OAuthError::invalid_client(
                "this server cannot tell its own token endpoint from the request's Host header: start it with --base-url to accept client assertions",
            ));
        }
        assertion::verify(pool, &client, jwt, token_endpoint).await?;
        return Ok(client);
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .map(|b| {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok().and_then(|d| String::from_utf8(d).ok());
            decoded.and_then(|d| {
                let (id, secret) = d.split_once(':')?;
                let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
                Some((dec(id), dec(secret)))
            })
        });
    let readable = |(id, secret): &(String, String)| {
        !crate::fhir::types::has_forbidden_control(id) && !crate::fhir::types::has_forbidden_control(secret)
    };
    let credentials = match basic {
        Some(Some(pair)) if readable(&pair) => Some(pair),
        Some(_) => return Err(OAuthError::invalid_client("the Basic credentials cannot be read")),
        None => param(form, "client_secret").map(|s| (param(form, "client_id").unwrap_or("").to_owned(), s.to_owned())),
    };
    if let Some((id, secret)) = credentials {
        let client = lookup(id).await?;
        let hash = client.secret_hash.clone().filter(|_| client.auth == ClientAuth::Secret);
        let ok = match hash {
            Some(hash) => tokio::task::spawn_blocking(move || accounts::verify_secret(&secret, &hash)).await.unwrap_or(false),
            None => false,
        };
        if !ok {
            return Err(OAuthError::invalid_client("client authentication failed"));
        }
        return Ok(client);
    }
    let id = param(form, "client_id").ok_or_else(|| OAuthError::invalid_client("no client authentication"))?;
    let client = lookup(id.to_owned()).await?;
    if client.auth != ClientAuth::Public {
        return Err(OAuthError::invalid_client("this client must authenticate"));
    }
    Ok(client)
}

/// The client a refresh token was issued to, when that client is public (it cannot
/// authenticate); confidential clients must authenticate.
async fn public_client_of_refresh_token(state: &AppState, form: &[(String, String)]) -> Result<Client, OAuthError> {
    let presented = param(form, "refresh_token").ok_or_else(|| OAuthError::bad("invalid_request", "refresh_token is missing"))?;
    let owner: Option<(String,)> = sqlx::query_as("SELECT client_id FROM refresh_token WHERE token_hash = $1")
        .bind(hash_token(presented))
        .fetch_optional(state.store.pool())
        .await?;
    let Some((client_id,)) = owner else { return Err(OAuthError::invalid_grant("the refresh token is not valid")) };
    let client = accounts::find_client(state.store.pool(), &client_id).await?.ok_or_else(|| OAuthError::invalid_grant("the refresh token is not valid"))?;
    if client.auth != ClientAuth::Public {
        return Err(OAuthError::invalid_client("this client must authenticate"));
    }
    Ok(client)
}

/// Signs an access token; returns it and its `jti`.
fn sign_access_token(state: &AppState, issue: &Issue) -> Result<(String, String), OAuthError> {
    let now = now_secs();
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = Claims {
        iss: state.tokens.issuer().to_owned(),
        sub: issue.subject.clone(),
        aud: FHIR_AUDIENCE.to_owned(),
        exp: now + state.oauth.access_token_ttl.as_secs(),
        iat: now,
        jti: jti.clone(),
        scope: issue.scope.join(" "),
        client_id: Some(issue.client_id.clone()),
        patient: issue.patient.clone(),
        fhir_user: issue.fhir_user.clone(),
        role: issue.role.clone(),
        encounter: issue.encounter.clone(),
        grant: issue.grant.map(|g| g.to_string()),
    };
    Ok((state.tokens.sign(&claims).map_err(OAuthError::server)?, jti))
}

/// The full token response of a user grant (code exchange or refresh): access token, maybe a
/// new refresh token (rotation), maybe an id_token, and the launch context.
async fn user_tokens(state: &AppState, issue: &Issue, nonce: Option<&str>, base: &str) -> Result<Value, OAuthError> {
    let (access_token, _) = sign_access_token(state, issue)?;
    let mut response = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": state.oauth.access_token_ttl.as_secs(),
        "scope": issue.scope.join(" "),
    });
    let has = |s: &str| issue.scope.iter().any(|x| x == s);
    if has("offline_access") || has("online_access") {
        let refresh_token = random_token();
        sqlx::query(
            "INSERT INTO refresh_token (token_hash, grant_id, client_id, username, fhir_user, scope, role, patient, encounter, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))",
        )
        .bind(hash_token(&refresh_token))
        .bind(issue.grant)
        .bind(&issue.client_id)
        .bind(&issue.subject)
        .bind(issue.fhir_user.as_deref().unwrap_or(""))
        .bind(issue.scope.join(" "))
        .bind(&issue.role)
        .bind(&issue.patient)
        .bind(&issue.encounter)
        .bind(state.oauth.refresh_token_ttl.as_secs_f64())
        .execute(state.store.pool())
        .await?;
        response["refresh_token"] = json!(refresh_token);
    }
    if has("openid") && (has("fhirUser") || has("profile")) {
        let fhir_user = issue.fhir_user.as_deref().map(|u| format!("{base}/{u}"));
        let id_token = super::idtoken::sign(state, base, &issue.client_id, &issue.subject, fhir_user.as_deref(), nonce, &access_token)
            .map_err(OAuthError::server)?;
        response["id_token"] = json!(id_token);
    }
    if let Some(p) = &issue.patient {
        response["patient"] = json!(p);
        response["need_patient_banner"] = json!(true);
    }
    if let Some(e) = &issue.encounter {
        response["encounter"] = json!(e);
    }
    if let Some(u) = &issue.fhir_user {
        response["fhirUser"] = json!(format!("{base}/{u}"));
    }
    Ok(response)
}

#[derive(sqlx::FromRow)]
struct CodeRow {
    grant_id: uuid::Uuid,
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    scope: String,
    username: String,
    fhir_user: String,
    role: Option<String>,
    patient: Option<String>,
    encounter: Option<String>,
    nonce: Option<String>,
    expired: bool,
    used: bool,
}

async fn authorization_code(state: &AppState, client: &Client, form: &[(String, String)], base: &str) -> Result<Value, OAuthError> {
    let code = param(form, "code").ok_or_else(|| OAuthError::bad("invalid_request", "code is missing"))?;
    let pool = state.store.pool();
    let mut tx = pool.begin().await?;
    let row: Option<CodeRow> = sqlx::query_as(
        "SELECT grant_id, client_id, redirect_uri, code_challenge, scope, username, fhir_user, role, patient, encounter, nonce,
                expires_at < now() AS expired, used_at IS NOT NULL AS used
           FROM auth_code WHERE code_hash = $1 FOR UPDATE",
    )
    .bind(hash_token(code))
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| OAuthError::invalid_grant("the authorization code is not valid"))?;
    if row.used {
        // A replayed code: RFC 6749 §4.1.2 — refuse, and revoke what the first use issued.
        sqlx::query("UPDATE oauth_grant SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL").bind(row.grant_id).execute(&mut *tx).await?;
        tx.commit().await?;
        state.tokens.revoke_grant(&row.grant_id.to_string());
        return Err(OAuthError::invalid_grant("the authorization code was already used; the tokens issued for it are revoked"));
    }
    sqlx::query("UPDATE auth_code SET used_at = now() WHERE code_hash = $1").bind(hash_token(code)).execute(&mut *tx).await?;
    if row.expired {
        tx.commit().await?;
        return Err(OAuthError::invalid_grant("the authorization code has expired"));
    }
    if row.client_id != client.client_id {
        tx.commit().await?;
        return Err(OAuthError::invalid_grant("the authorization code was issued to another client"));
    }
    if param(form, "redirect_uri") != Some(row.redirect_uri.as_str()) {
        tx.commit().await?;
        return Err(OAuthError::invalid_grant("redirect_uri does not match the authorization request"));
    }
    let verifier = param(form, "code_verifier").ok_or_else(|| OAuthError::bad("invalid_request", "code_verifier is missing (PKCE)"))?;
    if !pkce_matches(verifier, &row.code_challenge) {
        tx.commit().await?;
        return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge (PKCE)"));
    }
    sqlx::query("INSERT INTO oauth_grant (id, client_id, username) VALUES ($1, $2, $3)")
        .bind(row.grant_id)
        .bind(&row.client_id)
        .bind(&row.username)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let issue = Issue {
        client_id: row.client_id,
        subject: row.username,
        fhir_user: Some(row.fhir_user),
        role: row.role,
        patient: row.patient,
        encounter: row.encounter,
        scope: row.scope.split_whitespace().map(str::to_owned).collect(),
        grant: Some(row.grant_id),
    };
    let response = user_tokens(state, &issue, row.nonce.as_deref(), base).await?;
    tracing::info!(client = %issue.client_id, "access token issued (authorization_code)");
    Ok(response)
}

/// RFC 7636 §4.6: BASE64URL(SHA256(verifier)) == challenge; the verifier is 43–128 unreserved
/// characters.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    use base64::Engine;
    let well_formed = (43..=128).contains(&verifier.len()) && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    well_formed && base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes())) == challenge
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    grant_id: uuid::Uuid,
    client_id: String,
    username: String,
    fhir_user: String,
    scope: String,
    role: Option<String>,
    patient: Option<String>,
    encounter: Option<String>,
    expired: bool,
    used: bool,
    revoked: bool,
}

async fn refresh(state: &AppState, client: &Client, form: &[(String, String)], base: &str) -> Result<Value, OAuthError> {
    let presented = param(form, "refresh_token").ok_or_else(|| OAuthError::bad("invalid_request", "refresh_token is missing"))?;
    let pool = state.store.pool();
    let mut tx = pool.begin().await?;
    let row: Option<RefreshRow> = sqlx::query_as(
        "SELECT t.grant_id, t.client_id, t.username, t.fhir_user, t.scope, t.role, t.patient, t.encounter,
                t.expires_at < now() AS expired, t.used_at IS NOT NULL AS used, g.revoked_at IS NOT NULL AS revoked
           FROM refresh_token t JOIN oauth_grant g ON g.id = t.grant_id
          WHERE t.token_hash = $1 FOR UPDATE OF t",
    )
    .bind(hash_token(presented))
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| OAuthError::invalid_grant("the refresh token is not valid"))?;
    if row.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("the refresh token was issued to another client"));
    }
    if row.used {
        // Reuse of a rotated refresh token: someone holds a stolen copy. End the whole family.
        sqlx::query("UPDATE oauth_grant SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL").bind(row.grant_id).execute(&mut *tx).await?;
        tx.commit().await?;
        state.tokens.revoke_grant(&row.grant_id.to_string());
        tracing::warn!(client = %row.client_id, "refresh token reuse detected: grant revoked");
        return Err(OAuthError::invalid_grant("the refresh token was already used; every token of this grant is revoked"));
    }
    if row.revoked || row.expired {
        return Err(OAuthError::invalid_grant("the refresh token has expired or was revoked"));
    }
    sqlx::query("UPDATE refresh_token SET used_at = now() WHERE token_hash = $1").bind(hash_token(presented)).execute(&mut *tx).await?;
    tx.commit().await?;
    let mut scope: Vec<String> = match param(form, "scope") {
        // A refresh may narrow the grant, never widen it.
        Some(requested) => scopes::intersect(requested, &row.scope),
        None => row.scope.split_whitespace().map(str::to_owned).collect(),
    };
    if let Some(role) = row.role.as_deref().filter(|r| *r != "patient") {
        // The role's grant now (it may have been narrowed or ended since).
        let grant = super::authorize::role_grant(state, role).await?.ok_or_else(|| OAuthError::invalid_grant("the role has ended"))?;
        scope = super::authorize::narrow_to_grant(&scope.join(" "), &grant);
    }
    let issue = Issue {
        client_id: row.client_id,
        subject: row.username,
        fhir_user: Some(row.fhir_user).filter(|u| !u.is_empty()),
        role: row.role,
        patient: row.patient,
        encounter: row.encounter,
        scope,
        grant: Some(row.grant_id),
    };
    user_tokens(state, &issue, None, base).await
}

/// `POST /auth/introspect` (RFC 7662): for an authenticated client or a bearer of a valid
/// access token.
pub async fn introspect(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let form = parse_form(&body)?;
        let base = crate::rest::base_url(&state, &headers);
        let bearer = crate::rest::authenticate(&state, &headers).is_ok();
        if !bearer {
            authenticate_client(&state, &headers, &form, &endpoint(&base, "/auth/token")).await?;
        }
        let token = param(&form, "token").ok_or_else(|| OAuthError::bad("invalid_request", "token is missing"))?;
        if state.tokens.verify(token).is_ok() {
            let claims = state.tokens.decode_unexpired_or_not(token).ok_or_else(|| OAuthError::server("verified token without claims"))?;
            let mut out = json!({
                "active": true,
                "scope": claims.scope,
                "client_id": claims.client_id,
                "sub": claims.sub,
                "exp": claims.exp,
                "iat": claims.iat,
                "iss": claims.iss,
                "aud": claims.aud,
                "jti": claims.jti,
                "token_type": "Bearer",
            });
            if let Some(p) = claims.patient {
                out["patient"] = json!(p);
            }
            if let Some(u) = claims.fhir_user {
                out["fhirUser"] = json!(u);
            }
            if let Some(r) = claims.role {
                out["role"] = json!(r);
            }
            return Ok(out);
        }
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT t.scope, t.client_id, t.username, extract(epoch FROM t.expires_at)::bigint FROM refresh_token t JOIN oauth_grant g ON g.id = t.grant_id
              WHERE t.token_hash = $1 AND t.used_at IS NULL AND t.expires_at > now() AND g.revoked_at IS NULL",
        )
        .bind(hash_token(token))
        .fetch_optional(state.store.pool())
        .await?;
        Ok::<Value, OAuthError>(match row {
            Some((scope, client_id, sub, exp)) => json!({ "active": true, "scope": scope, "client_id": client_id, "sub": sub, "exp": exp, "token_type": "refresh_token" }),
            None => json!({ "active": false }),
        })
    }
    .await;
    match result {
        Ok(v) => (StatusCode::OK, no_store(), axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /auth/revoke` (RFC 7009): access tokens by `jti`, refresh tokens with their grant.
/// Answers 200 whether or not the token was valid.
pub async fn revoke(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let form = parse_form(&body)?;
        let base = crate::rest::base_url(&state, &headers);
        let client = authenticate_client(&state, &headers, &form, &endpoint(&base, "/auth/token")).await?;
        let token = param(&form, "token").ok_or_else(|| OAuthError::bad("invalid_request", "token is missing"))?;
        let pool = state.store.pool();
        if let Some(claims) = state.tokens.decode_unexpired_or_not(token) {
            if claims.client_id.as_deref() == Some(client.client_id.as_str()) {
                sqlx::query("INSERT INTO revoked_access_token (jti, expires_at) VALUES ($1, to_timestamp($2)) ON CONFLICT DO NOTHING")
                    .bind(&claims.jti)
                    .bind(claims.exp as f64)
                    .execute(pool)
                    .await?;
                state.tokens.revoke_token(&claims.jti);
                tracing::info!(client = %client.client_id, "access token revoked");
            }
            return Ok(());
        }
        let grant: Option<(uuid::Uuid,)> = sqlx::query_as("SELECT grant_id FROM refresh_token WHERE token_hash = $1 AND client_id = $2")
            .bind(hash_token(token))
            .bind(&client.client_id)
            .fetch_optional(pool)
            .await?;
        if let Some((grant,)) = grant {
            sqlx::query("UPDATE oauth_grant SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL").bind(grant).execute(pool).await?;
            state.tokens.revoke_grant(&grant.to_string());
            tracing::info!(client = %client.client_id, "refresh token and its grant revoked");
        }
        Ok::<(), OAuthError>(())
    }
    .await;
    match result {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /auth/launch`: an EHR (holding a `user/` or `system/` token) mints a `launch` value
/// that carries the patient (and encounter) context into an EHR launch. Body: form or JSON
/// with `patient` and optionally `encounter` (ids).
pub async fn launch(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let principal = match crate::rest::authenticate(&state, &headers) {
        Ok(p) => p,
        Err(e) => return crate::rest::error_response(&e, crate::rest::format::Format::Json, false),
    };
    if principal.confined_patient().is_some() || !principal.scopes.iter().any(|s| s.context != crate::auth::ScopeContext::Patient) {
        return OAuthError { status: StatusCode::FORBIDDEN, error: "access_denied", description: "minting launch contexts needs a user/ or system/ token".into() }
            .into_response();
    }
    let fields: Vec<(String, String)> = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map.into_iter().filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned()))).collect(),
        _ => form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
    };
    let patient = param(&fields, "patient").map(|p| p.trim_start_matches("Patient/").to_owned());
    let encounter = param(&fields, "encounter").map(|e| e.trim_start_matches("Encounter/").to_owned());
    let valid = |v: &Option<String>| v.as_deref().is_none_or(crate::fhir::types::Id::is_valid);
    if patient.is_none() || !valid(&patient) || !valid(&encounter) {
        return OAuthError::bad("invalid_request", "patient (an id) is required; encounter is optional").into_response();
    }
    // The patient (and encounter) must exist for the minting token: read like any read, so a
    // patient outside a role's reach is refused exactly like an unknown one.
    let base = crate::rest::base_url(&state, &headers);
    let principal = match crate::access::with_current_role(&state.store, &state.role_grants, principal).await {
        Ok(p) => p,
        Err(e) => return crate::rest::error_response(&e, crate::rest::format::Format::Json, false),
    };
    for (type_name, id) in [("Patient", &patient), ("Encounter", &encounter)] {
        let Some(id) = id else { continue };
        let readable = match (crate::fhir::types::ResourceType::parse(type_name), crate::fhir::types::Id::parse(id)) {
            (Ok(rt), Ok(id)) => crate::interactions::read::read(&state.store, &principal, &rt, &id, &base).await,
            _ => Err(crate::error::FhirError::NotFound(String::new())),
        };
        match readable {
            Ok(_) => {}
            Err(crate::error::FhirError::NotFound(_) | crate::error::FhirError::Gone(_) | crate::error::FhirError::Forbidden(_)) => {
                return OAuthError::bad("invalid_request", format!("the {} is not known", type_name.to_lowercase())).into_response();
            }
            Err(e) => return crate::rest::error_response(&e, crate::rest::format::Format::Json, false),
        }
    }
    let id = random_token();
    let inserted = sqlx::query("INSERT INTO launch_context (id, patient, encounter, expires_at) VALUES ($1, $2, $3, now() + interval '10 minutes')")
        .bind(&id)
        .bind(&patient)
        .bind(&encounter)
        .execute(state.store.pool())
        .await;
    match inserted {
        Ok(_) => (StatusCode::OK, no_store(), axum::Json(json!({ "launch": id }))).into_response(),
        Err(e) => OAuthError::server(e).into_response(),
    }
}
