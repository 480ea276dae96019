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
}
