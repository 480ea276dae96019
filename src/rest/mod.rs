//! The thin HTTP layer: route `/fhir/...`, authenticate, call an interaction, render the result
//! as FHIR JSON or XML with the headers http.html asks for.

pub mod bundle;
pub mod cds;
pub mod connection;
mod documents;
mod export;
pub mod format;
pub mod hygiene;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::auth::{Principal, TokenAuthority};
use crate::error::{FhirError, FhirResult, Issue, operation_outcome};
use crate::fhir::types::{Id, ResourceType};
use crate::interactions::{self, WriteOutcome, capabilities, history::HistoryParams, instant, patch::PatchTarget};
use crate::store::{Store, StoredResource};
use format::Format;

/// Shared state of the HTTP layer.
pub struct AppState {
    pub store: Store,
    pub tokens: TokenAuthority,
    /// Configured public base URL of the FHIR API (`https://host/fhir`), if any.
    pub base_url: Option<String>,
    /// Whether the server terminates TLS (for base URLs derived from the Host header).
    pub tls: bool,
    /// The address the server listens on: without `base_url`, a Host header naming it is
    /// trusted as this server's own origin (client assertions' `aud`).
    pub listen: Option<std::net::SocketAddr>,
    pub max_body_bytes: usize,
    /// Largest number of entries in a batch or transaction Bundle (413 above it).
    pub max_bundle_entries: usize,
    /// Bulk Data export: document store, retention and the worker's wake-up signal.
    pub exports: Arc<crate::export::ExportService>,
    /// The authorization server's settings.
    pub oauth: crate::oauth::Settings,
    /// Current grants of the roles tokens are bound to (shared with the event machinery,
    /// which evaluates Subscriptions as their owners).
    pub role_grants: Arc<crate::access::RoleGrants>,
    /// Subscriptions' websocket hub and the dispatchers (`None` when events are not started,
    /// as in tools that build an app without serving).
    pub events: Option<Arc<crate::events::Events>>,
    /// The audit trail every request is recorded in.
    pub audit: crate::audit::trail::AuditTrail,
    /// How long an `Appointment/$hold` keeps its slot.
    pub hold_for: chrono::Duration,
    /// The document store behind Binary uploads and downloads (`crate::documents`).
    pub documents: crate::documents::Documents,
}

/// Builds the router: everything under `/fhir` goes through [`dispatch`]; other paths are 404
/// OperationOutcomes.
pub fn router(state: Arc<AppState>) -> Router {
    crate::oauth::router()
        .route("/cds-services", axum::routing::get(cds::discovery))
        .route("/cds-services/{id}", axum::routing::post(cds::call))
        .route("/ws", axum::routing::get(crate::events::subscriptions::websocket::upgrade))
        .route("/fhir", axum::routing::any(dispatch))
        .route("/fhir/", axum::routing::any(dispatch))
        .route("/fhir/{*rest}", axum::routing::any(dispatch))
        .route("/documents/{*key}", axum::routing::any(documents::serve))
        .fallback(|| async { error_response(&FhirError::NotFound("no such endpoint; the FHIR API is at /fhir".into()), Format::Json, false) })
        .with_state(state)
}

/// Everything about one request that rendering needs.
pub struct Ctx {
    format: Format,
    pretty: bool,
    base: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    head: bool,
    /// Elements the acting role must not see, removed from every response body.
    mask: std::sync::OnceLock<Arc<crate::access::roles::Mask>>,
    /// The client's network address, for the audit trail.
    network: Option<String>,
    /// A read of a Binary's content rather than the resource (`documents::wants_raw`).
    raw: bool,
}

impl Ctx {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn prefer(&self, key: &str) -> Option<String> {
        self.headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split([',', ';'])).find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
    }

    /// Whether a `Prefer` header carries a bare preference token (`respond-async`).
    fn prefers(&self, token: &str) -> bool {
        self.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .any(|p| p.trim() == token)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A precondition header (`If-Match`, `If-None-Exist`): 400 when it is present but cannot be
    /// read, never taken as absent (which would apply the write unconditionally).
    fn precondition(&self, name: &str) -> FhirResult<Option<&str>> {
        match self.headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| FhirError::BadRequest(format!("the {name} header cannot be read"))),
        }
    }
}

async fn dispatch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
        .unwrap_or_default();
    let format_param = query.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.clone());
    let pretty = query.iter().any(|(k, v)| k == "_pretty" && v == "true");
    // Bulk Data kick-off, status and file URLs answer OperationOutcomes, JSON manifests and
    // NDJSON whatever Accept says (clients send `application/json` and
    // `application/fhir+ndjson` there).
    let bulk = parts.uri.path().contains("/$export");
    // A Binary read with a non-FHIR Accept answers the content; its errors are FHIR JSON.
    let raw = documents::wants_raw(&parts.method, parts.uri.path(), format_param.as_deref(), &parts.headers);
    let format = match format::negotiate(format_param.as_deref(), &parts.headers) {
        Ok(_) if raw => Format::Json,
        Ok(f) => f,
        Err(_) if bulk || raw => Format::Json,
        Err(e) => return error_response(&e, Format::Json, pretty),
    };
    let base = base_url(&state, &parts.headers);
    let network = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    let ctx = Ctx { format, pretty, base, query, headers: parts.headers, head: parts.method == Method::HEAD, mask: Default::default(), network, raw };
    let path = parts.uri.path().trim_start_matches("/fhir").trim_matches('/').to_owned();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let method = if parts.method == Method::HEAD { Method::GET } else { parts.method.clone() };
    let result = route(&state, &ctx, &method, &segments, body).await;
    let writes = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    if writes && segments.first().is_none_or(|t| t == "PractitionerRole" || t == "Organization") {
        // A role may have been narrowed or ended, or an organisation tree changed: tokens
        // bound to roles see that from now on.
        state.role_grants.clear();
    }
    let writes_search_params = writes && segments.first().is_none_or(|t| t == "SearchParameter");
    if writes_search_params && result.as_ref().is_ok_and(|r| r.status().is_success()) {
        // A SearchParameter (maybe inside a Bundle) changed: search with it from now on, and
        // index the existing resources for it in the background.
        match crate::search::custom::refresh(&state.store).await {
            Ok(true) => crate::reindex::spawn_if_stale(state.store.clone(), ctx.base.clone()),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot load the custom SearchParameters"),
        }
    }
    let mut response = match result {
        Ok(r) => r,
        Err(e) => error_response(&e, ctx.format, ctx.pretty),
    };
    if ctx.head {
        *response.body_mut() = Body::empty();
    }
    response
}

async fn route(state: &AppState, ctx: &Ctx, method: &Method, seg: &[String], body: Body) -> FhirResult<Response> {
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    // The CapabilityStatement is public (http.html#capabilities).
    if s == ["metadata"] {
        return match *method {
            Method::GET => {
                let mut statement = capabilities::capability_statement().as_ref().clone();
                if let Some(rest) = statement.get_mut("rest").and_then(|r| r.get_mut(0)) {
                    rest["security"] = crate::oauth::discovery::capability_security(&ctx.base);
                    // subscription.html: where the websocket channel binds.
                    rest["extension"] = serde_json::json!([{
                        "url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket",
                        "valueUri": crate::events::subscriptions::operations::websocket_url(&ctx.base),
                    }]);
                }
                respond(ctx, StatusCode::OK, statement, HeaderMap::new())
            }
            _ => Err(FhirError::MethodNotAllowed("metadata only supports GET".into())),
        };
    }
    let principal = match authenticate(state, &ctx.headers) {
        Ok(p) => crate::access::with_current_role(&state.store, &state.role_grants, p).await?,
        Err(e) => {
            // Read the unread request body first: answering before it is consumed makes the
            // server close the connection, and a client reusing it sees a reset, not the 401.
            let _ = axum::body::to_bytes(body, state.max_body_bytes).await;
            if let FhirError::Unauthorized(reason) = &e
                && reason != MISSING_TOKEN
            {
                let event = crate::audit::auth_failure_event("bearer token", None, reason, ctx.network.as_deref());
                if let Err(audit) = state.audit.record(event).await {
                    return Err(audit);
                }
            }
            return Err(e);
        }
    };
    if let Some(mask) = principal.mask() {
        let _ = ctx.mask.set(mask);
    }
    // Control characters in the path or query are refused (and the refusal audited, its event
    // cleaned of them: audit::trail).
    let control = |t: &str| crate::fhir::types::has_forbidden_control(t);
    let refused_input = s.iter().any(|x| control(x)) || ctx.query.iter().any(|(k, v)| control(k) || control(v));
    // A request that can read AuditEvents sees every event recorded before it (they are
    // projected from the audit chain: audit::projection).
    if crate::audit::projection::reads_audit_events(&s, &ctx.query) {
        crate::audit::projection::catch_up(&state.store).await?;
    }
    // Writes record an audit intent in their own transaction (audit::intent), completed below
    // by the request's AuditEvent.
    let request_id = uuid::Uuid::new_v4();
    let mut noted = None;
    let result = if state.audit.enabled() {
        let intent = crate::audit::intent::Intent::new(request_id, principal.clone(), ctx.network.clone());
        noted = Some(intent.clone());
        crate::audit::intent::scope(intent, route_checked(state, ctx, method, &s, body, &principal, refused_input)).await
    } else {
        route_checked(state, ctx, method, &s, body, &principal, refused_input).await
    };
    if state.audit.enabled() {
        // Every request leaves its AuditEvent, committed before the response is sent.
        let (status, reason) = match &result {
            Ok(response) => (response.status(), None),
            Err(e) => (e.status(), Some(e.to_string())),
        };
        // A create names its new resource only in Location (`…/Type/id/_history/1`).
        let created = result
            .as_ref()
            .ok()
            .filter(|r| r.status() == StatusCode::CREATED)
            .and_then(|r| r.headers().get(header::LOCATION))
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.strip_prefix(&format!("{}/", ctx.base)))
            .and_then(|l| l.split("/_history").next())
            .map(str::to_owned);
        // Only a request that wrote has intents for its append to delete.
        let completes = noted.as_ref().filter(|intent| intent.written()).map(|intent| intent.request_id);
        let noted = noted.and_then(|intent| intent.concerned());
        let mut patients = patients_concerned(state, &s, &ctx.query, noted.as_deref()).await;
        if let Some(created) = created.as_deref()
            && let Some((rt, id)) = created.split_once('/')
        {
            patients.extend(patients_concerned(state, &[rt, id], &[], noted.as_deref()).await);
        }
        let access = crate::audit::Access {
            principal: &principal,
            method,
            path: &s,
            query: &ctx.query,
            status,
            reason: reason.as_deref(),
            patients,
            network: ctx.network.clone(),
            created,
        };
        for event in crate::audit::rest_events(&access) {
            state.audit.record_rest(event, completes).await?;
        }
    }
    result
}

/// [`route_as`], or 400 for a path or query holding control characters.
#[allow(clippy::too_many_arguments)]
async fn route_checked(
    state: &AppState,
    ctx: &Ctx,
    method: &Method,
    s: &[&str],
    body: Body,
    principal: &Arc<Principal>,
    refused_input: bool,
) -> FhirResult<Response> {
    if refused_input {
        let _ = axum::body::to_bytes(body, state.max_body_bytes).await;
        return Err(FhirError::BadRequest(
            "the URL holds a control character (U+0000–U+001F other than tab, CR, LF), which FHIR values exclude".into(),
        ));
    }
    route_as(state, ctx, method, s, body, principal).await
}

/// The patients (`Patient/ID`) a request concerns, for its AuditEvent: the Patient it names,
/// the patient whose compartment holds the resource it names (`noted` from the content the
/// request read or wrote, else from the index), and patients named in its query.
async fn patients_concerned(state: &AppState, path: &[&str], query: &[(String, String)], noted: Option<&[String]>) -> Vec<String> {
    let mut patients: Vec<String> = query
        .iter()
        .flat_map(|(k, v)| match (k.as_str(), v.strip_prefix("Patient/")) {
            (_, Some(id)) => vec![id.to_owned()],
            ("patient", None) if !v.contains('/') => v.split(',').map(str::to_owned).collect(),
            ("_id", None) if path == ["Patient"] => v.split(',').map(str::to_owned).collect(),
            _ => vec![],
        })
        .filter(|id| crate::fhir::types::Id::is_valid(id))
        .map(|id| format!("Patient/{id}"))
        .collect();
    match path {
        ["Patient", id, ..] if crate::fhir::types::Id::is_valid(id) => patients.push(format!("Patient/{id}")),
        [_, id, ..] if crate::fhir::types::Id::is_valid(id) && noted.is_some() => patients.extend(noted.into_iter().flatten().cloned()),
        [resource_type, id, ..] if crate::fhir::types::Id::is_valid(id) && crate::access::in_patient_compartment_type(resource_type) => {
            let params = crate::access::patient_compartment_params(resource_type);
            let found: Result<Vec<(String,)>, _> = sqlx::query_as(
                "SELECT DISTINCT target FROM search_reference
                  WHERE resource_type = $1 AND id = $2 AND param = ANY($3) AND starts_with(target, 'Patient/')",
            )
            .bind(*resource_type)
            .bind(*id)
            .bind(&params)
            .fetch_all(state.store.pool())
            .await;
            patients.extend(found.unwrap_or_default().into_iter().map(|(t,)| t));
        }
        _ => {}
    }
    patients
}

/// [`route`] once the caller is known.
async fn route_as(state: &AppState, ctx: &Ctx, method: &Method, s: &[&str], body: Body, principal: &Arc<Principal>) -> FhirResult<Response> {
    let principal = principal.clone();
    let store = &state.store;
    match (method.clone(), s) {
        (Method::GET, ["_history"]) => {
            let params = HistoryParams::parse(&ctx.query)?;
            let page = interactions::history::history(store, &principal, None, None, &params, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle::history_bundle(ctx, "_history", &page, &params), HeaderMap::new())
        }
        (Method::POST, []) => {
            let submitted = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let result = interactions::bundle::process(store, &principal, submitted, &ctx.base, state.max_bundle_entries, state.max_body_bytes).await?;
            respond(ctx, StatusCode::OK, bundle::bundle_response(ctx, &result), HeaderMap::new())
        }
        (Method::GET, []) => {
            let outcome = interactions::search::system_search(store, &principal, &ctx.query, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle::search_bundle(ctx, &outcome), HeaderMap::new())
        }
        (Method::GET | Method::POST, ["$export"]) => export::kick_off(state, ctx, &principal, method, crate::export::Level::System, body).await,
        (Method::GET, ["$export-status", id]) => export::status(state, ctx, &principal, id).await,
        (Method::DELETE, ["$export-status", id]) => export::cancel(state, ctx, &principal, id).await,
        (Method::GET, ["$export-file", id, name]) => export::file(state, ctx, &principal, id, name).await,
        (_, []) => Err(FhirError::MethodNotAllowed("unsupported operation at the base URL".into())),
        (method, [rt, rest @ ..]) => {
            let rt = ResourceType::parse(rt)?;
            route_type(state, ctx, &principal, method, &rt, rest, body).await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn route_type(
    state: &AppState,
    ctx: &Ctx,
    principal: &Principal,
    method: Method,
    rt: &ResourceType,
    rest: &[&str],
    body: Body,
) -> FhirResult<Response> {
    let store = &state.store;
    match (method, rest) {
        (Method::GET, []) => search(ctx, store, principal, rt, &ctx.query).await,
        (Method::POST, ["_search"]) => {
            let bytes = read_body(state, body).await?;
            let content_type = ctx.header("content-type").unwrap_or("application/x-www-form-urlencoded");
            if !content_type.starts_with("application/x-www-form-urlencoded") {
                return Err(FhirError::UnsupportedMediaType("_search takes application/x-www-form-urlencoded".into()));
            }
            let mut pairs = ctx.query.clone();
            pairs.extend(form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())));
            search(ctx, store, principal, rt, &pairs).await
        }
        (Method::POST, []) if rt.as_str() == "AuditEvent" && state.audit.enabled() => {
            if ctx.precondition("if-none-exist")?.is_some() {
                return Err(FhirError::BadRequest("AuditEvents are appended to the audit trail: conditional create does not apply".into()));
            }
            let resource = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let stored = crate::audit::submit(&state.store, &state.audit, principal, resource, &ctx.base).await?;
            write_response(ctx, interactions::WriteOutcome { stored, created: true })
        }
        (Method::PUT | Method::PATCH | Method::DELETE, _) if rt.as_str() == "AuditEvent" => {
            Err(FhirError::MethodNotAllowed("the audit trail is append-only: AuditEvents cannot be changed or deleted".into()))
        }
        (Method::POST, []) => {
            let resource = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let outcome = interactions::create::create(store, principal, rt, resource, ctx.precondition("if-none-exist")?, &ctx.base).await?;
            write_response(ctx, outcome)
        }
        (Method::PUT, []) => {
            let criteria = conditional_query(ctx)?;
            let resource = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let outcome =
                interactions::update::conditional_update(store, principal, rt, &criteria, resource, ctx.precondition("if-match")?, &ctx.base)
                    .await?;
            write_response(ctx, outcome)
        }
        (Method::DELETE, []) => {
            let criteria = conditional_query(ctx)?;
            let deleted = interactions::delete::conditional_delete(store, principal, rt, &criteria, &ctx.base).await?;
            delete_response(ctx, deleted)
        }
        (Method::PATCH, []) => {
            let criteria = conditional_query(ctx)?;
            let doc = parse_patch_body(ctx, &read_body(state, body).await?)?;
            let outcome =
                interactions::patch::patch(store, principal, rt, PatchTarget::Criteria { query: &criteria }, doc, ctx.precondition("if-match")?, state.max_body_bytes, &ctx.base)
                    .await?;
            write_response(ctx, outcome)
        }
        (Method::GET, ["_history"]) => {
            let params = HistoryParams::parse(&ctx.query)?;
            let page = interactions::history::history(store, principal, Some(rt), None, &params, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle::history_bundle(ctx, &format!("{rt}/_history"), &page, &params), HeaderMap::new())
        }
        (Method::POST, ["$upload"]) if rt.as_str() == "Binary" => documents::start_upload(state, ctx, principal, body).await,
        (Method::POST, ["$validate"]) => {
            let bytes = read_body(state, body).await?;
            let body = if bytes.is_empty() { None } else { Some(format::parse_resource_body(&ctx.headers, &bytes)?) };
            let issues = interactions::validate::validate(store, principal, rt, None, body, ctx.param("mode"), ctx.param("profile"), &ctx.base).await?;
            respond(ctx, StatusCode::OK, operation_outcome(&issues), HeaderMap::new())
        }
        (m @ (Method::GET | Method::POST), ["$export"]) if rt.as_str() == "Patient" => {
            export::kick_off(state, ctx, principal, &m, crate::export::Level::Patient, body).await
        }
        (m @ (Method::GET | Method::POST), ["$find"]) if rt.as_str() == "Appointment" => {
            let mut params = ctx.query.clone();
            if m == Method::POST {
                let parameters = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
                params.extend(crate::workflows::scheduling::operations::parameters_as_pairs(&parameters)?);
            }
            let found = crate::workflows::scheduling::operations::find(store, principal, &params, &ctx.base).await?;
            respond(ctx, StatusCode::OK, found, HeaderMap::new())
        }
        (Method::GET, ["$monthly-report"]) if rt.as_str() == "Invoice" => {
            let (format, content_type) = match ctx.param("format") {
                None | Some("csv") => (crate::workflows::billing::ReportFormat::Csv, "text/csv; charset=utf-8"),
                Some("ndjson") => (crate::workflows::billing::ReportFormat::Ndjson, "application/fhir+ndjson"),
                Some(_) => return Err(FhirError::BadRequest("$monthly-report: format is csv or ndjson".into())),
            };
            let report = crate::workflows::billing::monthly_report(store, principal, ctx.param("month"), format, &ctx.base).await?;
            let mut headers = HeaderMap::new();
            headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(content_type));
            Ok((StatusCode::OK, headers, report).into_response())
        }
        (Method::POST, ["$hold"]) if rt.as_str() == "Appointment" => {
            let body = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let held = crate::workflows::scheduling::operations::hold(store, principal, body, state.hold_for, &ctx.base).await?;
            respond(ctx, StatusCode::OK, held, HeaderMap::new())
        }
        (Method::POST, ["$book"]) if rt.as_str() == "Appointment" => {
            let body = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let booked = crate::workflows::scheduling::operations::book(store, principal, body, &ctx.base).await?;
            respond(ctx, StatusCode::OK, booked, HeaderMap::new())
        }
        (Method::GET | Method::POST, ["$status"]) if rt.as_str() == "Subscription" => {
            let ids = ctx
                .query
                .iter()
                .filter(|(k, _)| k == "id")
                .flat_map(|(_, v)| v.split(','))
                .map(|v| Id::parse(v.rsplit('/').next().unwrap_or(v)))
                .collect::<FhirResult<Vec<_>>>()?;
            if ids.is_empty() {
                return Err(FhirError::BadRequest("Subscription/$status needs id= (one or more Subscription ids)".into()));
            }
            let bundle = crate::events::subscriptions::operations::status(store, principal, &ids, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle, HeaderMap::new())
        }
        (_, [op]) if op.starts_with('$') => Err(FhirError::NotFound(format!("operation {} is not supported on {rt}", crate::fhir::types::sanitize(op)))),
        (method, [id, rest @ ..]) => {
            let id = Id::parse(id).map_err(|e| match method {
                Method::GET | Method::DELETE => FhirError::NotFound(format!("{rt}/{} is not known", crate::fhir::types::sanitize(id))),
                _ => e,
            })?;
            route_instance(state, ctx, principal, method, rt, &id, rest, body).await
        }
        _ => Err(FhirError::MethodNotAllowed("unsupported method for this path".into())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn route_instance(
    state: &AppState,
    ctx: &Ctx,
    principal: &Principal,
    method: Method,
    rt: &ResourceType,
    id: &Id,
    rest: &[&str],
    body: Body,
) -> FhirResult<Response> {
    let store = &state.store;
    match (method, rest) {
        (Method::GET, []) if ctx.raw => documents::raw(state, ctx, principal, id, None).await,
        (Method::GET, ["_history", version]) if ctx.raw => documents::raw(state, ctx, principal, id, Some(version)).await,
        (Method::POST, ["$upload-complete"]) if rt.as_str() == "Binary" => documents::complete_upload(state, ctx, principal, id, body).await,
        (Method::GET, []) => {
            let stored = interactions::read::read(store, principal, rt, id, &ctx.base).await?;
            read_response(ctx, stored)
        }
        (Method::PUT, []) => {
            let resource = format::parse_resource_body(&ctx.headers, &read_body(state, body).await?)?;
            let outcome = interactions::update::update(store, principal, rt, id, resource, ctx.precondition("if-match")?, &ctx.base).await?;
            write_response(ctx, outcome)
        }
        (Method::PATCH, []) => {
            let doc = parse_patch_body(ctx, &read_body(state, body).await?)?;
            let outcome = interactions::patch::patch(store, principal, rt, PatchTarget::Id(id), doc, ctx.precondition("if-match")?, state.max_body_bytes, &ctx.base).await?;
            write_response(ctx, outcome)
        }
        (Method::DELETE, []) => {
            let deleted = interactions::delete::delete(store, principal, rt, id, &ctx.base).await?;
            delete_response(ctx, deleted)
        }
        (Method::GET, ["_history"]) => {
            let params = HistoryParams::parse(&ctx.query)?;
            let page = interactions::history::history(store, principal, Some(rt), Some(id), &params, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle::history_bundle(ctx, &format!("{rt}/{id}/_history"), &page, &params), HeaderMap::new())
        }
        (Method::GET, ["_history", version]) => {
            let stored = interactions::read::vread(store, principal, rt, id, version, &ctx.base).await?;
            read_response(ctx, stored)
        }
        (Method::POST, ["$validate"]) | (Method::GET, ["$validate"]) => {
            let bytes = read_body(state, body).await?;
            let body = if bytes.is_empty() { None } else { Some(format::parse_resource_body(&ctx.headers, &bytes)?) };
            let issues =
                interactions::validate::validate(store, principal, rt, Some(id), body, ctx.param("mode"), ctx.param("profile"), &ctx.base).await?;
            respond(ctx, StatusCode::OK, operation_outcome(&issues), HeaderMap::new())
        }
        (m @ (Method::GET | Method::POST), ["$generate-slots"]) if rt.as_str() == "Schedule" => {
            let params = operation_params(state, ctx, &m, body).await?;
            let result = crate::workflows::scheduling::generate::generate(store, principal, id, &params, &ctx.base, state.max_bundle_entries, state.max_body_bytes).await?;
            respond(ctx, StatusCode::OK, bundle::bundle_response(ctx, &result), HeaderMap::new())
        }
        (Method::GET | Method::POST, ["$status"]) if rt.as_str() == "Subscription" => {
            let _ = read_body(state, body).await?;
            let bundle = crate::events::subscriptions::operations::status(store, principal, std::slice::from_ref(id), &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle, HeaderMap::new())
        }
        (m @ (Method::GET | Method::POST), ["$events"]) if rt.as_str() == "Subscription" => {
            let params = operation_params(state, ctx, &m, body).await?;
            let bundle = crate::events::subscriptions::operations::events(store, principal, id, &params, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle, HeaderMap::new())
        }
        (Method::GET | Method::POST, ["$get-ws-binding-token"]) if rt.as_str() == "Subscription" => {
            let _ = read_body(state, body).await?;
            let parameters = crate::events::subscriptions::operations::binding_token(store, principal, id, &ctx.base).await?;
            respond(ctx, StatusCode::OK, parameters, HeaderMap::new())
        }
        (Method::GET | Method::POST, ["$everything"]) if rt.as_str() == "Patient" => {
            let params = interactions::everything::EverythingParams::parse(&ctx.query)?;
            let page = interactions::everything::everything(store, principal, id, &params, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle::everything_bundle(ctx, &format!("Patient/{id}/$everything"), &page, &params), HeaderMap::new())
        }
        (m @ (Method::GET | Method::POST), ["$export"]) if rt.as_str() == "Group" => {
            export::kick_off(state, ctx, principal, &m, crate::export::Level::Group(id.clone()), body).await
        }
        (Method::GET, [target]) if crate::fhir::definitions::definitions().compartment(rt.as_str()).is_some() && !target.starts_with('$') => {
            let target = ResourceType::parse(target)?;
            let strict = ctx.prefer("handling").as_deref() == Some("strict");
            let outcome = interactions::search::compartment_search(store, principal, rt, id, &target, &ctx.query, strict, &ctx.base).await?;
            respond(ctx, StatusCode::OK, bundle::search_bundle(ctx, &outcome), HeaderMap::new())
        }
        (_, [op]) if op.starts_with('$') => Err(FhirError::NotFound(format!("operation {} is not supported", crate::fhir::types::sanitize(op)))),
        (Method::GET, _) => Err(FhirError::NotFound("no such endpoint".into())),
        _ => Err(FhirError::MethodNotAllowed("unsupported method for this path".into())),
    }
}

async fn search(ctx: &Ctx, store: &Store, principal: &Principal, rt: &ResourceType, pairs: &[(String, String)]) -> FhirResult<Response> {
    let strict = ctx.prefer("handling").as_deref() == Some("strict");
    let outcome = interactions::search::search(store, principal, rt, pairs, strict, &ctx.base).await?;
    respond(ctx, StatusCode::OK, bundle::search_bundle(ctx, &outcome), HeaderMap::new())
}

/// The parameters of an instance operation: the query, and for a POST the `Parameters` body
/// (an empty body adds nothing).
async fn operation_params(state: &AppState, ctx: &Ctx, method: &Method, body: Body) -> FhirResult<Vec<(String, String)>> {
    let mut params = ctx.query.clone();
    if *method == Method::POST {
        let bytes = read_body(state, body).await?;
        if !bytes.is_empty() {
            let parameters = format::parse_resource_body(&ctx.headers, &bytes)?;
            params.extend(crate::workflows::scheduling::operations::parameters_as_pairs(&parameters)?);
        }
    }
    Ok(params)
}

/// The query of a conditional interaction; a conditional write without criteria is refused.
fn conditional_query(ctx: &Ctx) -> FhirResult<String> {
    let pairs: Vec<(String, String)> =
        ctx.query.iter().filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")).cloned().collect();
    if pairs.is_empty() {
        return Err(FhirError::MethodNotAllowed("this interaction needs a resource id or search criteria".into()));
    }
    Ok(form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
}

fn parse_patch_body(ctx: &Ctx, bytes: &Bytes) -> FhirResult<Value> {
    let content_type = ctx.header("content-type").unwrap_or("");
    let base = content_type.split(';').next().unwrap_or("").trim();
    if base != "application/json-patch+json" {
        return Err(FhirError::UnsupportedMediaType("PATCH takes application/json-patch+json (JSON Patch)".into()));
    }
    format::parse_in(Format::Json, bytes)
}

/// Reads the body up to the configured limit: 413 beyond it, 400 when it cannot be read (broken
/// chunked coding, a body shorter than declared).
async fn read_body(state: &AppState, body: Body) -> FhirResult<Bytes> {
    axum::body::to_bytes(body, state.max_body_bytes).await.map_err(|e| hygiene::body_error(&e, state.max_body_bytes))
}

/// The 401 message for requests without any Authorization header.
const MISSING_TOKEN: &str = "an access token is required (Authorization: Bearer ...)";

pub(crate) fn authenticate(state: &AppState, headers: &HeaderMap) -> FhirResult<Arc<Principal>> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| FhirError::Unauthorized(MISSING_TOKEN.into()))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| FhirError::Unauthorized("the Authorization header must carry a Bearer token".into()))?;
    state.tokens.verify(token)
}

pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.base_url {
        return base.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .unwrap_or("localhost");
    format!("{}://{host}/fhir", if state.tls { "https" } else { "http" })
}

/// Renders a body with the negotiated format and extra headers.
fn respond(ctx: &Ctx, status: StatusCode, mut value: Value, mut headers: HeaderMap) -> FhirResult<Response> {
    if let Some(mask) = ctx.mask.get() {
        crate::access::mask::apply(&mut value, mask);
    }
    let bytes = format::render(value, ctx.format, ctx.pretty)?;
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctx.format.content_type()));
    Ok((status, headers, bytes).into_response())
}

/// The OperationOutcome response for an error, in the negotiated format.
pub fn error_response(error: &FhirError, format: Format, pretty: bool) -> Response {
    if let FhirError::Internal(msg) = error {
        tracing::error!(error = %msg, "request failed");
    }
    let (body, content_type) = match format::render(error.outcome(), format, pretty) {
        Ok(body) => (body, format.content_type()),
        Err(_) => (serde_json::to_vec(&error.outcome()).unwrap_or_default(), Format::Json.content_type()),
    };
    let mut response = (error.status(), [(header::CONTENT_TYPE, content_type)], body).into_response();
    if let FhirError::Unauthorized(message) = error {
        // RFC 6750 §3.1: no error code when the request carried no credentials at all.
        let challenge = if message == MISSING_TOKEN {
            "Bearer realm=\"ironfhir\""
        } else {
            "Bearer realm=\"ironfhir\", error=\"invalid_token\""
        };
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("W/\"{version}\"")).unwrap_or(HeaderValue::from_static("W/\"0\""))
}

fn http_date(t: &DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).unwrap_or(HeaderValue::from_static(""))
}

fn version_headers(stored: &StoredResource) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, etag(stored.version_id));
    h.insert(header::LAST_MODIFIED, http_date(&stored.last_updated));
    h
}

/// read/vread: ETag, Last-Modified, conditional read (304), `_summary`, `_elements`.
fn read_response(ctx: &Ctx, stored: StoredResource) -> FhirResult<Response> {
    if let Some(content) = &stored.content {
        crate::audit::intent::note_concerned(&stored.resource_type, content, &ctx.base);
    }
    let headers = version_headers(&stored);
    if let Some(inm) = ctx.header("if-none-match") {
        let current = format!("W/\"{}\"", stored.version_id);
        if inm.split(',').map(str::trim).any(|t| t == "*" || t == current || t.trim_start_matches("W/") == format!("\"{}\"", stored.version_id)) {
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
    } else if let Some(since) = ctx.header("if-modified-since").and_then(parse_http_date) {
        if stored.last_updated.timestamp() <= since.timestamp() {
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
    }
    let content = stored.content.ok_or_else(|| FhirError::Gone("the resource was deleted".into()))?;
    let shaped = shape(ctx, content)?;
    respond(ctx, StatusCode::OK, shaped, headers)
}

/// Applies `_summary` / `_elements` from the request to one resource.
fn shape(ctx: &Ctx, content: Value) -> FhirResult<Value> {
    if let Some(mode) = ctx.param("_summary") {
        return match mode {
            "true" | "text" | "data" | "false" => Ok(format::summarize(&content, mode)),
            "count" => Err(FhirError::BadRequest("_summary=count applies to searches".into())),
            _ => Err(FhirError::BadRequest("_summary must be true, text, data, count or false".into())),
        };
    }
    if let Some(elements) = ctx.param("_elements") {
        let list: Vec<String> = elements.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        return Ok(format::select_elements(&content, &list));
    }
    Ok(content)
}

/// create/update/patch: 201 + Location for creations, 200 otherwise; body per `Prefer: return`.
fn write_response(ctx: &Ctx, outcome: WriteOutcome) -> FhirResult<Response> {
    let stored = &outcome.stored;
    if let Some(content) = &stored.content {
        crate::audit::intent::note_concerned(&stored.resource_type, content, &ctx.base);
    }
    let mut headers = version_headers(stored);
    let location = format!("{}/{}/{}/_history/{}", ctx.base, stored.resource_type, stored.id, stored.version_id);
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v.clone());
        headers.insert(header::CONTENT_LOCATION, v);
    }
    match ctx.prefer("return").as_deref() {
        Some("minimal") => Ok((status, headers).into_response()),
        Some("OperationOutcome") => {
            let text = if outcome.created { "created" } else { "updated" };
            let issue = Issue { severity: crate::error::Severity::Information, code: "informational", diagnostics: format!("{} {}/{} version {}", text, stored.resource_type, stored.id, stored.version_id), expression: vec![] };
            let mut issues = vec![issue];
            // What the prescription check found and recorded (workflows::safety), as warnings.
            if stored.resource_type == "MedicationRequest" {
                let linked = stored.content.as_ref().and_then(|c| c.get("detectedIssue")).and_then(Value::as_array).cloned().unwrap_or_default();
                for reference in linked.iter().filter_map(|l| l.get("reference").and_then(Value::as_str)) {
                    issues.push(Issue {
                        severity: crate::error::Severity::Warning,
                        code: "business-rule",
                        diagnostics: format!("the prescription check found an interaction or allergy, recorded as {reference}"),
                        expression: vec!["MedicationRequest.detectedIssue".into()],
                    });
                }
            }
            respond(ctx, status, operation_outcome(&issues), headers)
        }
        _ => {
            let content = stored.content.as_ref().ok_or_else(|| FhirError::Internal("write without content".into()))?;
            respond(ctx, status, content.clone(), headers)
        }
    }
}

fn delete_response(ctx: &Ctx, deleted: u32) -> FhirResult<Response> {
    if ctx.prefer("return").as_deref() == Some("minimal") {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let text = if deleted > 0 { "the resource was deleted" } else { "no resource matched; nothing was deleted" };
    let issue = Issue { severity: crate::error::Severity::Information, code: "informational", diagnostics: text.into(), expression: vec![] };
    respond(ctx, StatusCode::OK, operation_outcome(&[issue]), HeaderMap::new())
}

/// Parses an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%a, %d %b %Y %H:%M:%S GMT").ok().map(|t| t.and_utc())
}

/// `instant` text for Bundle.meta.lastUpdated and history entries.
pub(crate) fn instant_now() -> String {
    instant(&Utc::now())
}
