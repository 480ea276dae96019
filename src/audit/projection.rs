//! The searchable AuditEvents: a projection of the audit chain.
//!
//! A request's audit record is its chain row (`audit_log`), committed by the group-commit
//! writer before the response. The AuditEvent resource, its history row and its search index
//! rows — what FHIR reads and searches — are written here, from the chain rows, in batches of up
//! to 1,000: per read of the API that is one small row on the request's path instead of about
//! twenty. `rest::route` calls [`project`] before any request that can read AuditEvents, so a
//! search always sees every event recorded before it; a background task keeps the lag short.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use crate::error::FhirResult;
use crate::store::Store;

/// Advisory lock of the projection (one projector at a time across instances).
const PROJECTION_LOCK: i64 = 0x6972_6f6e_7072_6f6a; // "ironproj"
/// Chain rows projected per transaction.
const BATCH: i64 = 1000;

/// Runs the background projector: after every chain append (`wake`) and every second.
pub fn spawn(store: Store, wake: Arc<tokio::sync::Notify>) {
    tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            if let Err(e) = project(&store).await {
                tracing::error!(error = %e, "projecting the audit trail failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
}

/// Projects every chain row not projected yet; returns how many. Safe to call from anywhere at
/// any time (requests that read AuditEvents call it first).
pub async fn project(store: &Store) -> FhirResult<usize> {
    let mut total = 0;
    loop {
        let mut tx = store.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PROJECTION_LOCK).execute(&mut *tx).await?;
        let rows = sqlx::query(
            "SELECT l.seq, l.recorded, l.resource_id, l.event, l.sealed, l.key_id FROM audit_log l \
             WHERE l.seq > (SELECT projected_seq FROM audit_projection) ORDER BY l.seq LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last().map(|r| r.get::<i64, _>("seq")) else {
            tx.commit().await?;
            return Ok(total);
        };
        let mut ids = Vec::with_capacity(rows.len());
        let mut recorded = Vec::with_capacity(rows.len());
        let mut contents = Vec::with_capacity(rows.len());
        let mut sealed = Vec::with_capacity(rows.len());
        let mut key_ids = Vec::with_capacity(rows.len());
        let mut complete = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.get("resource_id");
            let event: Value = r.get("event");
            let ciphertext: Option<Vec<u8>> = r.get("sealed");
            let key_id: Option<String> = r.get("key_id");
            // The index is built from the complete event (blind rows for its sealed query).
            let full = crate::crypto::open("AuditEvent", &id, 1, Some(event.clone()), ciphertext.as_deref(), key_id.as_deref())?.unwrap_or_default();
            complete.push((id.clone(), full));
            recorded.push(r.get::<chrono::DateTime<chrono::Utc>, _>("recorded"));
            contents.push(event);
            sealed.push(ciphertext);
            key_ids.push(key_id);
            ids.push(id);
        }
        let index = crate::index::rows_json(complete.iter().map(|(id, c)| ("AuditEvent", id.as_str(), c)), "");
        let types = vec!["AuditEvent"; ids.len()];
        sqlx::query(
            "WITH input AS (SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::jsonb[], $4::bytea[], $5::text[]) \
               AS t(id, recorded, content, sealed, key_id)), \
             current AS (INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, content, sealed, key_id) \
               SELECT 'AuditEvent', id, 1, recorded, false, content, sealed, key_id FROM input RETURNING 1), \
             history AS (INSERT INTO resource_history (resource_type, id, version_id, last_updated, method, deleted, content, sealed, key_id) \
               SELECT 'AuditEvent', id, 1, recorded, 'POST', false, content, sealed, key_id FROM input RETURNING 1), \
             moved AS (UPDATE audit_projection SET projected_seq = $7 RETURNING 1) \
             SELECT search_index_replace($6, $1, $8, true) FROM (SELECT (SELECT count(*) FROM current) + (SELECT count(*) FROM history) + (SELECT count(*) FROM moved)) written",
        )
        .bind(&ids)
        .bind(&recorded)
        .bind(&contents)
        .bind(&sealed)
        .bind(&key_ids)
        .bind(&types)
        .bind(last)
        .bind(&index)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total += rows.len();
    }
}

/// Whether a request may read AuditEvents (so must see every event recorded before it): its
/// path starts at AuditEvent, or its query names the type (`_type`, `_include`, `_revinclude`,
/// `_has`, chains).
pub fn reads_audit_events(path: &[&str], query: &[(String, String)]) -> bool {
    path.first() == Some(&"AuditEvent") || query.iter().any(|(k, v)| k.contains("AuditEvent") || v.contains("AuditEvent"))
}
