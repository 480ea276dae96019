//! Prescriptions to the pharmacy: the rules every write of a MedicationDispense or a Task
//! keeps, whoever writes it and through whichever interaction (`interactions::rules`).
//!
//! - A dispense ([`dispense_written`]) is made only against an active prescription that has not
//!   expired (`dispenseRequest.validityPeriod`), and never beyond what it authorises: the first
//!   fill plus `dispenseRequest.numberOfRepeatsAllowed`. The prescription's row is locked for the
//!   count, so two pharmacies racing for the last repeat cannot both get it.
//! - A Task ([`task_written`]) moves only along the R4 task state machine (no jumping from
//!   requested to completed). A patient may create exactly one shape of Task — a refill request
//!   for one of their own prescriptions — and may afterwards only withdraw it; approving,
//!   rejecting and completing belong to the prescriber's side.

use chrono::Utc;
use serde_json::Value;

use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult, Issue};
use crate::store::{self, Tx};

/// Dispense statuses that use up an authorised fill (in flight or done).
const DISPENSING: [&str; 4] = ["preparation", "in-progress", "on-hold", "completed"];

/// The code of a refill request (any code system: `Task.code.coding.code`).
pub const REFILL: &str = "refill";

/// `Type/id` of a literal reference to this server (relative or absolute on `base`), version
/// dropped.
fn local_reference(reference: &str, base: &str) -> Option<(String, String)> {
    let reference = crate::fhir::types::local_reference(reference, base);
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let (rt, id) = reference.split_once('/')?;
    (!rt.contains(':') && !id.contains('/')).then(|| (rt.to_owned(), id.to_owned()))
}

fn refs(value: Option<&Value>) -> impl Iterator<Item = &str> {
    super::references(value).into_iter()
}

fn status(resource: &Value) -> &str {
    resource.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Checks a MedicationDispense `id` just written (`new`; nothing for a delete) against each
/// prescription it names in `authorizingPrescription`.
pub async fn dispense_written(tx: &mut Tx, id: &str, new: Option<&Value>, base: &str) -> FhirResult<()> {
    let Some(dispense) = new else { return Ok(()) };
    if !DISPENSING.contains(&status(dispense)) {
        return Ok(());
    }
    for reference in refs(dispense.get("authorizingPrescription")) {
        let Some((rt, request_id)) = local_reference(reference, base) else { continue };
        if rt != "MedicationRequest" {
            continue;
        }
        let unknown = || invalid("MedicationDispense.authorizingPrescription", &format!("MedicationRequest/{} is not known", crate::fhir::types::sanitize(&request_id)));
        let Some((_, false)) = store::lock_current(tx, "MedicationRequest", &request_id).await? else { return Err(unknown()) };
        let request = store::current_content(tx, "MedicationRequest", &request_id).await?.ok_or_else(unknown)?;
        let request_status = status(&request);
        if request_status != "active" {
            return Err(FhirError::Conflict(format!(
                "MedicationRequest/{request_id} is {request_status}: nothing may be dispensed against it"
            )));
        }
        if let Some(end) = request.pointer("/dispenseRequest/validityPeriod/end").and_then(Value::as_str)
            && crate::search::params::date_bounds(end).is_some_and(|(_, upper)| upper <= Utc::now())
        {
            return Err(FhirError::Conflict(format!("MedicationRequest/{request_id} expired on {end}: nothing may be dispensed against it")));
        }
        let repeats = request.pointer("/dispenseRequest/numberOfRepeatsAllowed").and_then(Value::as_i64).unwrap_or(0).max(0);
        let authorised = 1 + repeats;
        let made = store::dispenses_against(tx, &format!("MedicationRequest/{request_id}"), id, &DISPENSING).await?;
        if made >= authorised {
            return Err(FhirError::Conflict(format!(
                "MedicationRequest/{request_id} authorises {authorised} dispense(s) (the first and {repeats} repeat(s)) and {made} were already made"
            )));
        }
    }
    Ok(())
}

/// The statuses a Task may move to from `from` (R4 task state machine, workflow.html#taskstatemachine:
/// requested → received → accepted → (ready) → in-progress → completed, with the ways out at
/// each step). Staying in a status is always allowed.
fn next_statuses(from: &str) -> &'static [&'static str] {
    match from {
        "draft" => &["requested", "cancelled", "entered-in-error"],
        "requested" => &["received", "accepted", "rejected", "ready", "cancelled", "entered-in-error"],
        "received" => &["accepted", "rejected", "ready", "cancelled", "entered-in-error"],
        "accepted" => &["ready", "in-progress", "completed", "on-hold", "cancelled", "failed", "entered-in-error"],
        "ready" => &["in-progress", "completed", "on-hold", "cancelled", "failed", "entered-in-error"],
        "in-progress" => &["completed", "failed", "on-hold", "cancelled", "entered-in-error"],
        "on-hold" => &["ready", "in-progress", "accepted", "cancelled", "failed", "entered-in-error"],
        // completed, cancelled, rejected, failed: final (only a correction).
        "entered-in-error" => &[],
        _ => &["entered-in-error"],
    }
}

/// Whether a Task asks for a refill (a `code` coding `refill`).
pub fn is_refill(task: &Value) -> bool {
    task.pointer("/code/coding").and_then(Value::as_array).into_iter().flatten().any(|c| c.get("code").and_then(Value::as_str) == Some(REFILL))
}

/// Checks a Task just written by `principal` (`old` the version replaced).
pub async fn task_written(tx: &mut Tx, principal: &Principal, old: Option<&Value>, new: Option<&Value>, base: &str) -> FhirResult<()> {
    let Some(task) = new else { return Ok(()) };
    let to = status(task);
    // Who may do it first (a patient's limits are the clearer answer), then whether the state
    // machine allows it at all.
    let interaction = if old.is_some() { Interaction::Update } else { Interaction::Create };
    if let Some(Reach::Patient(patient)) = principal.access("Task", interaction) {
        match old {
            None => check_refill_request(tx, task, &patient, base).await?,
            // The patient may amend their request until someone acts on it, and withdraw it;
            // approving, rejecting and completing are the prescriber's.
            Some(_) if to == "cancelled" || (to == "requested" && old.map(status) == Some("requested")) => {}
            Some(_) => {
                return Err(FhirError::Forbidden(
                    "a patient may only amend or cancel their refill request; the prescriber accepts, rejects or completes it".into(),
                ));
            }
        }
    }
    if let Some(from) = old.map(status).filter(|from| *from != to)
        && !next_statuses(from).contains(&to)
    {
        let allowed = next_statuses(from);
        let options = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
        return Err(invalid("Task.status", &format!("a Task cannot go from {from} to {to}; from {from} it may become: {options}")));
    }
    Ok(())
}

/// The one Task a patient may create: a refill request (`code` refill, status requested) for
/// themselves (`for`) about one of their own MedicationRequests (`focus`).
async fn check_refill_request(tx: &mut Tx, task: &Value, patient: &str, base: &str) -> FhirResult<()> {
    let refuse = |why: &str| FhirError::Forbidden(format!("a patient may create only a refill request ({why})"));
    if !is_refill(task) {
        return Err(refuse("Task.code must be refill"));
    }
    if status(task) != "requested" {
        return Err(refuse("Task.status must be requested"));
    }
    let for_me = refs(task.get("for")).filter_map(|r| local_reference(r, base)).any(|(rt, id)| rt == "Patient" && id == patient);
    if !for_me {
        return Err(refuse("Task.for must be the patient"));
    }
    let Some((rt, request_id)) = refs(task.get("focus")).next().and_then(|r| local_reference(r, base)) else {
        return Err(refuse("Task.focus must be one of the patient's MedicationRequests"));
    };
    if rt != "MedicationRequest" {
        return Err(refuse("Task.focus must be one of the patient's MedicationRequests"));
    }
    let request = store::current_content(tx, "MedicationRequest", &request_id).await?;
    let mine = request.as_ref().is_some_and(|r| {
        refs(r.get("subject")).filter_map(|s| local_reference(s, base)).any(|(rt, id)| rt == "Patient" && id == patient)
    });
    if !mine {
        // Another patient's prescription does not exist for this one.
        return Err(FhirError::NotFound(format!("MedicationRequest/{} is not known", crate::fhir::types::sanitize(&request_id))));
    }
    Ok(())
}

fn invalid(expression: &str, message: &str) -> FhirError {
    FhirError::Invalid(vec![Issue::error("business-rule", message).at(expression)])
}
