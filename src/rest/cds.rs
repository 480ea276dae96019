//! The medication-safety check as a CDS Hooks service (https://cds-hooks.hl7.org/2.0/), so an
//! EHR that speaks CDS Hooks gets the same interaction and allergy cards the server applies to
//! every MedicationRequest it stores (`workflows::safety`).
//!
//! - `GET /cds-services`: discovery — `medication-interactions` (hook `order-select`) and
//!   `medication-interactions-sign` (hook `order-sign`), each with its prefetch templates.
//! - `POST /cds-services/{id}`: `context.patientId` and `context.draftOrders` (a Bundle of
//!   MedicationRequests) are checked against the patient's active MedicationRequests and
//!   allergies — from `prefetch` when the client sent them, otherwise read from this server as
//!   the caller (reach applies) — and against each other; the answer is `{"cards": […]}`.
//!
//! Callers present one of this server's access tokens (`Authorization: Bearer`), as for the FHIR
//! API; CDS Hooks' own client JWTs are not accepted. Each call is audited.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::ResourceType;

const SERVICES: [(&str, &str); 2] = [("medication-interactions", "order-select"), ("medication-interactions-sign", "order-sign")];

/// `GET /cds-services`.
pub async fn discovery() -> Json<Value> {
    let services: Vec<Value> = SERVICES
        .iter()
        .map(|(id, hook)| {
            json!({
                "hook": hook,
                "id": id,
                "title": "Medication interactions and allergies",
                "description": "Checks draft medication orders against each other, the patient's active MedicationRequests and recorded allergies (ironfhir's interaction table).",
                "prefetch": {
                    "medications": "MedicationRequest?patient={{context.patientId}}&status=active",
                    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
                },
            })
        })
        .collect();
    Json(json!({ "services": services }))
}

/// A CDS Hooks error answer (the specification leaves the body open; this one says why).
fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// `POST /cds-services/{id}`.
pub async fn call(State(state): State<Arc<AppState>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some((_, hook)) = SERVICES.iter().find(|(s, _)| *s == id) else {
        return refuse(StatusCode::NOT_FOUND, "no such CDS service");
    };
    let principal = match super::authenticate(&state, &headers) {
        Ok(p) => match crate::access::with_current_role(&state.store, &state.role_grants, p).await {
            Ok(p) => p,
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
        },
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "the body is not JSON"),
    };
    if request.get("hook").and_then(Value::as_str) != Some(hook) {
        return refuse(StatusCode::BAD_REQUEST, &format!("this service answers the {hook} hook"));
    }
    let base = super::base_url(&state, &headers);
    let patient = request.pointer("/context/patientId").and_then(Value::as_str).map(str::to_owned);
    let result = cards(&state, &principal, &request, patient.as_deref(), &base).await;
    let outcome = if result.is_ok() { "0" } else { "4" };
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "operation", "display": "operation"}],
        "action": "E",
        "recorded": crate::interactions::instant(&crate::interactions::now()),
        "outcome": outcome,
        "outcomeDesc": format!("CDS Hooks {hook} ({id})"),
        "agent": [crate::audit::requesting_agent(&principal, None)],
        "source": crate::audit::source(),
        "entity": patient.iter().filter(|p| crate::fhir::types::Id::is_valid(p)).map(|p| json!({"what": {"reference": format!("Patient/{p}")}})).collect::<Vec<_>>(),
    });
    if state.audit.record(event).await.is_err() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "the audit trail cannot be written");
    }
    match result {
        Ok(cards) => Json(json!({ "cards": cards })).into_response(),
        Err(FhirError::Forbidden(why)) => refuse(StatusCode::FORBIDDEN, &why),
        Err(FhirError::BadRequest(why) | FhirError::NotFound(why)) => refuse(StatusCode::BAD_REQUEST, &why),
        Err(FhirError::Unavailable(why)) => refuse(StatusCode::SERVICE_UNAVAILABLE, &why),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "the check could not be run"),
    }
}

/// The resources of a Bundle (or a searchset from prefetch) of one type.
fn resources_of<'a>(bundle: Option<&'a Value>, resource_type: &str) -> Vec<&'a Value> {
    bundle
        .and_then(|b| b.get("entry"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"))
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(resource_type))
        .collect()
}

async fn cards(state: &AppState, principal: &Principal, request: &Value, patient: Option<&str>, base: &str) -> FhirResult<Vec<Value>> {
    let patient = patient.ok_or_else(|| FhirError::BadRequest("context.patientId is required".into()))?;
    crate::fhir::types::Id::parse(patient)?;
    let drafts = resources_of(request.pointer("/context/draftOrders"), "MedicationRequest");
    let mut active: Vec<Value> = resources_of(request.pointer("/prefetch/medications"), "MedicationRequest").into_iter().cloned().collect();
    let mut allergies: Vec<Value> = resources_of(request.pointer("/prefetch/allergies"), "AllergyIntolerance").into_iter().cloned().collect();
    if request.pointer("/prefetch/medications").is_none() {
        active = search(state, principal, "MedicationRequest", &[("patient", patient), ("status", "active")], base).await?;
    }
    if request.pointer("/prefetch/allergies").is_none() {
        allergies = search(state, principal, "AllergyIntolerance", &[("patient", patient)], base).await?;
    }
    let concept = |r: &Value| r.get("medicationCodeableConcept").cloned().into_iter().collect::<Vec<_>>();
    let allergy_list: Vec<(String, Value, Option<String>)> = allergies
        .iter()
        .filter(|a| a.pointer("/clinicalStatus/coding/0/code").and_then(Value::as_str).unwrap_or("active") == "active")
        .filter_map(|a| {
            Some((
                format!("AllergyIntolerance/{}", a.get("id").and_then(Value::as_str).unwrap_or("?")),
                a.get("code")?.clone(),
                a.get("criticality").and_then(Value::as_str).map(str::to_owned),
            ))
        })
        .collect();
    let mut findings = vec![];
    for (i, draft) in drafts.iter().enumerate() {
        let mut others: Vec<(String, Vec<Value>)> =
            active.iter().map(|m| (format!("MedicationRequest/{}", m.get("id").and_then(Value::as_str).unwrap_or("?")), concept(m))).collect();
        others.extend(drafts.iter().enumerate().filter(|(j, _)| *j > i).map(|(j, d)| (format!("draft order {}", j + 1), concept(d))));
        findings.extend(crate::workflows::safety::compare(&concept(draft), &others, &allergy_list));
    }
    Ok(crate::workflows::safety::cards(&findings))
}

/// Every match of a search as the principal (reach applies), up to 1,000.
async fn search(state: &AppState, principal: &Principal, resource_type: &str, params: &[(&str, &str)], base: &str) -> FhirResult<Vec<Value>> {
    let rt = ResourceType::parse(resource_type)?;
    let mut pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    pairs.push(("_count".into(), "1000".into()));
    let outcome = crate::interactions::search::search(&state.store, principal, &rt, &pairs, false, base).await?;
    Ok(outcome.found.into_iter().filter_map(|r| r.content).collect())
}
