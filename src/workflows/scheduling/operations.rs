//! The Argonaut Scheduling operations on Appointment (also accepting the IHE Scheduling
//! parameter names):
//!
//! - `$find` (GET or POST): open Slots matching a time range, practitioner, location, specialty
//!   and service type, each offered as a *proposed* Appointment (not stored) that names the Slot,
//!   its time and the Schedule's actors.
//! - `$hold` (POST): a proposed Appointment becomes *pending* with an expiry
//!   ([`super::HOLD_EXTENSION`]); its Slots turn busy-tentative and no one else can book them
//!   until it expires (the hold sweeper then cancels it; a booking that overlaps an expired hold
//!   removes it at once).
//! - `$book` (POST): a hold (or a proposed Appointment directly) becomes *booked*.
//!
//! Every read and write goes through the interactions as the requesting principal: a patient
//! may find, hold and book only what their scopes and compartment allow.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::HOLD_EXTENSION;
use crate::auth::Principal;
use crate::error::{FhirError, FhirResult};
use crate::fhir::types::{Id, ResourceType};
use crate::interactions::{self, WriteOutcome};
use crate::store::{Store, StoredResource};

/// The most open Slots one `$find` offers.
const MAX_FOUND: usize = 100;

/// `Appointment/$find`: `start` and `end` (required; the Slots starting in [start, end)),
/// `provider`/`practitioner` (a Practitioner or PractitionerRole reference), `location`,
/// `specialty`, `service-type`/`visit-type` (tokens), `patient` (added to each proposal as a
/// participant) and `_count`. Answers a searchset Bundle of proposed Appointments, earliest first.
pub async fn find(store: &Store, principal: &Principal, params: &[(String, String)], base: &str) -> FhirResult<Value> {
    let one = |names: &[&str]| params.iter().find(|(k, _)| names.contains(&k.as_str())).map(|(_, v)| v.trim().to_owned());
    let start = one(&["start"]).ok_or_else(|| FhirError::BadRequest("$find needs start (the earliest time wanted)".into()))?;
    let end = one(&["end"]).ok_or_else(|| FhirError::BadRequest("$find needs end (the latest time wanted)".into()))?;
    for (name, value) in [("start", &start), ("end", &end)] {
        if crate::search::params::date_bounds(value).is_none() {
            return Err(FhirError::BadRequest(format!("$find: {name} is not a FHIR date or dateTime")));
        }
    }
    let count = match one(&["_count"]) {
        Some(c) => c.parse::<usize>().map_err(|_| FhirError::BadRequest("$find: _count is not a number".into()))?.clamp(1, MAX_FOUND),
        None => 20,
    };
    let mut pairs: Vec<(String, String)> = vec![
        ("status".into(), "free".into()),
        ("start".into(), format!("ge{start}")),
        ("start".into(), format!("lt{end}")),
        ("_sort".into(), "start".into()),
        ("_count".into(), count.to_string()),
        ("_include".into(), "Slot:schedule".into()),
    ];
    for name in ["provider", "practitioner", "location"] {
        for (_, actor) in params.iter().filter(|(k, _)| k == name) {
            pairs.push(("schedule.actor".into(), actor.clone()));
        }
    }
    for (names, param) in [(&["specialty"][..], "specialty"), (&["service-type", "visit-type"][..], "service-type")] {
        for (_, token) in params.iter().filter(|(k, _)| names.contains(&k.as_str())) {
            pairs.push((param.into(), token.clone()));
        }
    }
    let patient = one(&["patient"]);
    let slot_type = ResourceType::parse("Slot")?;
    let outcome = interactions::search::search(store, principal, &slot_type, &pairs, false, base).await?;
    let schedules: Vec<&StoredResource> = outcome.included.iter().filter(|r| r.resource_type == "Schedule").collect();
    let entries: Vec<Value> = outcome
        .found
        .iter()
        .filter_map(|slot| slot.content.as_ref().map(|content| (slot, content)))
        .map(|(slot, content)| {
            let schedule = content.pointer("/schedule/reference").and_then(Value::as_str).and_then(|r| {
                let id = r.rsplit('/').next()?;
                schedules.iter().find(|s| s.id == id).and_then(|s| s.content.as_ref())
            });
            json!({"resource": proposal(&slot.id, content, schedule, patient.as_deref()), "search": {"mode": "match"}})
        })
        .collect();
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    }))
}

/// The parameters of a POSTed `$find` (a Parameters resource) as name/value pairs, the way
/// the same operation's query string reads.
pub fn parameters_as_pairs(body: &Value) -> FhirResult<Vec<(String, String)>> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::BadRequest("the operation takes its parameters in the query or as a Parameters resource".into()));
    }
    let mut pairs = vec![];
    for p in body.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
        let value = p.as_object().and_then(|o| {
            o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Object(o) => o.get("reference").and_then(Value::as_str).map(str::to_owned).or_else(|| {
                    // a Coding: system|code
                    let code = o.get("code").and_then(Value::as_str)?;
                    Some(match o.get("system").and_then(Value::as_str) {
                        Some(system) => format!("{system}|{code}"),
                        None => code.to_owned(),
                    })
                }),
                _ => None,
            })
        });
        match value.flatten() {
            Some(v) => pairs.push((name.to_owned(), v)),
            None => return Err(FhirError::BadRequest(format!("parameter {} has no value this operation can use", crate::fhir::types::sanitize(name)))),
        }
    }
    Ok(pairs)
}

/// The proposed Appointment for one open Slot: its time, kind of service, the Schedule's actors
/// as required participants, and the patient when the search named one.
fn proposal(slot_id: &str, slot: &Value, schedule: Option<&Value>, patient: Option<&str>) -> Value {
    let mut participants: Vec<Value> = schedule
        .and_then(|s| s.get("actor"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|actor| json!({"actor": actor, "required": "required", "status": "needs-action"}))
        .collect();
    if let Some(patient) = patient {
        let reference = if patient.contains('/') { patient.to_owned() } else { format!("Patient/{patient}") };
        participants.push(json!({"actor": {"reference": reference}, "required": "required", "status": "needs-action"}));
    }
    let mut appointment = json!({
        "resourceType": "Appointment",
        "status": "proposed",
        "start": slot["start"],
        "end": slot["end"],
        "slot": [{"reference": format!("Slot/{slot_id}")}],
        "participant": participants,
    });
    for element in ["serviceCategory", "serviceType", "specialty", "appointmentType"] {
        if let Some(value) = slot.get(element) {
            appointment[element] = value.clone();
        }
    }
    appointment
}

/// What the operation is asked to act on: a stored Appointment (by reference) or a resource in
/// the request.
enum Target {
    Stored(Id),
    New(Value),
}

/// Reads the `appt-resource`/`appointment-resource` or `appt-id`/`appointment-reference`
/// parameter of a `$hold` or `$book` body (Parameters, or a bare Appointment).
fn target(body: Value, operation: &str) -> FhirResult<Target> {
    match body.get("resourceType").and_then(Value::as_str) {
        Some("Appointment") => return Ok(Target::New(body)),
        Some("Parameters") => {}
        _ => return Err(FhirError::BadRequest(format!("{operation} takes a Parameters resource (appt-resource or appt-id)"))),
    }
    let parameters = body.get("parameter").and_then(Value::as_array).cloned().unwrap_or_default();
    for p in &parameters {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if matches!(name, "appt-resource" | "appointment-resource") {
            let resource = p.get("resource").cloned().ok_or_else(|| FhirError::BadRequest(format!("{operation}: {name} carries no resource")))?;
            if resource.get("resourceType").and_then(Value::as_str) != Some("Appointment") {
                return Err(FhirError::BadRequest(format!("{operation}: {name} must be an Appointment")));
            }
            return Ok(Target::New(resource));
        }
        if matches!(name, "appt-id" | "appointment-reference") {
            let reference = p
                .pointer("/valueReference/reference")
                .or_else(|| p.get("valueString"))
                .or_else(|| p.get("valueUri"))
                .or_else(|| p.get("valueId"))
                .and_then(Value::as_str)
                .ok_or_else(|| FhirError::BadRequest(format!("{operation}: {name} carries no reference")))?;
            let reference = reference.split("/_history/").next().unwrap_or(reference);
            let id = match reference.rsplit_once('/') {
                Some((rest, id)) if rest == "Appointment" || rest.ends_with("/Appointment") => id,
                None => reference,
                Some(_) => return Err(FhirError::BadRequest(format!("{operation}: {name} must reference an Appointment"))),
            };
            return Ok(Target::Stored(Id::parse(id)?));
        }
    }
    Err(FhirError::BadRequest(format!("{operation} needs appt-resource (an Appointment) or appt-id (a reference to one)")))
}

/// `Appointment/$hold`: the Appointment becomes pending until `hold_for` from now.
pub async fn hold(store: &Store, principal: &Principal, body: Value, hold_for: Duration, base: &str) -> FhirResult<Value> {
    let (stored_id, mut appointment) = resolve(store, principal, target(body, "$hold")?, base).await?;
    let status = appointment.get("status").and_then(Value::as_str).unwrap_or("");
    if status != "proposed" {
        return Err(FhirError::Conflict(format!("$hold: only a proposed appointment can be held (this one is {status})")));
    }
    if super::slot_ids(&appointment).is_empty() {
        return Err(FhirError::BadRequest("$hold: the appointment names no Slot to hold".into()));
    }
    fill_times_from_slots(store, principal, &mut appointment, base).await?;
    appointment["status"] = json!("pending");
    set_hold_expiry(&mut appointment, Some(Utc::now() + hold_for));
    let written = write(store, principal, stored_id, appointment, base).await?;
    Ok(result_bundle(&written.stored, base))
}

/// `Appointment/$book`: a hold that has not expired, or a proposed Appointment, becomes booked.
pub async fn book(store: &Store, principal: &Principal, body: Value, base: &str) -> FhirResult<Value> {
    let (stored_id, mut appointment) = resolve(store, principal, target(body, "$book")?, base).await?;
    let status = appointment.get("status").and_then(Value::as_str).unwrap_or("").to_owned();
    match status.as_str() {
        "proposed" => {}
        "pending" => {
            if let Some(expired) = hold_expiry(&appointment).filter(|at| *at <= Utc::now()) {
                return Err(FhirError::Conflict(format!(
                    "$book: the hold expired at {}; find and hold a slot again",
                    crate::interactions::instant(&expired)
                )));
            }
        }
        other => return Err(FhirError::Conflict(format!("$book: only a proposed or held appointment can be booked (this one is {other})"))),
    }
    if super::slot_ids(&appointment).is_empty() && appointment.get("start").is_none() {
        return Err(FhirError::BadRequest("$book: the appointment names neither a Slot nor a time".into()));
    }
    fill_times_from_slots(store, principal, &mut appointment, base).await?;
    appointment["status"] = json!("booked");
    set_hold_expiry(&mut appointment, None);
    let written = write(store, principal, stored_id, appointment, base).await?;
    Ok(result_bundle(&written.stored, base))
}

/// The stored Appointment (read as the principal: out of reach is unknown) or the one sent.
async fn resolve(store: &Store, principal: &Principal, target: Target, base: &str) -> FhirResult<(Option<Id>, Value)> {
    match target {
        Target::Stored(id) => {
            let rt = ResourceType::parse("Appointment")?;
            let stored = interactions::read::read(store, principal, &rt, &id, base).await?;
            let content = stored.content.ok_or_else(|| FhirError::NotFound(format!("Appointment/{id} is not known")))?;
            Ok((Some(id), content))
        }
        Target::New(mut appointment) => {
            // A proposal from $find has no id; one with an id is that stored Appointment.
            let id = appointment.get("id").and_then(Value::as_str).map(Id::parse).transpose()?;
            if let Some(map) = appointment.as_object_mut() {
                map.remove("meta");
            }
            Ok((id, appointment))
        }
    }
}

/// Start and end from the (first) Slot when the Appointment has none.
async fn fill_times_from_slots(store: &Store, principal: &Principal, appointment: &mut Value, base: &str) -> FhirResult<()> {
    if appointment.get("start").is_some() {
        return Ok(());
    }
    let Some(slot_id) = super::slot_ids(appointment).into_iter().next() else { return Ok(()) };
    let rt = ResourceType::parse("Slot")?;
    let slot = interactions::read::read(store, principal, &rt, &Id::parse(&slot_id)?, base).await?;
    if let Some(content) = slot.content {
        appointment["start"] = content["start"].clone();
        appointment["end"] = content["end"].clone();
    }
    Ok(())
}

/// Creates the Appointment, or updates the stored one, as the principal.
async fn write(store: &Store, principal: &Principal, id: Option<Id>, appointment: Value, base: &str) -> FhirResult<WriteOutcome> {
    let rt = ResourceType::parse("Appointment")?;
    match id {
        Some(id) => interactions::update::update(store, principal, &rt, &id, appointment, None, base).await,
        None => interactions::create::create(store, principal, &rt, appointment, None, base).await,
    }
}

/// When a pending Appointment's hold ends.
pub fn hold_expiry(appointment: &Value) -> Option<DateTime<Utc>> {
    appointment
        .get("extension")
        .and_then(Value::as_array)?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(HOLD_EXTENSION))
        .and_then(|e| e.get("valueInstant").and_then(Value::as_str))
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Sets (or with `None` removes) the hold's expiry extension.
pub fn set_hold_expiry(appointment: &mut Value, until: Option<DateTime<Utc>>) {
    let Some(map) = appointment.as_object_mut() else { return };
    let mut extensions: Vec<Value> = map.get("extension").and_then(Value::as_array).cloned().unwrap_or_default();
    extensions.retain(|e| e.get("url").and_then(Value::as_str) != Some(HOLD_EXTENSION));
    if let Some(until) = until {
        extensions.push(json!({"url": HOLD_EXTENSION, "valueInstant": crate::interactions::instant(&until)}));
    }
    if extensions.is_empty() {
        map.remove("extension");
    } else {
        map.insert("extension".into(), Value::Array(extensions));
    }
}

/// The operation's answer: a Bundle holding the Appointment as written.
fn result_bundle(stored: &StoredResource, base: &str) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": format!("{base}/Appointment/{}", stored.id), "resource": stored.content}],
    })
}
