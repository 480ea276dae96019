//! Holds that expire: a pending Appointment whose hold ended is cancelled ("hold expired") and
//! its Slots freed, without anyone having to act. The database already ignores an expired hold
//! when a new booking overlaps it (migrations/functions/scheduling.sql); the sweeper makes the
//! resources say so too, every few seconds, through the same write path as any update, and
//! records each cancellation in the audit trail.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::FhirResult;
use crate::fhir::types::{Id, ResourceType};
use crate::store::Store;

/// How often expired holds are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Holds cancelled per pass at most.
const PER_PASS: i64 = 200;

/// Starts the sweeper. `base` is the server's FHIR base (for index rows of the new versions).
pub fn spawn(store: Store, trail: crate::audit::trail::AuditTrail, base: String) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if let Err(e) = sweep(&store, &trail, &base).await {
                tracing::warn!(error = %e, "expired holds could not be cancelled; retrying");
            }
        }
    });
}

/// One pass: cancels every Appointment whose hold has expired; returns how many.
pub async fn sweep(store: &Store, trail: &crate::audit::trail::AuditTrail, base: &str) -> FhirResult<usize> {
    let principal = Arc::new(Principal::internal("ironfhir-hold-sweeper", "system/Appointment.rs system/Appointment.u"));
    let rt = ResourceType::parse("Appointment")?;
    let mut cancelled = 0;
    for id in crate::store::expired_holds(store, PER_PASS).await? {
        let Ok(id) = Id::parse(&id) else { continue };
        let request_id = uuid::Uuid::new_v4();
        let cancel = cancel_if_expired(store, &principal, &rt, &id, base);
        // The write records its audit intent in its own transaction, like a request's.
        let written = if trail.enabled() {
            crate::audit::intent::scope(crate::audit::intent::Intent::new(request_id, principal.clone(), None), cancel).await?
        } else {
            cancel.await?
        };
        crate::store::forget_lapsed_hold(store, id.as_str()).await?;
        if let Some(version) = written {
            cancelled += 1;
            trail.record_for(event(&principal, &id, version), Some(request_id)).await?;
        }
    }
    Ok(cancelled)
}

/// Cancels `Appointment/id` if it is still a hold whose time has run out (a `$book` may have
/// won the race); the version written, if any.
async fn cancel_if_expired(store: &Store, principal: &Principal, rt: &ResourceType, id: &Id, base: &str) -> FhirResult<Option<i64>> {
    store
        .with_transaction(|mut tx| {
            Box::pin(async move {
                let result = async {
                    let Some(mut appointment) = crate::store::current_content(&mut tx, "Appointment", id.as_str()).await? else { return Ok(None) };
                    let expired = appointment.get("status").and_then(Value::as_str) == Some("pending")
                        && super::operations::hold_expiry(&appointment).is_some_and(|at| at <= chrono::Utc::now());
                    if !expired {
                        return Ok(None);
                    }
                    appointment["status"] = json!("cancelled");
                    appointment["cancelationReason"] = json!({"text": "hold expired"});
                    super::operations::set_hold_expiry(&mut appointment, None);
                    let outcome = crate::interactions::update::put_version(&mut tx, principal, rt, id, appointment, None, "PUT", false, base).await?;
                    Ok(Some(outcome.stored.version_id))
                }
                .await;
                (tx, result)
            })
        })
        .await
}

/// The AuditEvent of one cancellation: an update by the server itself, naming the Appointment.
fn event(principal: &Principal, id: &Id, version: i64) -> Value {
    crate::audit::server_update_event(
        principal,
        &format!("Appointment/{id}/_history/{version}"),
        "hold expired: the pending appointment was cancelled and its slots freed",
    )
}
