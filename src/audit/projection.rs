//! The searchable AuditEvents: a projection of the audit chain
//! (migrations/0012_audit_chain_first.sql).
//!
//! A request's audit record is its chain row (`audit_log`), committed by the group-commit
//! writer before the response: one small row on the request's path. The AuditEvent resource,
//! its history row and its index rows — what FHIR reads and searches — are written here, from
//! the chain rows, in batches of thousands, where each row costs a fraction of what it costs in
//! the small batches of the request path.
//!
//! Two callers:
//! - [`catch_up`], before any request that can read AuditEvents ([`reads_audit_events`]), so a
//!   read or search always sees every event recorded before it;
//! - the background projector ([`spawn`]), which keeps the backlog short without competing with
//!   requests: under a light load it projects each append within a quarter of a second; while
//!   the server is busy it lets up to 25,000 events (about five seconds of catch-up) fall
//!   behind, then projects with a pause after each batch three times as long as the batch took
//!   (at most a quarter of one core); when the load drops it catches up at full speed. README
//!   "What PHI sealing and the audit trail cost" gives the figures.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;
use tokio::sync::watch;

use crate::error::FhirResult;
use crate::index::IndexRow;
use crate::store::Store;

/// Advisory lock of the projection (one projector at a time, across instances).
const PROJECTION_LOCK: i64 = 0x6972_6f6e_7072_6f6a; // "ironproj"
/// Chain rows projected per transaction.
const BATCH: i64 = 2000;
/// The background projector pauses this many times as long as its last batch took.
const PAUSE_FACTOR: u32 = 3;
/// How long the background projector waits after finding nothing to project, or while it
/// leaves the projection behind.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Events appended per second above which the server counts as busy: then projecting competes
/// with requests for the CPU.
const BUSY_RATE: f64 = 400.0;
/// How far the projection may fall behind while the server is busy before it projects anyway:
/// about five seconds of catch-up for the next AuditEvent read (the projection runs at roughly
/// 5,000 events a second on two cores; README "What PHI sealing and the audit trail cost").
const BUSY_LAG: i64 = 25_000;

/// Runs the background projector until the chain writer stops. `head` is the chain's head as
/// this instance's writer last appended it; every change wakes the projector (at least every
/// second anyway). Under a light load each append is projected within [`IDLE_CHECK`]. While the
/// server is busy ([`BUSY_RATE`]) the projection waits until [`BUSY_LAG`] events are behind and
/// then pauses after each batch ([`PAUSE_FACTOR`]): its cost moves to when the load drops, or
/// to the next AuditEvent read, which catches up first. Once the load drops the projector
/// catches up at full speed.
pub fn spawn(store: Store, mut head: watch::Receiver<i64>) {
    tokio::spawn(async move {
        // The last sequence number known to be projected.
        let mut projected = 0i64;
        loop {
            if matches!(tokio::time::timeout(Duration::from_secs(1), head.changed()).await, Ok(Err(_))) {
                return; // The writer stopped: what is left is for the next catch-up.
            }
            let (mut seen, mut since) = (*head.borrow_and_update(), Instant::now());
            let mut wait = true;
            loop {
                if wait {
                    tokio::time::sleep(IDLE_CHECK).await;
                }
                if head.has_changed().is_err() {
                    return;
                }
                let now = *head.borrow_and_update();
                let busy = (now - seen) as f64 >= BUSY_RATE * since.elapsed().as_secs_f64();
                (seen, since) = (now, Instant::now());
                if busy && seen - projected < BUSY_LAG {
                    wait = true;
                    continue;
                }
                match project_batch(&store).await {
                    Ok(None) => {
                        projected = projected.max(seen);
                        break;
                    }
                    Ok(Some((_, last))) => {
                        projected = last;
                        if busy {
                            tokio::time::sleep(since.elapsed() * PAUSE_FACTOR).await;
                        }
                        wait = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "projecting the audit trail failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    });
}

/// Projects every chain row not projected yet; returns how many.
pub async fn catch_up(store: &Store) -> FhirResult<usize> {
    let mut total = 0;
    loop {
        match project_batch(store).await? {
            None => return Ok(total),
            Some((n, _)) => total += n,
        }
    }
}

/// Projects the next batch of chain rows (at most [`BATCH`]) in one transaction under the
/// projection lock; returns how many and the last one's sequence number, or `None` when
/// nothing was behind.
async fn project_batch(store: &Store) -> FhirResult<Option<(usize, i64)>> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PROJECTION_LOCK).execute(&mut *tx).await?;
    let rows = sqlx::query(
        "SELECT l.seq, l.recorded, l.resource_id, l.event_text, l.sealed, l.key_id FROM audit_log l \
         WHERE l.seq > (SELECT projected_seq FROM audit_projection) ORDER BY l.seq LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = rows.last().map(|r| r.get::<i64, _>("seq")) else {
        tx.commit().await?;
        return Ok(None);
    };
    let n = rows.len();
    let (mut ids, mut recorded, mut events, mut sealed, mut key_ids) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut index = IndexArrays::default();
    let active_key = crate::crypto::keyring()?.active_key_id();
    for row in rows {
        let id: String = row.get("resource_id");
        let text: Option<String> = row.get("event_text");
        // Rows without text were written with their resources (before migration 0012); the
        // projection mark starts after them.
        let Some(text) = text else { continue };
        let ciphertext: Option<Vec<u8>> = row.get("sealed");
        let key_id: Option<String> = row.get("key_id");
        let stripped: Value = serde_json::from_str(&text).map_err(|e| crate::error::FhirError::Internal(format!("audit chain row {id}: {e}")))?;
        // The index is built from the complete event (blind rows for its sealed elements).
        let complete = crate::crypto::open("AuditEvent", &id, 1, Some(stripped), ciphertext.as_deref(), key_id.as_deref())?.unwrap_or_default();
        for index_row in crate::index::index_rows("AuditEvent", &complete, "") {
            index.add(&id, index_row);
        }
        // A chain row sealed under a key that was rotated away since: the resource gets its
        // elements under the active key (key rotation may have passed the resources already).
        let (ciphertext, key_id) = match (ciphertext, key_id) {
            (Some(ct), Some(key)) if key != active_key => {
                let (ct, key) = crate::crypto::reseal("AuditEvent", &id, 1, &ct, &key)?;
                (Some(ct), Some(key))
            }
            other => other,
        };
        ids.push(id);
        recorded.push(row.get::<chrono::DateTime<chrono::Utc>, _>("recorded"));
        events.push(text);
        sealed.push(ciphertext);
        key_ids.push(key_id);
    }
    sqlx::query("SELECT audit_project($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
        .bind(last)
        .bind(&ids)
        .bind(&recorded)
        .bind(&events)
        .bind(&sealed)
        .bind(&key_ids)
        .bind(&index.ref_ids)
        .bind(&index.ref_params)
        .bind(&index.ref_targets)
        .bind(&index.date_ids)
        .bind(&index.date_params)
        .bind(&index.date_lows)
        .bind(&index.date_highs)
        .bind(Value::Array(index.other))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some((n, last)))
}

/// Whether a request may read AuditEvents (and so must see every event recorded before it):
/// its path names the type (`AuditEvent…`, `Patient/x/AuditEvent`, `Patient/x/*`), or its query
/// does (`_type`, `_include`, `_revinclude`, `_has`, chains, `$export`'s `_type`).
pub fn reads_audit_events(path: &[&str], query: &[(String, String)]) -> bool {
    path.iter().any(|s| *s == "AuditEvent" || *s == "*") || query.iter().any(|(k, v)| k.contains("AuditEvent") || v.contains("AuditEvent"))
}

/// [`reads_audit_events`] for a Bundle entry's `request.url` (relative or absolute, with its
/// query).
pub fn url_reads_audit_events(url: &str) -> bool {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let segments: Vec<&str> = path.split('/').collect();
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    reads_audit_events(&segments, &pairs)
}

/// A batch's index rows in the shape audit_project inserts them: references and dates (what
/// AuditEvent's indexed parameters produce) as columns, rows of other kinds (custom
/// SearchParameters) as search_index_replace's JSON.
#[derive(Default)]
struct IndexArrays {
    ref_ids: Vec<String>,
    ref_params: Vec<String>,
    ref_targets: Vec<String>,
    date_ids: Vec<String>,
    date_params: Vec<String>,
    date_lows: Vec<String>,
    date_highs: Vec<String>,
    other: Vec<Value>,
}

impl IndexArrays {
    fn add(&mut self, id: &str, row: IndexRow) {
        match row {
            IndexRow::Reference { param, target } => {
                self.ref_ids.push(id.to_owned());
                self.ref_params.push(param);
                self.ref_targets.push(target);
            }
            IndexRow::Date { param, low, high } => {
                self.date_ids.push(id.to_owned());
                self.date_params.push(param);
                self.date_lows.push(low);
                self.date_highs.push(high);
            }
            other => self.other.push(other.to_json("AuditEvent", id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::url_reads_audit_events;

    #[test]
    fn bundle_entry_urls_that_read_audit_events() {
        assert!(url_reads_audit_events("AuditEvent?entity=Patient/1"));
        assert!(url_reads_audit_events("AuditEvent/01a2"));
        assert!(url_reads_audit_events("https://example.org/fhir/AuditEvent"));
        assert!(url_reads_audit_events("Patient/1/*"));
        assert!(url_reads_audit_events("Patient?_revinclude=AuditEvent%3Apatient"));
        assert!(url_reads_audit_events("Patient?_has:AuditEvent:patient:outcome=4"));
        assert!(!url_reads_audit_events("Patient/1"));
        assert!(!url_reads_audit_events("Observation?subject=Patient/1&_count=5"));
    }
}
