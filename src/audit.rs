//! Audit records of refused attempts (403): who tried what, as an R4 AuditEvent (type `rest`,
//! outcome `4`), written on its own connection so that it survives the refused request's
//! rolled-back transaction. The tamper-evident audit trail of every access (hash chain,
//! `ironfhir audit verify`) is issue 6's; this is its first producer.

use axum::http::Method;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::store::Store;

/// Records that `principal` was refused `method` on `path` (the request's path segments after
/// the FHIR base) because of `reason`. Failures to record are logged, never surfaced: the
/// client gets its 403 either way.
pub async fn record_denied(store: &Store, principal: &Principal, method: &Method, path: &[&str], reason: &str, base: &str) {
    let event = denied_event(principal, method, path, reason);
    let id = crate::fhir::types::Id::generate();
    let now = crate::interactions::now();
    let mut content = event;
    crate::interactions::stamp(&mut content, id.as_str(), 1, &now);
    if let Err(e) = crate::store::create_one(store, "AuditEvent", id.as_str(), now, &content, base).await {
        tracing::error!(error = %e, "cannot record the audit event of a refused request");
    }
}

/// The AuditEvent of a refused request.
fn denied_event(principal: &Principal, method: &Method, path: &[&str], reason: &str) -> Value {
    let (subtype, action) = match (method.as_str(), path.len()) {
        ("GET", 1) => ("search-type", "E"),
        ("GET", 2) => ("read", "R"),
        ("GET", _) if path.get(2) == Some(&"_history") && path.len() == 4 => ("vread", "R"),
        ("GET", _) => ("history-instance", "R"),
        ("POST", 0) => ("batch", "E"),
        ("POST", 1) => ("create", "C"),
        ("PUT", _) => ("update", "U"),
        ("PATCH", _) => ("patch", "U"),
        ("DELETE", _) => ("delete", "D"),
        _ => ("operation", "E"),
    };
    let mut agents = vec![];
    let who = principal.role.as_deref().filter(|r| r.starts_with("PractitionerRole/")).or(principal.fhir_user.as_deref());
    let mut agent = json!({"requestor": true, "altId": principal.subject});
    if let Some(who) = who {
        agent["who"] = json!({"reference": who});
    }
    if let Some(client) = &principal.client_id {
        agent["name"] = json!(format!("client {client}"));
    }
    agents.push(agent);
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": "4",
        "outcomeDesc": reason,
        "agent": agents,
        "source": {"observer": {"display": "ironfhir"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    if let [resource_type, id, ..] = path
        && !id.starts_with('$')
        && !id.starts_with('_')
    {
        event["entity"] = json!([{"what": {"reference": format!("{resource_type}/{id}")}}]);
    } else if let [resource_type, ..] = path {
        event["entity"] = json!([{"what": {"display": resource_type}}]);
    }
    if let Some(patient) = &principal.patient {
        let entities = event["entity"].as_array().cloned().unwrap_or_default();
        let mut entities = entities;
        entities.push(json!({"what": {"reference": format!("Patient/{patient}")}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}));
        event["entity"] = Value::Array(entities);
    }
    event
}

/// Records a refused authentication: an invalid bearer token at the FHIR API (`what` =
/// "bearer token") or a refused request at the token endpoint (`what` = "token request",
/// `client` = the client_id it named, unverified). `reason` is the OAuth error and its
/// description — never a token, secret or code.
pub async fn record_auth_failure(store: &Store, what: &str, client: Option<&str>, reason: &str, base: &str) {
    let mut agent = json!({"requestor": true, "name": match client {
        Some(c) => format!("client {c} (unverified)"),
        None => "unauthenticated caller".to_owned(),
    }});
    if let Some(c) = client {
        agent["altId"] = json!(c);
    }
    let mut content = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": "4",
        "outcomeDesc": format!("{what} refused: {reason}"),
        "agent": [agent],
        "source": {"observer": {"display": "ironfhir"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    let id = crate::fhir::types::Id::generate();
    let now = crate::interactions::now();
    crate::interactions::stamp(&mut content, id.as_str(), 1, &now);
    if let Err(e) = crate::store::create_one(store, "AuditEvent", id.as_str(), now, &content, base).await {
        tracing::error!(error = %e, "cannot record the audit event of a refused authentication");
    }
}
