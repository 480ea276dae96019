//! The audit trail: an R4 AuditEvent for every request to the FHIR API (read, vread, search,
//! history, create, update, patch, delete, operations, export; allowed or refused) and for
//! every sign-in, token request and invalid bearer token, appended to a hash chain that
//! `ironfhir audit verify` checks ([`trail`]). Events name who (user, role, client, network
//! address), what (the resource, the patient concerned, the query of a search) and how it
//! ended; never a token, secret or password.

pub mod intent;
pub mod projection;
pub mod trail;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::auth::Principal;

/// What one FHIR API request did, for its AuditEvent.
pub struct Access<'a> {
    pub principal: &'a Principal,
    pub method: &'a Method,
    /// Path segments after the FHIR base.
    pub path: &'a [&'a str],
    /// The query string (searches, conditional operations).
    pub query: &'a [(String, String)],
    pub status: StatusCode,
    /// Why a refused request was refused (the OperationOutcome's text).
    pub reason: Option<&'a str>,
    /// `Patient/ID` of the patients the request concerned.
    pub patients: Vec<String>,
    pub network: Option<String>,
    /// `Type/ID` of the resource a create made.
    pub created: Option<String>,
}

/// The requesting agent of a request's AuditEvent: the token's subject, the acting role or
/// user, the client and the network address (also what a write's audit intent records).
pub fn requesting_agent(principal: &Principal, network: Option<&str>) -> Value {
    let mut agent = json!({"requestor": true, "altId": principal.subject});
    let who = principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")).or(principal.fhir_user.as_deref());
    if let Some(who) = who {
        agent["who"] = json!({"reference": who});
    }
    if let Some(client) = &principal.client_id {
        agent["name"] = json!(format!("client {client}"));
    }
    if let Some(address) = network {
        agent["network"] = json!({"address": address, "type": "2"});
    }
    agent
}

/// The interaction (restful-interaction code) and action (C/R/U/D/E) of a request.
fn interaction(method: &Method, path: &[&str]) -> (&'static str, &'static str) {
    let operation = path.iter().any(|s| s.starts_with('$'));
    match (method.as_str(), path) {
        _ if operation => ("operation", "E"),
        ("GET", []) => ("search-system", "E"),
        ("GET", ["_history"]) => ("history-system", "R"),
        ("GET", [_]) => ("search-type", "E"),
        ("POST", [_, "_search"]) => ("search-type", "E"),
        ("GET", [_, "_history"]) => ("history-type", "R"),
        ("GET", [_, _]) => ("read", "R"),
        ("GET", [_, _, "_history"]) => ("history-instance", "R"),
        ("GET", [_, _, "_history", _]) => ("vread", "R"),
        ("GET", [_, _, _]) => ("search-compartment", "E"),
        ("POST", []) => ("transaction", "E"),
        ("POST", [_]) => ("create", "C"),
        ("PUT", _) => ("update", "U"),
        ("PATCH", _) => ("patch", "U"),
        ("DELETE", _) => ("delete", "D"),
        _ => ("operation", "E"),
    }
}

/// The AuditEvent outcome for an HTTP status: 0 success, 4 refused (client errors), 8 failed.
fn outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "8"
    } else if status.is_client_error() {
        "4"
    } else {
        "0"
    }
}

pub(crate) fn source() -> Value {
    json!({"observer": {"display": "ironfhir"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]})
}

/// An `entity.type` coding (audit-entity-type: 1 Person, 2 System Object).
fn entity_type(code: &str, display: &str) -> Value {
    json!({"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": code, "display": display})
}

/// The entity of the resource a request touched.
fn object_entity(reference: &str) -> Value {
    json!({"what": {"reference": reference}, "type": entity_type("2", "System Object")})
}

/// The AuditEvents of a FHIR API request: one, or one per patient concerned.
pub fn rest_events(access: &Access<'_>) -> Vec<Value> {
    let principal = access.principal;
    let (subtype, action) = interaction(access.method, access.path);
    let mut agents = vec![requesting_agent(principal, access.network.as_deref())];
    if let (Some(user), Some(role)) = (principal.fhir_user.as_deref(), principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/"))) {
        // The person behind the role, as a second agent.
        agents.push(json!({"who": {"reference": user}, "requestor": false, "role": [{"text": format!("acting in {role}")}]}));
    }
    let mut entities = vec![];
    match access.path {
        [resource_type, id, ..] if !id.starts_with('$') && !id.starts_with('_') => {
            entities.push(object_entity(&format!("{resource_type}/{id}")));
        }
        [resource_type, ..] => match &access.created {
            Some(created) => entities.push(object_entity(created)),
            None => entities.push(json!({"what": {"display": resource_type}})),
        },
        [] => {}
    }
    let searched: Vec<(String, String)> = access.query.iter().filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")).cloned().collect();
    if !searched.is_empty() && action == "E" {
        use base64::Engine;
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(&searched).finish();
        entities.push(json!({"type": entity_type("2", "System Object"), "query": base64::engine::general_purpose::STANDARD.encode(query)}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": outcome(access.status),
        "agent": agents,
        "source": source(),
    });
    if let Some(reason) = access.reason.filter(|_| access.status.is_client_error() || access.status.is_server_error()) {
        event["outcomeDesc"] = json!(reason);
    }
    let mut patients = access.patients.clone();
    if let Some(p) = &principal.patient {
        patients.push(format!("Patient/{p}"));
    }
    patients.sort();
    patients.dedup();
    if patients.is_empty() {
        if !entities.is_empty() {
            event["entity"] = Value::Array(entities);
        }
        return vec![event];
    }
    // One event per patient concerned (as IHE BALP does), so that a patient reading the
    // events about their record never sees another patient named as the one concerned.
    patients
        .into_iter()
        .map(|patient| {
            let mut one = event.clone();
            let mut list = entities.clone();
            list.push(json!({"what": {"reference": patient}, "type": entity_type("1", "Person"), "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}));
            one["entity"] = Value::Array(list);
            one
        })
        .collect()
}

/// The AuditEvent of a refused authentication: an invalid bearer token at the FHIR API
/// (`what` = "bearer token"), a refused token request or sign-in (`client` = the client_id
/// it named, unverified). `reason` is the error and its description — never a token, secret
/// or code.
pub fn auth_failure_event(what: &str, client: Option<&str>, reason: &str, network: Option<&str>) -> Value {
    let mut agent = json!({"requestor": true, "name": match client {
        Some(c) => format!("client {c} (unverified)"),
        None => "unauthenticated caller".to_owned(),
    }});
    if let Some(c) = client {
        agent["altId"] = json!(c);
    }
    if let Some(address) = network {
        agent["network"] = json!({"address": address, "type": "2"});
    }
    json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": "4",
        "outcomeDesc": format!("{what} refused: {reason}"),
        "agent": [agent],
        "source": source(),
    })
}

/// Records a refused authentication (see [`auth_failure_event`]); failures are logged: the
/// refusal stands either way.
pub async fn record_auth_failure(state: &crate::rest::AppState, what: &str, client: Option<&str>, reason: &str) {
    if let Err(e) = state.audit.record(auth_failure_event(what, client, reason, None)).await {
        tracing::error!(error = %e, "cannot record a refused authentication");
    }
}
