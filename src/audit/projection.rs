//! The searchable AuditEvents: a projection of the audit chain
//! (`audit_project` in migrations/functions/audit.sql).
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

/// What projecting some chain rows came to.
enum Projected {
    /// How many and the last one's sequence number, or `None` when nothing was behind.
    Done(Option<(usize, i64)>),
    /// A row's content could not be stored (the database refused it as data, or its text is
    /// not JSON): nothing was written; the reason, for the log.
    Unstorable(String),
}

/// Projects the next batch of chain rows (at most [`BATCH`]) in one transaction under the
/// projection lock; returns how many and the last one's sequence number, or `None` when
/// nothing was behind.
///
/// No event can stop the projection (issue 21: once, one event that PostgreSQL refused made
/// every later AuditEvent read answer 500): when a batch cannot be stored, the next event is
/// projected alone, then alone without its search index rows, and an event that cannot be
/// stored even so is passed over with an error in the log. It stays in the hash chain, which
/// `ironfhir audit verify` checks, and the events behind it are projected.
async fn project_batch(store: &Store) -> FhirResult<Option<(usize, i64)>> {
    let why = match project_rows(store, BATCH, true).await? {
        Projected::Done(done) => return Ok(done),
        Projected::Unstorable(why) => why,
    };
    tracing::warn!(reason = %why, "a batch of audit events could not be projected; projecting them one at a time");
    if let Projected::Done(done) = project_rows(store, 1, true).await? {
        return Ok(done);
    }
    match project_rows(store, 1, false).await? {
        Projected::Done(done) => {
            tracing::warn!(seq = ?done.map(|(_, seq)| seq), "an audit event was projected without its search index rows");
            Ok(done)
        }
        Projected::Unstorable(why) => pass_over_next(store, &why).await,
    }
}

/// Moves the projection past the next chain row, which cannot be stored as a resource.
async fn pass_over_next(store: &Store, why: &str) -> FhirResult<Option<(usize, i64)>> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PROJECTION_LOCK).execute(&mut *tx).await?;
    let next: Option<i64> = sqlx::query_scalar(
        "UPDATE audit_projection SET projected_seq = s.seq
           FROM (SELECT min(seq) AS seq FROM audit_log WHERE seq > (SELECT projected_seq FROM audit_projection)) s
          WHERE s.seq IS NOT NULL RETURNING s.seq",
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Some(seq) = next {
        tracing::error!(seq, reason = %why, "an audit event cannot be stored as a resource; it stays in the hash chain and the projection goes on after it");
    }
    Ok(next.map(|seq| (1, seq)))
}

/// Whether the database refused a statement because of the data it was given (SQLSTATE
/// classes 22 data exception, 23 integrity, 54 program limit such as an index entry's size),
/// not because it was unavailable.
fn refused_as_data(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|code| ["22", "23", "54"].iter().any(|class| code.starts_with(class)))
}

/// Projects up to `limit` chain rows in one transaction under the projection lock, with their
/// search index rows when `with_index`.
async fn project_rows(store: &Store, limit: i64, with_index: bool) -> FhirResult<Projected> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PROJECTION_LOCK).execute(&mut *tx).await?;
    let rows = sqlx::query(
        "SELECT l.seq, l.recorded, l.resource_id, l.event_text, l.sealed, l.key_id FROM audit_log l \
         WHERE l.seq > (SELECT projected_seq FROM audit_projection) ORDER BY l.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = rows.last().map(|r| r.get::<i64, _>("seq")) else {
        tx.commit().await?;
        return Ok(Projected::Done(None));
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
        let stripped: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Ok(Projected::Unstorable(format!("audit chain row {id} is not JSON (line {}, column {})", e.line(), e.column()))),
        };
        if with_index {
            // The index is built from the complete event (blind rows for its sealed elements).
            let complete = crate::crypto::open("AuditEvent", &id, 1, Some(stripped), ciphertext.as_deref(), key_id.as_deref())?.unwrap_or_default();
            for index_row in crate::index::index_rows("AuditEvent", &complete, "") {
                index.add(&id, index_row);
            }
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
    let stored = sqlx::query("SELECT audit_project($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
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
        .await;
    match stored {
        Ok(_) => {}
        // The SQLSTATE only: PostgreSQL's message may quote the value it refused.
        Err(e) if refused_as_data(&e) => {
            let code = e.as_database_error().and_then(|d| d.code()).unwrap_or_default();
            return Ok(Projected::Unstorable(format!("the database refused the events (SQLSTATE {code})")));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(Projected::Done(Some((n, last))))
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
