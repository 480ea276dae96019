//! The clinical workflows: rules that hold on every write of the resources they govern
//! (`interactions::rules` calls them inside the write's transaction) and the operations that
//! drive them. Each writes through the interactions as the requesting principal, so reach,
//! masking and audit apply as to any request.
//!
//! - [`scheduling`]: no double booking (PostgreSQL's guarantee), Slots that follow their
//!   Appointments, Argonaut `$find`/`$hold`/`$book`, expiring holds.
//! - [`pharmacy`]: dispenses within a prescription's repeats, refill requests, Task states.
//! - [`billing`]: invoices from fulfilled appointments, the monthly report.
//! - [`messaging`]: patients write to their care team as themselves.
//! - [`safety`]: the interaction and allergy check of prescriptions (DetectedIssue, CDS Hooks).

use serde_json::Value;

pub mod billing;
pub mod messaging;
pub mod pharmacy;
pub mod safety;
pub mod scheduling;

/// The references of an element that is one Reference or a list of them.
pub(crate) fn references(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(|r| r.get("reference").and_then(Value::as_str)).collect(),
        Some(one @ Value::Object(_)) => one.get("reference").and_then(Value::as_str).into_iter().collect(),
        _ => vec![],
    }
}

/// The id a literal reference names when it points at a `resource_type` (`Type/id`, or any
/// absolute URL ending so, a version dropped) — the reading the booking trigger's SQL shares.
pub(crate) fn target_id<'a>(reference: &'a str, resource_type: &str) -> Option<&'a str> {
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let (rest, id) = reference.rsplit_once('/')?;
    (rest == resource_type || rest.strip_suffix(resource_type).is_some_and(|r| r.ends_with('/'))).then_some(id)
}
