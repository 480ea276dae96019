//! $validate at type and instance level — https://hl7.org/fhir/R4/resource-operation-validate.html

use serde_json::Value;

use crate::auth::{Interaction, Principal};
use crate::error::{FhirError, FhirResult, Issue, Severity};
use crate::fhir::types::{Id, ResourceType};
use crate::fhir::validate::{validate_against_profile, validate_resource};
use crate::store::Store;

/// Validates `body` (a resource, or a Parameters with a `resource` parameter) and returns the
/// issues found; the caller renders them as an OperationOutcome with 200. `mode=delete` checks
/// only that the instance exists.
pub async fn validate(
    store: &Store,
    principal: &Principal,
    resource_type: &ResourceType,
    id: Option<&Id>,
    body: Option<Value>,
    mode: Option<&str>,
    profile: Option<&str>,
    base: &str,
) -> FhirResult<Vec<Issue>> {
    if !(principal.allows(resource_type.as_str(), Interaction::Create)
        || principal.allows(resource_type.as_str(), Interaction::Update)
        || principal.allows(resource_type.as_str(), Interaction::Read))
    {
        return Err(FhirError::Forbidden(format!("the access token's scopes do not cover {resource_type}")));
    }
    let mut mode = mode.map(str::to_owned);
    let mut profile = profile.map(str::to_owned);
    let resource = match body {
        Some(Value::Object(obj)) if obj.get("resourceType").and_then(Value::as_str) == Some("Parameters") && resource_type.as_str() != "Parameters" => {
            let mut resource = None;
            for p in obj.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                match p.get("name").and_then(Value::as_str) {
                    Some("resource") => resource = p.get("resource").cloned(),
                    Some("mode") => mode = p.get("valueCode").and_then(Value::as_str).map(str::to_owned),
                    Some("profile") => profile = p.get("valueUri").or(p.get("valueCanonical")).and_then(Value::as_str).map(str::to_owned),
                    _ => {}
                }
            }
            resource
        }
        Some(v) => Some(v),
        None => None,
    };
    // The stored instance is read like any read: out of reach (or masked) = does not exist.
    if mode.as_deref() == Some("delete") {
        let id = id.ok_or_else(|| FhirError::BadRequest("mode=delete needs an instance".into()))?;
        // Only what exists for the principal's delete can be asked about (410 a deletion).
        super::read::current_for(store, principal, Interaction::Delete, resource_type, id, base).await?;
        return Ok(vec![]);
    }
    let resource = match resource {
        Some(r) => r,
        None => {
            let id = id.ok_or_else(|| FhirError::BadRequest("$validate needs a resource in the body".into()))?;
            let mut content = super::read::read(store, principal, resource_type, id, base).await?.content.unwrap_or(Value::Null);
            if let Some(mask) = principal.mask() {
                crate::access::mask::apply(&mut content, &mask);
            }
            content
        }
    };
    let mut issues = Vec::new();
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type.as_str() => {}
        _ => issues.push(Issue::error("invalid", format!("the resource is not a {resource_type}")).at("resourceType")),
    }
    if let (Some(id), Some(body_id)) = (id, resource.get("id").and_then(Value::as_str)) {
        if body_id != id.as_str() {
            issues.push(Issue::error("invalid", "the id does not match the instance being validated").at(format!("{resource_type}.id")));
        }
    }
    issues.extend(validate_resource(&resource));
    if let Some(profile) = &profile {
        issues.extend(validate_against_profile(&resource, profile));
    }
    if mode.as_deref() == Some("create") && id.is_none() {
        // nothing more: create may carry any id (it is ignored)
    }
    issues.retain(|i| i.severity != Severity::Information || i.code != "informational");
    Ok(issues)
}
