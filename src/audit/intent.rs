//! Audit intents: the part of a write's audit record that commits in the write's own
//! transaction (ARCHITECTURE.md invariant 6).
//!
//! The complete AuditEvent of a request is built after its response (status, Location) and
//! appended to the hash chain by the group-commit writer, which needs the chain lock and so
//! cannot run inside every write transaction. Instead, each store write inserts an intent row
//! (`audit_intent`: request id, type, id, version, agent — no content) in its own statement or
//! transaction, reading the request from a task-local [`scope`]. The chain writer deletes a
//! request's intents in the transaction that appends its AuditEvent; if the server stops in
//! between, [`spawn_recovery`] turns the intents left behind into AuditEvents. A committed write
//! therefore never lacks an audit record.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;

use crate::store::Store;

/// The request a write belongs to.
#[derive(Clone, Debug)]
pub struct Intent {
    pub request_id: uuid::Uuid,
    /// Who made the request and from where, for [`Self::agent`].
    principal: Arc<crate::auth::Principal>,
    network: Option<String>,
    /// The patients (`Patient/ID`) whose compartment holds the resource the request read or
    /// wrote, noted from its content when the response is built ([`note_concerned`]), so that
    /// the AuditEvent names them without another query. `None`: nothing was noted.
    pub concerned: Arc<Mutex<Option<Vec<String>>>>,
    /// Whether a write of the request took this intent to record it ([`for_write`]): only then
    /// does the chain writer have intents of the request to delete (reads have none, and a
    /// delete that finds nothing still costs a scan of `audit_intent` per append).
    written: Arc<std::sync::atomic::AtomicBool>,
}

impl Intent {
    /// The intent of request `request_id` by `principal` from `network`, nothing noted yet.
    pub fn new(request_id: uuid::Uuid, principal: Arc<crate::auth::Principal>, network: Option<String>) -> Self {
        Intent { request_id, principal, network, concerned: Arc::default(), written: Arc::default() }
    }

    /// The requesting agent as the AuditEvent will name it (no PHI: subject, role, client),
    /// built only when a write records the intent (most requests are reads).
    pub fn agent(&self) -> Value {
        super::requesting_agent(&self.principal, self.network.as_deref())
    }

    /// Whether a write may have recorded this intent (see [`for_write`]).
    pub fn written(&self) -> bool {
        self.written.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What [`note_concerned`] noted during the request.
    pub fn concerned(&self) -> Option<Vec<String>> {
        self.concerned.lock().ok().and_then(|c| c.clone())
    }
}

/// Notes the patients whose compartment holds `content` (a `resource_type` the request read or
/// wrote) for the request's AuditEvent. Does nothing outside an audited request.
pub fn note_concerned(resource_type: &str, content: &Value, base: &str) {
    let _ = CURRENT.try_with(|intent| {
        let params = crate::access::patient_compartment_params(resource_type);
        let mut patients: Vec<String> = crate::index::references_at(resource_type, content, base, &params)
            .into_iter()
            .filter(|r| r.strip_prefix("Patient/").is_some_and(crate::fhir::types::Id::is_valid))
            .collect();
        patients.sort();
        patients.dedup();
        if let Ok(mut noted) = intent.concerned.lock() {
            *noted = Some(patients);
        }
    });
}

tokio::task_local! {
    static CURRENT: Intent;
}

/// Runs `future` (a request's handling) with `intent` visible to the store's writes.
pub async fn scope<F: std::future::Future>(intent: Intent, future: F) -> F::Output {
    CURRENT.scope(intent, future).await
}

/// The current request's intent, inside [`scope`], for a write that records it in its own
/// statement; marks the request as one whose intents its AuditEvent's append deletes (a write
/// that then fails leaves a delete that finds nothing, which is harmless).
pub fn for_write() -> Option<Intent> {
    CURRENT
        .try_with(|intent| {
            intent.written.store(true, std::sync::atomic::Ordering::Release);
            intent.clone()
        })
        .ok()
}

/// Intents older than this are taken to belong to a request that will never record its event.
const ORPHANED_AFTER: Duration = Duration::from_secs(60);

/// Every 30 s: intents whose request never appended its AuditEvent (the server stopped between
/// commit and response) become AuditEvents (outcome 0, the resources written, marked as
/// recovered), appended through the chain like any other event.
pub fn spawn_recovery(store: Store, trail: super::trail::AuditTrail) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if let Err(e) = recover(&store, &trail).await {
                tracing::error!(error = %e, "audit intent recovery failed");
            }
        }
    });
}

/// One recovery pass; returns the number of AuditEvents recorded.
pub async fn recover(store: &Store, trail: &super::trail::AuditTrail) -> crate::error::FhirResult<usize> {
    let rows = sqlx::query(
        "SELECT request_id, min(recorded) AS recorded, (array_agg(agent))[1] AS agent, \
           array_agg(resource_type || '/' || id || '/_history/' || version_id ORDER BY resource_type, id) AS written \
         FROM audit_intent GROUP BY request_id HAVING max(recorded) < now() - make_interval(secs => $1) LIMIT 500",
    )
    .bind(ORPHANED_AFTER.as_secs_f64())
    .fetch_all(store.pool())
    .await?;
    for row in &rows {
        let request_id: uuid::Uuid = row.get("request_id");
        let written: Vec<String> = row.get("written");
        let recorded: chrono::DateTime<chrono::Utc> = row.get("recorded");
        let event = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "update"}],
            "action": "U",
            "recorded": crate::interactions::instant(&recorded),
            "outcome": "0",
            "outcomeDesc": "recovered from the write's audit intent: the server stopped before the request's audit record was complete",
            "agent": [row.get::<Value, _>("agent")],
            "source": super::source(),
            "entity": written.iter().map(|w| json!({"what": {"reference": w}})).collect::<Vec<_>>(),
        });
        trail.record_for(event, Some(request_id)).await?;
    }
    Ok(rows.len())
}
