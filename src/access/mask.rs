//! Element masking for role templates that must not see some elements (front desk: no notes
//! or narrative; billing: codes and amounts without clinical notes). Masking is applied to
//! every response body on its way out, so every shape — read, vread, search with includes,
//! history, Bundle responses, `$everything` — is covered by one call; a masked resource says so
//! with the `REDACTED` security label and the `SUBSETTED` tag (v3 ObservationValue).

use serde_json::{Value, json};

use super::roles::Mask;

/// The code system of the `REDACTED` and `SUBSETTED` marks.
pub const OBSERVATION_VALUE: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Types whose elements are never masked: the response envelopes themselves.
const ENVELOPES: &[&str] = &["Bundle", "OperationOutcome", "Parameters", "CapabilityStatement"];

/// What a patient does not see of the directory ([`super::DIRECTORY_TYPES`]): the staff's
/// own identifiers, birth date, home address and photo, and the free-text comments of
/// schedules and slots.
pub fn patient_directory() -> std::sync::Arc<Mask> {
    static MASK: std::sync::OnceLock<std::sync::Arc<Mask>> = std::sync::OnceLock::new();
    MASK.get_or_init(|| {
        let hidden = [
            ("Practitioner", "identifier"),
            ("Practitioner", "birthDate"),
            ("Practitioner", "address"),
            ("Practitioner", "photo"),
            ("Schedule", "comment"),
            ("Slot", "comment"),
        ];
        std::sync::Arc::new(hidden.iter().map(|(t, e)| (t.to_string(), e.to_string())).collect())
    })
    .clone()
}

/// Removes the masked elements from a response body: a resource, or every resource of a
/// Bundle (entries and entry outcomes, nested Bundles, contained resources).
pub fn apply(value: &mut Value, mask: &Mask) {
    if mask.is_empty() {
        return;
    }
    let resource_type = value.get("resourceType").and_then(Value::as_str).unwrap_or("").to_owned();
    if resource_type == "Bundle" {
        for entry in value.get_mut("entry").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(resource) = entry.get_mut("resource") {
                apply(resource, mask);
            }
            if let Some(outcome) = entry.get_mut("response").and_then(|r| r.get_mut("outcome")) {
                apply(outcome, mask);
            }
        }
        return;
    }
    if ENVELOPES.contains(&resource_type.as_str()) {
        return;
    }
    for contained in value.get_mut("contained").and_then(Value::as_array_mut).into_iter().flatten() {
        apply(contained, mask);
    }
    let Some(object) = value.as_object_mut() else { return };
    let mut removed = false;
    for (_, element) in mask.iter().filter(|(t, _)| t == "*" || *t == resource_type) {
        if !matches!(element.as_str(), "resourceType" | "id" | "meta") {
            removed |= object.remove(element).is_some();
            removed |= object.remove(&format!("_{element}")).is_some();
        }
    }
    if removed {
        mark(value);
    }
}

/// Adds the `REDACTED` security label and the `SUBSETTED` tag (once each).
fn mark(resource: &mut Value) {
    let Some(object) = resource.as_object_mut() else { return };
    let meta = object.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return };
    for (list, code, display) in [("security", "REDACTED", "redacted"), ("tag", "SUBSETTED", "subsetted")] {
        let entries = meta.entry(list).or_insert_with(|| json!([]));
        if let Some(entries) = entries.as_array_mut()
            && !entries.iter().any(|c| is_mark(c, code))
        {
            entries.push(json!({"system": OBSERVATION_VALUE, "code": code, "display": display}));
        }
    }
}

fn is_mark(coding: &Value, code: &str) -> bool {
    coding.get("system").and_then(Value::as_str) == Some(OBSERVATION_VALUE) && coding.get("code").and_then(Value::as_str) == Some(code)
}

/// Prepares a resource a masked role submits as an update: the hidden elements keep the
/// stored version's values (the role never saw them, so their absence is not a deletion, and
/// it may not set them), and the marks [`apply`] added are dropped.
pub fn restore(new: &mut Value, old: Option<&Value>, mask: &Mask) {
    if mask.is_empty() {
        return;
    }
    let resource_type = new.get("resourceType").and_then(Value::as_str).unwrap_or("").to_owned();
    // Contained resources are masked on the way out too: each keeps the hidden elements of the
    // stored contained resource with the same id (a new one gets none).
    for contained in new.get_mut("contained").and_then(Value::as_array_mut).into_iter().flatten() {
        let id = contained.get("id").and_then(Value::as_str).map(str::to_owned);
        let kept = old
            .and_then(|o| o.get("contained"))
            .and_then(Value::as_array)
            .and_then(|list| list.iter().find(|c| id.is_some() && c.get("id").and_then(Value::as_str) == id.as_deref()));
        restore(contained, kept, mask);
    }
    let Some(object) = new.as_object_mut() else { return };
    for (_, element) in mask.iter().filter(|(t, _)| t == "*" || *t == resource_type) {
        if matches!(element.as_str(), "resourceType" | "id" | "meta") {
            continue;
        }
        for key in [element.clone(), format!("_{element}")] {
            match old.and_then(|o| o.get(&key)) {
                Some(kept) => {
                    object.insert(key, kept.clone());
                }
                None => {
                    object.remove(&key);
                }
            }
        }
    }
    if let Some(meta) = object.get_mut("meta").and_then(Value::as_object_mut) {
        for (list, code) in [("security", "REDACTED"), ("tag", "SUBSETTED")] {
            if let Some(entries) = meta.get_mut(list).and_then(Value::as_array_mut) {
                entries.retain(|c| !is_mark(c, code));
                if entries.is_empty() {
                    meta.remove(list);
                }
            }
        }
        if meta.is_empty() {
            object.remove("meta");
        }
    }
}

/// Whether the mask hides an element that `resource_type`'s search parameter `code` reads, so
/// that searching, sorting or including by it would reveal what the role may not see. `_text`
/// reads the narrative, `_content` every element; the other common parameters read `meta` and
/// the id, which are never masked.
pub fn hides_param(mask: &Mask, resource_type: &str, code: &str) -> bool {
    let hidden: Vec<&str> = mask.iter().filter(|(t, _)| t == "*" || t == resource_type).map(|(_, e)| e.as_str()).collect();
    if hidden.is_empty() {
        return false;
    }
    match code {
        "_content" => return true,
        "_text" => return hidden.contains(&"text"),
        _ => {}
    }
    let Some(sources) = crate::index::param_paths(resource_type, code) else { return false };
    let hides = |first: &str| {
        hidden.iter().any(|e| first == *e || first.strip_prefix(e).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())))
    };
    sources.iter().any(|source| match source {
        crate::index::ParamSource::Path(keys) => keys.first().is_some_and(|k| hides(k)),
        crate::index::ParamSource::Expression(text) => crate::crypto::policy::expression_paths(resource_type, text)
            .iter()
            .any(|keys| keys.first().is_some_and(|k| hides(k))),
    })
}

/// 400 when a search's criteria (chained targets and `_has` sources included) use a parameter
/// that reads a masked element: the answer would tell what the role may not see, so the
/// search is refused rather than answered from hidden data.
pub fn check_criteria(criteria: &crate::search::Criteria, mask: &Mask) -> crate::error::FhirResult<()> {
    use crate::search::ClauseKind;
    if mask.is_empty() {
        return Ok(());
    }
    let rt = criteria.resource_type.as_str();
    for clause in &criteria.clauses {
        match &clause.kind {
            ClauseKind::Chain { targets, .. } => targets.iter().try_for_each(|t| check_criteria(t, mask))?,
            ClauseKind::Has { source, .. } => {
                check_criteria(source, mask)?;
                // `_has:Source:link:param`: the link parameter is read on the source type.
                let mut parts = clause.name.split(':').skip(1);
                if let (Some(source_type), Some(link)) = (parts.next(), parts.next()) {
                    check_param(mask, source_type, link)?;
                }
                continue;
            }
            _ => {}
        }
        check_param(mask, rt, clause.name.split([':', '.']).next().unwrap_or_default())?;
    }
    Ok(())
}

/// 400 when `code` on `resource_type` reads a masked element (see [`hides_param`]).
pub fn check_param(mask: &Mask, resource_type: &str, code: &str) -> crate::error::FhirResult<()> {
    if hides_param(mask, resource_type, code) {
        return Err(crate::error::FhirError::BadRequest(format!(
            "the search parameter '{code}' of {resource_type} reads elements this role may not see, so it cannot be used to search, sort or include"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(pairs: &[(&str, &str)]) -> Mask {
        pairs.iter().map(|(t, e)| (t.to_string(), e.to_string())).collect()
    }

    #[test]
    fn masks_resources_inside_bundles_and_marks_only_what_lost_something() {
        let m = mask(&[("*", "text"), ("Appointment", "comment")]);
        let mut bundle = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Appointment", "id": "1", "comment": "x", "status": "booked"}},
            {"resource": {"resourceType": "Patient", "id": "2", "active": true}},
            {"resource": {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "3", "text": {"div": "y"}}}]}}
        ]});
        apply(&mut bundle, &m);
        let appointment = &bundle["entry"][0]["resource"];
        assert!(appointment.get("comment").is_none());
        assert_eq!(appointment["status"], "booked");
        assert_eq!(appointment["meta"]["security"][0]["code"], "REDACTED");
        assert_eq!(appointment["meta"]["tag"][0]["code"], "SUBSETTED");
        assert!(bundle["entry"][1]["resource"].get("meta").is_none(), "nothing hidden, nothing marked");
        assert!(bundle["entry"][2]["resource"]["entry"][0]["resource"].get("text").is_none());
    }

    #[test]
    fn restore_keeps_hidden_elements_and_drops_marks() {
        let m = mask(&[("*", "note")]);
        let old = json!({"resourceType": "Condition", "id": "1", "note": [{"text": "kept"}]});
        let mut new = json!({"resourceType": "Condition", "id": "1", "note": [{"text": "overwritten"}],
            "meta": {"security": [{"system": OBSERVATION_VALUE, "code": "REDACTED"}], "tag": [{"system": OBSERVATION_VALUE, "code": "SUBSETTED"}]}});
        restore(&mut new, Some(&old), &m);
        assert_eq!(new["note"][0]["text"], "kept");
        assert!(new.get("meta").is_none());
        let mut created = json!({"resourceType": "Condition", "note": [{"text": "new"}]});
        restore(&mut created, None, &m);
        assert!(created.get("note").is_none());
    }

    #[test]
    fn restore_reaches_contained_resources_by_id() {
        let m = mask(&[("*", "note")]);
        let old = json!({"resourceType": "MedicationRequest", "id": "1",
            "contained": [{"resourceType": "Observation", "id": "c1", "note": [{"text": "kept"}]}]});
        let mut new = json!({"resourceType": "MedicationRequest", "id": "1",
            "contained": [{"resourceType": "Observation", "id": "c1", "note": [{"text": "overwritten"}]},
                          {"resourceType": "Observation", "id": "c2", "note": [{"text": "smuggled"}]}]});
        restore(&mut new, Some(&old), &m);
        assert_eq!(new["contained"][0]["note"][0]["text"], "kept");
        assert!(new["contained"][1].get("note").is_none(), "a new contained resource may not set a hidden element");
    }

    #[test]
    fn parameters_over_masked_elements_are_hidden() {
        let m = mask(&[("*", "text"), ("Condition", "stage"), ("Appointment", "comment")]);
        assert!(hides_param(&m, "Condition", "_text"));
        assert!(hides_param(&m, "Condition", "_content"));
        assert!(hides_param(&m, "Condition", "stage"), "Condition.stage.summary is below the hidden stage");
        assert!(!hides_param(&m, "Condition", "code"));
        assert!(!hides_param(&m, "Condition", "_id"));
        assert!(!hides_param(&mask(&[]), "Condition", "_content"));
        assert!(!hides_param(&mask(&[("Appointment", "comment")]), "Condition", "_content"), "nothing of Condition is hidden");
    }
}
