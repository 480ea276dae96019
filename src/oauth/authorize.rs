//! The authorization endpoint (SMART App Launch 2.0 §App Launch, RFC 6749 §4.1): validates
//! the request, then walks the person through sign-in, role choice, patient choice and
//! consent on server-rendered pages, and redirects back to the app with a single-use code.
//!
//! State between pages lives in `auth_request` (keyed by an unguessable id carried in hidden
//! fields); every form post must also carry the request's CSRF token, which is bound to a
//! browser cookie (double submit), so another site can neither drive nor forge the steps.
//! One sign-in session (`ironfhir_sid` cookie) serves any number of authorizations, so an app
//! can get tokens for several roles of the same person side by side without signing in again.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use bytes::Bytes;

use super::accounts::{self, User};
use super::{hash_token, pages, param, random_token};
use crate::auth::{Principal, scopes};
use crate::rest::AppState;

/// Cookie of the sign-in session.
const SESSION_COOKIE: &str = "ironfhir_sid";
/// Cookie that binds form posts to the browser that started the request (double submit).
const BROWSER_COOKIE: &str = "ironfhir_bid";
/// How long a person has to complete the pages.
const REQUEST_TTL_SECS: f64 = 600.0;
/// How long an authorization code can be exchanged.
pub const CODE_TTL_SECS: f64 = 60.0;
/// What a patient may be granted: the `patient` role template's grant (by default
/// `patient/*.rs patient/Appointment.cu patient/Task.cu patient/Communication.c`).
pub fn patient_role_grant() -> String {
    crate::access::roles::templates().templates.get("patient").map(|t| t.grant.clone()).unwrap_or_default()
}

/// An authorization request in progress.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AuthRequest {
    id: String,
    csrf: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    launch_patient: Option<String>,
    launch_encounter: Option<String>,
    role: Option<String>,
    patient: Option<String>,
    username: Option<String>,
}

/// `GET /auth/authorize`: a new authorization request.
pub async fn authorize_get(State(state): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if let Some(refused) = control_refusal(&pairs) {
        return refused;
    }
    start(&state, &headers, pairs).await
}

/// `POST /auth/authorize`: a new request sent as a form (`authorize-post`), or a step of one
/// in progress (the pages' forms).
pub async fn authorize_post(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if let Some(refused) = control_refusal(&pairs) {
        return refused;
    }
    if param(&pairs, "req").is_some() {
        continue_request(&state, &headers, &pairs).await
    } else {
        start(&state, &headers, pairs).await
    }
}

/// `GET|POST /auth/logout`: ends the sign-in session.
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(sid) = cookie(&headers, SESSION_COOKIE) {
        // Ends the session and names its person (for the audit) in one statement.
        let ended: Result<Option<(String, String)>, _> = sqlx::query_as(
            "UPDATE auth_session s SET ended = true FROM app_user u
              WHERE s.id_hash = $1 AND NOT s.ended AND u.username = s.username RETURNING s.username, u.fhir_user",
        )
        .bind(hash_token(&sid))
        .fetch_optional(state.store.pool())
        .await;
        match ended {
            Ok(Some((username, fhir_user))) => {
                crate::audit::record_auth_success(
                    &state.audit,
                    crate::audit::AuthStep::SignOut,
                    None,
                    Some(&username),
                    Some(&fhir_user),
                    "sign-out at the authorization server",
                )
                .await;
            }
            Ok(None) => {}
            Err(e) => return server_error(e),
        }
    }
    let clear = set_cookie(SESSION_COOKIE, "", &state, Some(0));
    pages::page(StatusCode::OK, "Signed out", "<h1>Signed out</h1><p>You have been signed out.</p>", vec![(header::SET_COOKIE, clear)])
}

/// The page refusing a request whose parameters hold control characters, if they do.
fn control_refusal(pairs: &[(String, String)]) -> Option<Response> {
    super::first_with_control(pairs)
        .map(|k| error_page(StatusCode::BAD_REQUEST, &format!("The parameter {} holds a control character.", crate::fhir::types::sanitize(k))))
}

fn error_page(status: StatusCode, message: &str) -> Response {
    pages::page(status, "Error", &pages::error(message), vec![])
}

fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "authorization endpoint failure");
    error_page(StatusCode::INTERNAL_SERVER_ERROR, "The server could not process the request. Please try again.")
}

/// Redirects to the app with `error` (RFC 6749 §4.1.2.1).
fn redirect_error(redirect_uri: &str, state: Option<&str>, error: &str, description: &str) -> Response {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    redirect_with(redirect_uri, &pairs)
}

fn redirect_with(redirect_uri: &str, pairs: &[(&str, &str)]) -> Response {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        query.append_pair(k, v);
    }
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut response = Redirect::to(&format!("{redirect_uri}{sep}{}", query.finish())).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn start(state: &Arc<AppState>, headers: &HeaderMap, pairs: Vec<(String, String)>) -> Response {
    if let Some(k) = super::first_repeated(&pairs) {
        return error_page(StatusCode::BAD_REQUEST, &format!("The parameter {} is repeated.", crate::fhir::types::sanitize(k)));
    }
    let p = |name: &str| param(&pairs, name);
    let pool = state.store.pool();
    // Until the client and redirect URI are known good, errors are shown here, never redirected
    // (RFC 6749 §4.1.2.1: no open redirector).
    let Some(client_id) = p("client_id") else { return error_page(StatusCode::BAD_REQUEST, "client_id is missing.") };
    let client = match accounts::find_client(pool, client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return error_page(StatusCode::BAD_REQUEST, "The application is not registered with this server."),
        Err(e) => return server_error(e),
    };
    let redirect_uri = match p("redirect_uri") {
        Some(uri) if client.has_redirect_uri(uri) => uri.to_owned(),
        Some(_) => return error_page(StatusCode::BAD_REQUEST, "The redirect_uri is not registered for this application."),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return error_page(StatusCode::BAD_REQUEST, "redirect_uri is missing."),
    };
    let app_state = p("state");
    let fail = |error: &str, description: &str| redirect_error(&redirect_uri, app_state, error, description);
    if p("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let Some(challenge) = p("code_challenge") else { return fail("invalid_request", "PKCE is required: code_challenge is missing") };
    if p("code_challenge_method") != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return fail("invalid_request", "code_challenge must be a base64url SHA-256 digest");
    }
    let base = crate::rest::base_url(state, headers);
    match p("aud") {
        Some(aud) if aud.trim_end_matches('/') == base => {}
        Some(_) => return fail("invalid_request", "aud is not this server's FHIR base URL"),
        None => return fail("invalid_request", "aud is missing (SMART App Launch requires the FHIR base URL)"),
    }
    let requested = p("scope").unwrap_or("");
    let permitted = client.permitted(requested);
    if permitted.is_empty() {
        return fail("invalid_scope", "none of the requested scopes is allowed for this application");
    }
    let (mut launch_patient, mut launch_encounter) = (None, None);
    if let Some(launch) = p("launch") {
        let row: Result<Option<(Option<String>, Option<String>)>, _> =
            sqlx::query_as("SELECT patient, encounter FROM launch_context WHERE id = $1 AND expires_at > now()")
                .bind(launch)
                .fetch_optional(pool)
                .await;
        match row {
            Ok(Some((patient, encounter))) => (launch_patient, launch_encounter) = (patient, encounter),
            Ok(None) => return fail("invalid_request", "the launch parameter is unknown or expired"),
            Err(e) => return server_error(e),
        }
    }
    let (bid, new_bid) = match cookie(headers, BROWSER_COOKIE) {
        Some(b) if b.len() >= 32 => (b, false),
        _ => (random_token(), true),
    };
    let request = AuthRequest {
        id: random_token(),
        csrf: bid.clone(),
        client_id: client.client_id.clone(),
        redirect_uri,
        scope: permitted.join(" "),
        state: app_state.map(str::to_owned),
        nonce: p("nonce").map(str::to_owned),
        code_challenge: challenge.to_owned(),
        launch_patient,
        launch_encounter,
        role: None,
        patient: None,
        username: None,
    };
    let inserted = sqlx::query(
        "INSERT INTO auth_request (id, csrf, client_id, redirect_uri, scope, state, nonce, code_challenge, aud, launch_patient, launch_encounter, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + make_interval(secs => $12))",
    )
    .bind(&request.id)
    .bind(&request.csrf)
    .bind(&request.client_id)
    .bind(&request.redirect_uri)
    .bind(&request.scope)
    .bind(&request.state)
    .bind(&request.nonce)
    .bind(&request.code_challenge)
    .bind(&base)
    .bind(&request.launch_patient)
    .bind(&request.launch_encounter)
    .bind(REQUEST_TTL_SECS)
    .execute(pool)
    .await;
    if let Err(e) = inserted {
        return server_error(e);
    }
    // Sweep requests nobody finished.
    let _ = sqlx::query("DELETE FROM auth_request WHERE expires_at < now() - interval '1 hour'").execute(pool).await;
    let mut response = advance(state, headers, request, None).await;
    if new_bid {
        response.headers_mut().append(header::SET_COOKIE, set_cookie(BROWSER_COOKIE, &bid, state, None));
    }
    response
}

/// Shows the next page the request needs, or finishes it. `signed_in` is a user who just
/// signed in (their session cookie is not in `headers` yet).
async fn advance(state: &Arc<AppState>, headers: &HeaderMap, mut request: AuthRequest, signed_in: Option<User>) -> Response {
    let pool = state.store.pool();
    let user = match signed_in {
        Some(u) => Some(u),
        None => match session_user(state, headers).await {
            Ok(u) => u,
            Err(e) => return server_error(e),
        },
    };
    let client_label = request.client_id.clone();
    let Some(user) = user else {
        return pages::page(StatusCode::OK, "Sign in", &pages::login(&request.id, &request.csrf, &client_label, None, "", false), vec![]);
    };
    if request.username.as_deref() != Some(user.username.as_str()) {
        // A different person signed in since the request began: their choices start afresh.
        request.username = Some(user.username.clone());
        request.role = None;
        request.patient = None;
    }
    let fail = |error: &str, description: &str| redirect_error(&request.redirect_uri, request.state.as_deref(), error, description);
    if let Some(patient_id) = user.patient_id() {
        if request.launch_patient.as_deref().is_some_and(|p| p != patient_id) {
            return fail("access_denied", "the launch context names another patient");
        }
        request.role = Some("patient".into());
        request.patient = Some(patient_id.to_owned());
    } else if request.role.is_none() {
        let roles = match accounts::staff_roles(pool, &user.fhir_user).await {
            Ok(r) => r,
            Err(e) => return server_error(e),
        };
        match roles.as_slice() {
            [] => return fail("access_denied", "the user holds no active role"),
            [one] => request.role = Some(one.reference.clone()),
            many => {
                if let Err(e) = save(pool, &request).await {
                    return server_error(e);
                }
                let choices: Vec<(String, String)> = many.iter().map(|r| (r.reference.clone(), r.label.clone())).collect();
                return pages::page(StatusCode::OK, "Choose a role", &pages::role_picker(&request.id, &request.csrf, &choices), vec![]);
            }
        }
    }
    if let Some(role) = request.role.as_deref().filter(|r| r.starts_with("PractitionerRole/"))
        && user.totp_secret.is_none()
    {
        match accounts::organisation_requires_totp(pool, role).await {
            Ok(false) => {}
            Ok(true) => {
                return error_page(
                    StatusCode::FORBIDDEN,
                    "The organisation of this role requires a second sign-in factor. Ask an administrator to enrol one for your account.",
                );
            }
            Err(e) => return server_error(e),
        }
    }
    if request.patient.is_none()
        && let Some(launched) = request.launch_patient.clone()
    {
        // Staff may hold in context only patients their role reaches, however the context came.
        match may_choose_patient(state, headers, &request, &launched).await {
            Ok(true) => request.patient = Some(launched),
            Ok(false) => return fail("access_denied", "the launch context names a patient this role cannot reach"),
            Err(e) => return server_error(e),
        }
    }
    let wants_patient = request.scope.split_whitespace().any(|s| s == "launch/patient");
    if wants_patient && request.patient.is_none() {
        if let Err(e) = save(pool, &request).await {
            return server_error(e);
        }
        return patient_picker(state, headers, &request, "").await;
    }
    if let Err(e) = save(pool, &request).await {
        return server_error(e);
    }
    let granted = match granted_scopes(state, &request, &user).await {
        Ok(g) => g,
        Err(e) => return server_error(e),
    };
    let acting_as = match request.role.as_deref() {
        Some("patient") | None => format!("{} (patient)", user.username),
        Some(role) => format!("{} ({role})", user.username),
    };
    pages::page(StatusCode::OK, "Allow access", &pages::consent(&request.id, &request.csrf, &client_label, &acting_as, &granted), vec![])
}

/// The scopes the request ends with: what the client may have (already applied), narrowed to
/// what the chosen role grants (staff) or the patient role grants (patients). Non-clinical
/// scopes (openid, fhirUser, launch, offline_access, …) pass through.
async fn granted_scopes(state: &AppState, request: &AuthRequest, user: &User) -> Result<Vec<String>, sqlx::Error> {
    let grant = match request.role.as_deref() {
        Some("patient") | None if user.patient_id().is_some() => patient_role_grant(),
        Some(role) => role_grant(state, role).await?.unwrap_or_default(),
        None => String::new(),
    };
    Ok(narrow_to_grant(&request.scope, &grant))
}

/// The current effective grant of a role (`PractitionerRole/ID`): its template's grant
/// narrowed by its role-grant extension and by its creators' grants; `None` when it or a
/// creator is gone or inactive.
pub async fn role_grant(state: &AppState, role: &str) -> Result<Option<String>, sqlx::Error> {
    let mut conn = state.store.pool().acquire().await?;
    crate::access::roles::effective(&mut conn, role)
        .await
        .map(|found| found.map(|(grant, _, _)| grant.grant))
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))
}

/// `requested` narrowed to `grant` for clinical scopes; non-clinical ones kept as they are.
pub fn narrow_to_grant(requested: &str, grant: &str) -> Vec<String> {
    let mut allowed: Vec<&str> = grant.split_whitespace().collect();
    allowed.extend_from_slice(scopes::NON_CLINICAL);
    scopes::intersect(requested, &allowed.join(" "))
}

async fn patient_picker(state: &AppState, headers: &HeaderMap, request: &AuthRequest, query: &str) -> Response {
    let patients = match find_patients(state, headers, request, query).await {
        Ok(p) => p,
        Err(e) => return server_error(e),
    };
    pages::page(StatusCode::OK, "Choose a patient", &pages::patient_picker(&request.id, &request.csrf, query, &patients), vec![])
}

/// Who a staff member is while choosing the patient in context: the chosen role as it stands
/// now, allowed to read and search Patients only as far as the role's grant, organisation
/// subtree and mask allow. `None` for anyone who may not choose (patients, no role).
async fn picker_principal(state: &AppState, request: &AuthRequest) -> Result<Option<Arc<Principal>>, crate::error::FhirError> {
    let Some(role) = request.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")) else { return Ok(None) };
    let principal = Principal {
        subject: request.username.clone().unwrap_or_default(),
        client_id: Some(request.client_id.clone()),
        role: Some(role.to_owned()),
        scopes: crate::auth::parse_scopes("user/Patient.rs"),
        ..Default::default()
    };
    match crate::access::with_current_role(&state.store, &state.role_grants, Arc::new(principal)).await {
        Ok(p) => Ok(Some(p)),
        Err(crate::error::FhirError::Unauthorized(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Up to 50 patients the signed-in role may read whose name starts with `query` (the most
/// recently updated first without a query), as (id, label). A search like any other, through
/// the role's reach and mask: out of reach = not listed.
async fn find_patients(state: &AppState, headers: &HeaderMap, request: &AuthRequest, query: &str) -> Result<Vec<(String, String)>, crate::error::FhirError> {
    let Some(principal) = picker_principal(state, request).await? else { return Ok(vec![]) };
    let base = crate::rest::base_url(state, headers);
    let mut pairs = vec![("_sort".to_owned(), "-_lastUpdated".to_owned()), ("_count".to_owned(), "50".to_owned())];
    if !query.trim().is_empty() {
        pairs.push(("name".to_owned(), query.trim().to_owned()));
    }
    let patient = crate::fhir::types::ResourceType::parse("Patient")?;
    let outcome = match crate::interactions::search::search(&state.store, &principal, &patient, &pairs, false, &base).await {
        Ok(outcome) => outcome,
        // The role may not search patients, or the query is not a name: nothing to choose.
        Err(crate::error::FhirError::Forbidden(_) | crate::error::FhirError::BadRequest(_)) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(outcome
        .found
        .into_iter()
        .map(|r| {
            let mut content = r.content.unwrap_or_default();
            if let Some(acting) = &principal.acting {
                crate::access::mask::apply(&mut content, &acting.mask);
            }
            (r.id.clone(), patient_label(&r.id, &content))
        })
        .collect())
}

/// Whether the signed-in role may put Patient `id` in context: it reads it like any read
/// (an unknown patient and one outside the role's reach are refused alike).
async fn may_choose_patient(state: &AppState, headers: &HeaderMap, request: &AuthRequest, id: &str) -> Result<bool, crate::error::FhirError> {
    let Ok(id) = crate::fhir::types::Id::parse(id) else { return Ok(false) };
    let Some(principal) = picker_principal(state, request).await? else { return Ok(false) };
    let base = crate::rest::base_url(state, headers);
    let patient = crate::fhir::types::ResourceType::parse("Patient")?;
    match crate::interactions::read::read(&state.store, &principal, &patient, &id, &base).await {
        Ok(_) => Ok(true),
        Err(crate::error::FhirError::NotFound(_) | crate::error::FhirError::Gone(_) | crate::error::FhirError::Forbidden(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn patient_label(id: &str, patient: &serde_json::Value) -> String {
    let name = patient.get("name").and_then(|n| n.get(0));
    let family = name.and_then(|n| n.get("family")).and_then(serde_json::Value::as_str).unwrap_or("");
    let given: Vec<&str> =
        name.and_then(|n| n.get("given")).and_then(serde_json::Value::as_array).into_iter().flatten().filter_map(serde_json::Value::as_str).collect();
    let birth = patient.get("birthDate").and_then(serde_json::Value::as_str).unwrap_or("");
    let label = format!("{} {family}", given.join(" "));
    format!("{} {} (Patient/{id})", label.trim(), birth).replace("  ", " ")
}

async fn save(pool: &sqlx::PgPool, r: &AuthRequest) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_request SET role = $2, patient = $3, username = $4 WHERE id = $1")
        .bind(&r.id)
        .bind(&r.role)
        .bind(&r.patient)
        .bind(&r.username)
        .execute(pool)
        .await
        .map(drop)
}

async fn continue_request(state: &Arc<AppState>, headers: &HeaderMap, pairs: &[(String, String)]) -> Response {
    let pool = state.store.pool();
    let p = |name: &str| param(pairs, name);
    let request: Option<AuthRequest> = match sqlx::query_as(
        "SELECT id, csrf, client_id, redirect_uri, scope, state, nonce, code_challenge, launch_patient, launch_encounter, role, patient, username
           FROM auth_request WHERE id = $1 AND expires_at > now()",
    )
    .bind(p("req").unwrap_or(""))
    .fetch_optional(pool)
    .await
    {
        Ok(r) => r,
        Err(e) => return server_error(e),
    };
    let Some(mut request) = request else {
        return error_page(StatusCode::BAD_REQUEST, "This sign-in request has expired. Please start again from the application.");
    };
    // Double-submit CSRF check: the form's token, the browser's cookie and the request agree.
    let form_csrf = p("csrf").unwrap_or("");
    let cookie_csrf = cookie(headers, BROWSER_COOKIE).unwrap_or_default();
    if !constant_time_eq(form_csrf, &request.csrf) || !constant_time_eq(&cookie_csrf, &request.csrf) {
        return error_page(StatusCode::FORBIDDEN, "The form could not be verified (CSRF check failed). Please start again from the application.");
    }
    match p("step") {
        Some("login") => {
            let username = p("username").unwrap_or("");
            let password = p("password").unwrap_or("");
            let settings = &state.oauth;
            let result = accounts::check_login(pool, username, password, p("otp"), settings.max_login_failures, settings.lockout).await;
            match result {
                Ok(Ok(user)) => {
                    let sid = random_token();
                    if let Err(e) = sqlx::query("INSERT INTO auth_session (id_hash, username) VALUES ($1, $2)")
                        .bind(hash_token(&sid))
                        .bind(&user.username)
                        .execute(pool)
                        .await
                    {
                        return server_error(e);
                    }
                    tracing::info!(client = %request.client_id, "user signed in at the authorization server");
                    crate::audit::record_auth_success(
                        &state.audit,
                        crate::audit::AuthStep::SignIn,
                        Some(&request.client_id),
                        Some(&user.username),
                        Some(&user.fhir_user),
                        "sign-in at the authorization server",
                    )
                    .await;
                    let mut response = advance(state, headers, request, Some(user)).await;
                    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &sid, state, None));
                    response
                }
                Ok(Err(failure)) => {
                    let (message, need_otp) = match failure {
                        accounts::LoginFailure::NeedOtp => ("Enter the one-time code from your authenticator app.", true),
                        accounts::LoginFailure::Locked => ("Too many failed attempts: the account is locked for a while.", false),
                        accounts::LoginFailure::BadCredentials => ("The username or password is not correct.", false),
                    };
                    tracing::info!(client = %request.client_id, outcome = ?failure, "sign-in refused");
                    if !matches!(failure, accounts::LoginFailure::NeedOtp) {
                        let reason = format!("{failure:?}");
                        crate::audit::record_auth_failure(&state.audit, "sign-in", Some(&request.client_id), &reason).await;
                    }
                    let status = if need_otp { StatusCode::OK } else { StatusCode::UNAUTHORIZED };
                    let body = pages::login(&request.id, &request.csrf, &request.client_id, Some(message), username, need_otp);
                    pages::page(status, "Sign in", &body, vec![])
                }
                Err(e) => server_error(e),
            }
        }
        Some(step @ ("role" | "patient" | "patient-search" | "consent")) => {
            let user = match session_user(state, headers).await {
                Ok(Some(u)) if request.username.as_deref() == Some(u.username.as_str()) => u,
                Ok(_) => return advance(state, headers, request, None).await,
                Err(e) => return server_error(e),
            };
            match step {
                "role" => {
                    let chosen = p("role").unwrap_or("");
                    let roles = match accounts::staff_roles(pool, &user.fhir_user).await {
                        Ok(r) => r,
                        Err(e) => return server_error(e),
                    };
                    if !roles.iter().any(|r| r.reference == chosen) {
                        return error_page(StatusCode::BAD_REQUEST, "That role is not one of yours.");
                    }
                    request.role = Some(chosen.to_owned());
                    advance(state, headers, request, Some(user)).await
                }
                // Patients never get the picker: their own record is their context.
                "patient-search" | "patient" if user.patient_id().is_some() => {
                    error_page(StatusCode::BAD_REQUEST, "That patient cannot be chosen.")
                }
                "patient-search" => patient_picker(state, headers, &request, p("q").unwrap_or("")).await,
                "patient" => {
                    let chosen = p("patient").unwrap_or("");
                    let may = match may_choose_patient(state, headers, &request, chosen).await {
                        Ok(may) => may,
                        Err(e) => return server_error(e),
                    };
                    if !may {
                        return error_page(StatusCode::BAD_REQUEST, "That patient cannot be chosen.");
                    }
                    request.patient = Some(chosen.to_owned());
                    advance(state, headers, request, Some(user)).await
                }
                _ => finish(state, request, &user, p("decision") == Some("approve")).await,
            }
        }
        _ => error_page(StatusCode::BAD_REQUEST, "Unknown step."),
    }
}

/// Consent given or refused: a code (or `access_denied`) goes back to the app.
async fn finish(state: &AppState, request: AuthRequest, user: &User, approved: bool) -> Response {
    let pool = state.store.pool();
    if let Err(e) = sqlx::query("DELETE FROM auth_request WHERE id = $1").bind(&request.id).execute(pool).await {
        return server_error(e);
    }
    if !approved {
        tracing::info!(client = %request.client_id, "authorization denied by the user");
        return redirect_error(&request.redirect_uri, request.state.as_deref(), "access_denied", "the user denied the request");
    }
    let granted = match granted_scopes(state, &request, user).await {
        Ok(g) => g,
        Err(e) => return server_error(e),
    };
    let code = random_token();
    let inserted = sqlx::query(
        "INSERT INTO auth_code (code_hash, grant_id, client_id, redirect_uri, code_challenge, scope, username, fhir_user, role, patient, encounter, nonce, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now() + make_interval(secs => $13))",
    )
    .bind(hash_token(&code))
    .bind(uuid::Uuid::new_v4())
    .bind(&request.client_id)
    .bind(&request.redirect_uri)
    .bind(&request.code_challenge)
    .bind(granted.join(" "))
    .bind(&user.username)
    .bind(&user.fhir_user)
    .bind(&request.role)
    .bind(&request.patient)
    .bind(&request.launch_encounter)
    .bind(&request.nonce)
    .bind(CODE_TTL_SECS)
    .execute(pool)
    .await;
    if let Err(e) = inserted {
        return server_error(e);
    }
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = &request.state {
        pairs.push(("state", s.as_str()));
    }
    redirect_with(&request.redirect_uri, &pairs)
}

/// The user of the request's sign-in session, if it is live (not ended, not idle too long);
/// using it keeps it alive.
async fn session_user(state: &AppState, headers: &HeaderMap) -> Result<Option<User>, sqlx::Error> {
    let Some(sid) = cookie(headers, SESSION_COOKIE) else { return Ok(None) };
    let row: Option<(String,)> = sqlx::query_as(
        "UPDATE auth_session SET last_seen = now()
          WHERE id_hash = $1 AND NOT ended AND last_seen > now() - make_interval(secs => $2)
          RETURNING username",
    )
    .bind(hash_token(&sid))
    .bind(state.oauth.session_idle_timeout.as_secs_f64())
    .fetch_optional(state.store.pool())
    .await?;
    match row {
        Some((username,)) => accounts::find_user(state.store.pool(), &username).await,
        None => Ok(None),
    }
}

/// A cookie's value from the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` for the authorization pages: HttpOnly, SameSite=Lax (the first request
/// arrives by a cross-site navigation), Secure behind TLS, limited to `/auth`.
fn set_cookie(name: &str, value: &str, state: &AppState, max_age: Option<u64>) -> HeaderValue {
    let secure = state.tls || state.base_url.as_deref().is_some_and(|b| b.starts_with("https://"));
    let mut c = format!("{name}={value}; Path=/auth; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
