//! The workflow rules that hold on every write of a resource type, whichever interaction writes
//! it (create, update, patch, delete — alone or in a Bundle): one call, [`after_write`], from
//! each write path, inside the write's transaction, after the new version is stored. An error
//! rolls the whole write back. The rules live with their workflow:
//!
//! - Appointment: `scheduling::appointment_written` (times, slots; double booking is the
//!   database's own guarantee) and `billing::appointment_written` (an Invoice when fulfilled).
//! - MedicationDispense: `pharmacy::dispense_written` (only against an active, unexpired
//!   prescription, within its authorised repeats).
//! - Task: `pharmacy::task_written` (status transitions; what a patient may ask for).
//! - Communication: `messaging::communication_written` (a patient writes as themselves, to
//!   their care team).
//! - Subscription: `events::subscriptions` (before: what the server can act on, the owner and
//!   the status it decides; after: owner, delivery state, handshake).
//! - MedicationRequest, before it is stored ([`before_write`]): `safety` (interactions and
//!   allergies: DetectedIssues, 409 for a high severity without an override reason).

use serde_json::Value;

use crate::auth::Principal;
use crate::error::FhirResult;
use crate::store::Tx;

/// Whether writes of `resource_type` have rules (the write paths then read the replaced
/// version and take the slower, transactional path).
pub fn has_rules(resource_type: &str) -> bool {
    matches!(resource_type, "Appointment" | "MedicationDispense" | "Task" | "Communication" | "MedicationRequest" | "Subscription")
}

/// Runs the rules that may change the version about to be stored (`new`, before it is written;
/// `old` the version it replaces): a MedicationRequest's interaction and allergy check links
/// the DetectedIssues it records (`workflows::safety`).
///
/// Data the server loads itself (`import` of transaction Bundles, `--demo`) is taken as it is:
/// historical prescriptions are not re-checked.
pub async fn before_write(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &str,
    id: &str,
    old: Option<&Value>,
    new: &mut Value,
    base: &str,
) -> FhirResult<()> {
    match resource_type {
        "MedicationRequest" if !principal.is_internal() => crate::workflows::safety::medication_request_writing(tx, id, old, new, base).await,
        "Subscription" => crate::events::subscriptions::subscription_writing(principal, id, new, base),
        _ => Ok(()),
    }
}

/// Runs the rules of `resource_type` for a write of `id` by `principal`: `old` is the version
/// replaced (`None` for a create), `new` the version written (`None` for a delete).
pub async fn after_write(
    tx: &mut Tx,
    principal: &Principal,
    resource_type: &str,
    id: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    base: &str,
) -> FhirResult<()> {
    // Slots follow every Appointment write; the other rules judge requests, not the data the
    // server loads itself (`import`, `--demo`), which is taken as it is.
    if resource_type == "Appointment" {
        crate::workflows::scheduling::appointment_written(tx, old, new, base).await?;
    }
    // A Subscription's owner, state and handshake follow every version, the server's own too.
    if resource_type == "Subscription" {
        crate::events::subscriptions::subscription_written(tx, principal, id, old, new, base).await?;
    }
    if principal.is_internal() {
        return Ok(());
    }
    match resource_type {
        "Appointment" => crate::workflows::billing::appointment_written(tx, old, new, base).await,
        "MedicationDispense" => crate::workflows::pharmacy::dispense_written(tx, id, new, base).await,
        "Task" => crate::workflows::pharmacy::task_written(tx, principal, old, new, base).await,
        "Communication" => crate::workflows::messaging::communication_written(tx, principal, old, new).await,
        _ => Ok(()),
    }
}
