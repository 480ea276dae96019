//! Secure messaging between a patient and their care team: `Communication` resources. A
//! patient (`patient/Communication.c`) writes only as themselves — `sender` is the patient,
//! `subject` (when given) the patient — and only to PractitionerRoles that treat them: a role of
//! the organisation that manages them (`Patient.managingOrganization`), one named as their
//! general practitioner, or one that took part in one of their Appointments. Staff reply with
//! `inResponseTo`; both sides read the thread through the usual reach (the patient's compartment
//! holds every Communication they send or receive; a role reaches those of its subtree). The
//! message text (`payload`) is sealed PHI like any other.

use serde_json::Value;

use crate::auth::{Interaction, Principal, Reach};
use crate::error::{FhirError, FhirResult};
use crate::store::{self, Tx};

use super::{references, target_id as local_id};

/// Checks a Communication just written by `principal` (a patient's: the rules above; staff's:
/// their reach already decided).
pub async fn communication_written(tx: &mut Tx, principal: &Principal, old: Option<&Value>, new: Option<&Value>) -> FhirResult<()> {
    let Some(message) = new else { return Ok(()) };
    let interaction = if old.is_some() { Interaction::Update } else { Interaction::Create };
    let Some(Reach::Patient(patient)) = principal.access("Communication", interaction) else { return Ok(()) };
    let refuse = |why: &str| FhirError::Forbidden(format!("a patient's message must {why}"));
    let senders = references(message.get("sender"));
    if senders.len() != 1 || local_id(senders[0], "Patient") != Some(patient.as_str()) {
        return Err(refuse("have the patient as its sender"));
    }
    let subjects = references(message.get("subject"));
    if subjects.iter().any(|s| local_id(s, "Patient") != Some(patient.as_str())) {
        return Err(refuse("be about the patient (subject)"));
    }
    let recipients = references(message.get("recipient"));
    if recipients.is_empty() {
        return Err(refuse("name a recipient from the patient's care team (a PractitionerRole)"));
    }
    for recipient in recipients {
        let Some(role) = local_id(recipient, "PractitionerRole") else {
            return Err(refuse("go to PractitionerRoles of the patient's care team"));
        };
        if !store::role_treats(tx, role, &patient).await? {
            return Err(refuse(&format!("go to the patient's care team: PractitionerRole/{} does not treat them", crate::fhir::types::sanitize(role))));
        }
    }
    Ok(())
}
