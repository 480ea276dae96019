//! Scheduling: Slots kept in step with the Appointments that book them, the Argonaut
//! Scheduling operations (`$find`, `$hold`, `$book`) and expiring holds.
//!
//! The one guarantee that matters — no practitioner and no Slot booked twice for overlapping
//! times — is PostgreSQL's, not this module's: an exclusion constraint over the rows a trigger
//! keeps for every active Appointment (migrations/0002_scheduling.sql,
//! migrations/functions/scheduling.sql), whichever path wrote it. What this module adds runs
//! inside the same transaction as the Appointment's write, called by every interaction that
//! writes one ([`appointment_written`]): the times are checked, each booked Slot must exist,
//! be open and contain the appointment, and its `status` follows (busy, busy-tentative for a
//! hold, free again once no active appointment books it).
//!
//! The operations ([`operations`]) and the hold sweeper ([`holds`]) write Appointments through
//! the interactions as the requesting principal, so reach, masking and audit apply as to any
//! write.

pub mod generate;
pub mod holds;
pub mod operations;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::{FhirError, FhirResult, Issue};
use crate::store::{self, Tx};

/// The extension on a held (pending) Appointment that says until when the hold blocks its
/// time (its `valueInstant`); the same URL as `appointment_hold_extension()` in SQL.
pub const HOLD_EXTENSION: &str = "https://ironfhir.dev/fhir/StructureDefinition/hold-expires";

/// Appointment statuses that occupy their time (and their Slots).
const OCCUPYING: [&str; 5] = ["pending", "booked", "arrived", "checked-in", "fulfilled"];

/// Whether an Appointment in this version occupies its time.
pub fn occupies(appointment: &Value) -> bool {
    appointment.get("status").and_then(Value::as_str).is_some_and(|s| OCCUPYING.contains(&s))
}

/// `start`/`end` of a resource (Appointment or Slot) as instants, when both are there.
pub fn period(resource: &Value) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let at = |name: &str| {
        resource.get(name).and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
    };
    Some((at("start")?, at("end")?))
}

/// The ids of the Slots an Appointment references: `Slot/ID`, relative or absolute, a version
/// dropped (the same references the booking trigger reads, `appointment_occupant` in SQL).
pub fn slot_ids(appointment: &Value) -> Vec<String> {
    let mut ids: Vec<String> = appointment
        .get("slot")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("reference").and_then(Value::as_str))
        .filter_map(|r| super::target_id(r, "Slot").filter(|id| crate::fhir::types::Id::is_valid(id)).map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Runs after an Appointment version is written (`old` the version replaced, `new` the one
/// written; `None` for none or a delete), in the write's transaction: refuses what a booking
/// may not be (422/409, rolling the write back) and moves the Slots' status.
pub async fn appointment_written(tx: &mut Tx, old: Option<&Value>, new: Option<&Value>, base: &str) -> FhirResult<()> {
    let booked: Vec<String> = match new {
        Some(appointment) => {
            check_times(appointment)?;
            if occupies(appointment) { slot_ids(appointment) } else { vec![] }
        }
        None => vec![],
    };
    let held_before: Vec<String> = old.filter(|o| occupies(o)).map(slot_ids).unwrap_or_default();
    if let Some(appointment) = new.filter(|_| !booked.is_empty()) {
        let tentative = appointment.get("status").and_then(Value::as_str) == Some("pending");
        for slot in &booked {
            book_slot(tx, slot, appointment, held_before.contains(slot), tentative, base).await?;
        }
    }
    for slot in held_before.iter().filter(|s| !booked.contains(s)) {
        free_slot_if_unbooked(tx, slot, base).await?;
    }
    Ok(())
}

/// Appointment invariants the database relies on: both ends or neither (app-2), and an end
/// after the start.
fn check_times(appointment: &Value) -> FhirResult<()> {
    let start = appointment.get("start").is_some();
    let end = appointment.get("end").is_some();
    if start != end {
        return Err(invalid("Appointment.start", "app-2: either start and end are specified, or neither"));
    }
    if let Some((start, end)) = period(appointment)
        && end <= start
    {
        return Err(invalid("Appointment.end", "the appointment must end after it starts"));
    }
    if occupies(appointment) && !start && !slot_ids(appointment).is_empty() {
        return Err(invalid("Appointment.start", "app-3: only proposed or cancelled appointments can be missing start/end dates"));
    }
    Ok(())
}

fn invalid(expression: &str, message: &str) -> FhirError {
    FhirError::Invalid(vec![Issue::error("invariant", message).at(expression)])
}

/// Marks Slot `id` busy (busy-tentative for a hold) for `appointment`: the Slot must exist, be
/// open (free, or already this appointment's) and contain the appointment's time.
async fn book_slot(tx: &mut Tx, id: &str, appointment: &Value, was_ours: bool, tentative: bool, base: &str) -> FhirResult<()> {
    let Some((version, false)) = store::lock_current(tx, "Slot", id).await? else {
        return Err(invalid("Appointment.slot", &format!("Slot/{} is not known", crate::fhir::types::sanitize(id))));
    };
    let mut slot = store::current_content(tx, "Slot", id).await?.ok_or_else(|| invalid("Appointment.slot", &format!("Slot/{id} is not known")))?;
    let status = slot.get("status").and_then(Value::as_str).unwrap_or("").to_owned();
    // busy-tentative whose hold has lapsed (the sweeper has not caught up yet) is open again.
    let lapsed_hold = status == "busy-tentative"
        && !store::occupant_booked(tx, &format!("Slot/{id}"), appointment.get("id").and_then(Value::as_str)).await?;
    let open = status == "free" || lapsed_hold || (was_ours && (status == "busy" || status == "busy-tentative"));
    if !open {
        return Err(FhirError::Conflict(format!("Slot/{id} cannot be booked: its status is {status}")));
    }
    if let (Some((a_start, a_end)), Some((s_start, s_end))) = (period(appointment), period(&slot))
        && (a_start < s_start || a_end > s_end)
    {
        return Err(invalid("Appointment.start", &format!("the appointment's time is not within Slot/{id}")));
    }
    let wanted = if tentative { "busy-tentative" } else { "busy" };
    if status != wanted {
        slot["status"] = json!(wanted);
        write_slot(tx, id, version + 1, slot, base).await?;
    }
    Ok(())
}

/// Marks Slot `id` free again unless another active appointment books it (the booking rows of
/// the current transaction already reflect the Appointment just written).
async fn free_slot_if_unbooked(tx: &mut Tx, id: &str, base: &str) -> FhirResult<()> {
    let Some((version, false)) = store::lock_current(tx, "Slot", id).await? else { return Ok(()) };
    if store::occupant_booked(tx, &format!("Slot/{id}"), None).await? {
        return Ok(());
    }
    let Some(mut slot) = store::current_content(tx, "Slot", id).await? else { return Ok(()) };
    if matches!(slot.get("status").and_then(Value::as_str), Some("busy" | "busy-tentative")) {
        slot["status"] = json!("free");
        write_slot(tx, id, version + 1, slot, base).await?;
    }
    Ok(())
}

async fn write_slot(tx: &mut Tx, id: &str, version: i64, mut slot: Value, base: &str) -> FhirResult<()> {
    let now = crate::interactions::now();
    crate::interactions::stamp(&mut slot, id, version, &now);
    store::write_version(tx, "Slot", id, version, now, "PUT", Some(&slot), base).await
}
