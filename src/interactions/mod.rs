//! The FHIR REST interactions as plain async functions over a [`Store`] and a [`Principal`].
//!
//! Each function authorises, acts and returns stored resources; `rest/` only parses requests and
//! renders what comes back. Spec: https://hl7.org/fhir/R4/http.html

pub mod bundle;
pub mod capabilities;
pub mod create;
pub mod delete;
pub mod everything;
pub mod history;
pub mod patch;
pub mod read;
pub mod rules;
pub mod search;
pub mod update;
pub mod validate;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};

use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::fhir::validate::validate_resource;
use crate::store::StoredResource;

/// The result of a write: the version now stored and whether it created the resource
/// (201) or updated/matched an existing one (200).
#[derive(Debug)]
pub struct WriteOutcome {
    pub stored: StoredResource,
    pub created: bool,
}

/// The timestamp of a new version, at the millisecond precision that `meta.lastUpdated` shows.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// FHIR `instant` text for a timestamp (`2026-11-22T06:40:00.123Z`).
pub fn instant(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Checks a submitted body before a write: a JSON object whose `resourceType` is the type in the
/// URL and whose `id` (if required or present) matches the URL — then validates its structure.
pub fn check_body(resource_type: &ResourceType, body: &Value, url_id: Option<&Id>) -> FhirResult<()> {
    let obj = body
        .as_object()
        .ok_or_else(|| FhirError::BadRequest("the request body must be a JSON object holding a resource".into()))?;
    match obj.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type.as_str() => {}
        Some(_) => {
            return Err(FhirError::BadRequest(format!(
                "resourceType in the body does not match the URL ({})",
                resource_type
            )));
        }
        None => return Err(FhirError::BadRequest("the body has no resourceType".into())),
    }
    match (url_id, obj.get("id")) {
        (Some(url_id), Some(Value::String(body_id))) if body_id != url_id.as_str() => {
            return Err(FhirError::BadRequest("the id in the body does not match the id in the URL".into()));
        }
        (Some(_), None) => {
            return Err(FhirError::BadRequest("an update must carry the resource id in the body (http.html#update)".into()));
        }
        _ => {}
    }
    let issues = validate_resource(body);
    if issues.iter().any(|i| matches!(i.severity, crate::error::Severity::Error | crate::error::Severity::Fatal)) {
        return Err(FhirError::Invalid(issues));
    }
    Ok(())
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated` (server-owned; client values are replaced).
pub fn stamp(resource: &mut Value, id: &str, version_id: i64, last_updated: &DateTime<Utc>) {
    let Some(obj) = resource.as_object_mut() else { return };
    // Keep `resourceType` first and `id` second, as FHIR JSON is usually written.
    let mut ordered = Map::with_capacity(obj.len() + 2);
    if let Some(rt) = obj.shift_remove("resourceType") {
        ordered.insert("resourceType".into(), rt);
    }
    obj.shift_remove("id");
    ordered.insert("id".into(), Value::String(id.to_owned()));
    let mut meta = match obj.shift_remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version_id.to_string()));
    meta.insert("lastUpdated".into(), Value::String(instant(last_updated)));
    ordered.insert("meta".into(), Value::Object(meta));
    ordered.extend(std::mem::take(obj));
    *obj = ordered;
}

/// A current resource ready for the client: 404 when missing, 410 when deleted.
pub fn live(stored: Option<StoredResource>, resource_type: &ResourceType, id: &Id) -> FhirResult<StoredResource> {
    match stored {
        None => Err(FhirError::NotFound(format!("{resource_type}/{id} is not known"))),
        Some(s) if s.deleted => Err(FhirError::Gone(format!("{resource_type}/{id} was deleted"))),
        Some(s) => Ok(s),
    }
}
